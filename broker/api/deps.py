"""The composition root: builds the adapters once, and exposes them to routes as dependencies."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from broker.storage.template_files import TemplateCatalog, load_catalog
from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.errors import BrokerError, Forbidden, InvalidInput
from broker.identity.authenticator import Authenticator
from broker.identity.oidc import OidcVerifier, load_issuer_configs
from broker.runtime.background import CheckpointEvery, InBackground
from broker.storage.observed import ObservedDatabase
from broker.ports import Clock, CredentialMinter, Notifier, NullNotifier, SystemClock
from broker.usecases.refusal_budget import RefusalBudget
from broker.usecases.issuance import BrokerService
from broker.settings import BrokerSettings
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate

log = logging.getLogger("broker.api")


class DirectoryAdapter:
    """Principal directory and API-key store for the authenticator.

    An API-key lookup reads the key *and* its principal in one unit of work; the principal is
    handed to the very next ``get_principal`` call for that id on the same thread (the
    authenticator asks for it right after), so one authentication is one database round trip.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._just_loaded = threading.local()

    # A principal read with its key is handed on only this soon after (a failed key check leaves it
    # behind: it must not answer a later, unrelated lookup on the same thread).
    HANDOFF_SECONDS = 0.5

    def get_principal(self, principal_id: str) -> Principal | None:
        loaded = getattr(self._just_loaded, "principal", None)
        self._just_loaded.principal = None
        if (loaded is not None and loaded[0] == principal_id
                and time.monotonic() - loaded[2] < self.HANDOFF_SECONDS):
            return loaded[1]
        with self._database.transaction() as repo:
            return repo.get_principal(principal_id)

    def is_disabled(self, principal_id: str) -> bool:
        with self._database.transaction() as repo:
            return repo.is_principal_disabled(principal_id)

    def find_api_key(self, key_id: str):
        self._just_loaded.principal = None
        with self._database.read() as repo:
            found = repo.find_api_key_with_principal(key_id)
        if found is None:
            return None
        record, principal = found
        self._just_loaded.principal = (record.principal_id, principal, time.monotonic())
        return record


@dataclass
class Container:
    settings: BrokerSettings
    database: Database
    catalog: TemplateCatalog
    service: BrokerService
    authenticator: Authenticator
    signer: issuance_log.CheckpointSigner
    clock: Clock
    extras: dict[str, Any] = field(default_factory=dict)


def template_checks(settings: BrokerSettings | None = None) -> tuple[list, list, Any]:
    """Guardrail checks for templates and rendered policies, and the blast-radius function.  The
    accounts configuration comes from ``settings``: a role in an account it does not name, or of
    another environment than the template's, is refused (no settings: nothing named, all refused)."""
    from broker.aws.action_database import default_action_knowledge
    from broker.domain import blast_radius, guardrails
    from broker.settings import load_target_accounts

    actions = default_action_knowledge()
    accounts = load_target_accounts(settings or BrokerSettings())
    return (
        [lambda t: guardrails.check_template(t, actions=actions, accounts=accounts)],
        [guardrails.RenderedChecks(actions, accounts=accounts)],
        lambda t, r: blast_radius.assess(t, actions=actions, rendered=r).to_dict(),
    )


def load_oidc_verifiers(path: Path | None) -> list[OidcVerifier]:
    return [OidcVerifier(config) for config in load_issuer_configs(path)]


def load_signer(settings: BrokerSettings) -> issuance_log.CheckpointSigner:
    if settings.signing_key_file is None:
        if not settings.dev_mode:
            # NOTE: an ephemeral key would make every checkpoint unverifiable after a restart, and
            # different on each replica: refuse to start instead.
            raise InvalidInput("BROKER_SIGNING_KEY_FILE must name the Ed25519 key that signs log checkpoints",
                               code="config_invalid", field="signing_key_file")
        log.warning("BROKER_SIGNING_KEY_FILE is not set: dev mode signs checkpoints with an EPHEMERAL key")
        return issuance_log.CheckpointSigner(issuance_log.generate_signing_key())
    try:
        pem = settings.signing_key_file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"signing key {settings.signing_key_file} cannot be read", code="config_invalid") from exc
    return issuance_log.CheckpointSigner(issuance_log.load_signing_key(pem))


def build_container(settings: BrokerSettings, *, minter: CredentialMinter | None = None, clock: Clock | None = None,
                    notifier: Notifier | None = None, run_migrations: bool = True, revoker=None) -> Container:
    # Observed: metrics and periodic checkpoints see each committed unit of work's log entries.
    database = ObservedDatabase(build_engine(settings.database_url))
    if run_migrations:
        migrate(database.engine)
    template_check, rendered_check, blast = template_checks(settings)
    catalog = load_catalog(Path(settings.scopes_dir), checks=template_check)
    clock = clock or SystemClock()
    if minter is None:
        from broker.aws.sts import StsMinter
        minter = StsMinter(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)
    from broker.usecases.revocation import start_up, wire_revocation
    # One budget for every use case that logs refusals (per principal, per replica: see broker.usecases.refusal_budget).
    refusal_budget = RefusalBudget(per_minute=settings.refusals_per_minute, clock=clock)
    revocations, gates, redeem_gates = wire_revocation(settings, database=database, catalog=catalog, clock=clock,
                                                       revoker=revoker, refusal_budget=refusal_budget)
    if notifier is None and settings.webhook_url:
        from broker.runtime.webhook import WebhookNotifier
        notifier = WebhookNotifier(settings.webhook_url)
    service = BrokerService(catalog=catalog, database=database, minter=minter, clock=clock,
                            rendered_checks=rendered_check, notifier=notifier or NullNotifier(),
                            public_url=settings.public_url.rstrip("/"), blast_radius=blast, gates=gates,
                            redeem_gates=redeem_gates, release_gates=[revocations.check_lockdown],
                            refusal_budget=refusal_budget)
    directory = DirectoryAdapter(database)
    authenticator = Authenticator(api_keys=directory, principals=directory,
                                  oidc_verifiers=load_oidc_verifiers(settings.oidc_issuers_file), now=clock.now)
    signer = load_signer(settings)
    from broker.usecases.audit import AuditLog

    audit = AuditLog(database=database, signer=signer, clock=clock)
    # NOTE: the checkpoint a boundary calls for is signed on a background thread, not inside the request
    # whose entry crossed it (it would add a transaction and a signature to every Nth response).
    checkpointer = InBackground(audit.checkpoint, name="log-checkpoint")
    if settings.checkpoint_every > 0:
        database.observers.append(CheckpointEvery(checkpointer, every=settings.checkpoint_every))
    start_up(revocations)  # reconcile orphaned mint intents, prune expired revocations
    return Container(settings=settings, database=database, catalog=catalog, service=service,
                     authenticator=authenticator, signer=signer, clock=clock,
                     extras={"audit": audit, "revocations": revocations, "checkpointer": checkpointer})


async def get_container(request: Request) -> Container:
    return request.app.state.container


ContainerDep = Annotated[Container, Depends(get_container)]


def current_principal(request: Request, container: ContainerDep) -> Principal:
    principal = container.authenticator.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(principal: Principal, *roles: Role) -> None:
    if not any(principal.has_role(role) for role in roles) and not principal.has_role(Role.ADMIN):
        raise Forbidden(f"this needs the {' or '.join(r.value for r in roles)} role", code="role_required")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


__all__ = ["BrokerError", "Container", "ContainerDep", "CurrentPrincipal", "build_container", "client_ip",
           "require_role"]
