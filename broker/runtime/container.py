"""The composition root: builds the broker's adapters and use cases once, from its settings.

``build_container`` is the one place that knows which implementation stands behind each port; the API
(:mod:`broker.api.deps`), ``broker serve`` and ``broker dev`` all start from it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.aws.action_database import default_action_knowledge
from broker.aws.anchors import S3CheckpointAnchors
from broker.aws.revocation import IamRevoker
from broker.domain import blast_radius, guardrails
from broker.domain import log as issuance_log
from broker.errors import InvalidInput
from broker.identity.authenticator import Authenticator
from broker.identity.oidc import OidcVerifier, load_issuer_configs
from broker.identity.oidc.relying_party import UiOidcClient, load_ui_oidc_config
from broker.ports import (Clock, CredentialMinter, DenyPolicyStore, Notifier, NullNotifier, Store, SystemClock,
                          TemplateSource)
from broker.runtime.background import CheckpointEvery, InBackground
from broker.runtime.clock_skew import ClockSkewMonitor
from broker.runtime.metrics import BrokerMetrics, TimedMinter
from broker.runtime.oplog import OutageLog
from broker.runtime.template_loading import TemplateLoader
from broker.settings import BrokerSettings, load_target_accounts
from broker.storage.directory import DirectoryAdapter
from broker.storage.engine import Database, PostgresSessionLimits, build_engine
from broker.storage.log_aggregates import BLOCK as AGGREGATE_BLOCK
from broker.storage.report_blocks import BLOCK as REPORT_BLOCK
from broker.storage.log_aggregates import fill_log_aggregates
from broker.storage.migrations import migrate
from broker.storage.sqlite_space import SqliteSpace
from broker.storage.observed import ObservedDatabase
from broker.storage.template_files import TemplateCatalog
from broker.usecases.audit import AuditLog
from broker.usecases.checkpoints import Checkpointer
from broker.usecases.issuance import BrokerService
from broker.usecases.refusal_budget import RefusalBudget
from broker.usecases.review import ReviewDashboard
from broker.usecases.limits import RateLimitGate
from broker.usecases.revocation import RevocationService, start_up

log = logging.getLogger("broker.api")


class UiOidcSignIn:
    """The approvers' OIDC client, built on first use and then shared (one JWKS cache).

    NOTE: built lazily on purpose: a misconfigured sign-in must not stop the broker (issuance and
    key sign-in go on); the sign-in page answers 503 with the configuration's fault instead, on every
    attempt, since a failed build is not remembered.
    """

    def __init__(self, settings: BrokerSettings, *, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._built = False
        self._client: UiOidcClient | None = None

    def client(self) -> UiOidcClient | None:
        with self._lock:
            if not self._built:
                config = load_ui_oidc_config(self._settings)  # raises (503) while misconfigured
                self._client = (None if config is None
                                else UiOidcClient(config, clock=lambda: self._clock.now().timestamp()))
                self._built = True
            return self._client


@dataclass
class Container:
    """Everything one broker process is made of, built once by :func:`build_container`.

    Typed fields, no lookup by name: a route or command asks for ``container.audit``, and a missing
    service is an AttributeError at the first test, not a KeyError in production.
    """

    settings: BrokerSettings
    database: Database
    catalog: TemplateCatalog
    service: BrokerService
    authenticator: Authenticator
    signer: issuance_log.CheckpointSigner
    clock: Clock
    audit: AuditLog
    revocations: RevocationService
    checkpointer: InBackground
    # Adds up the log's closed blocks not cached yet for the reviewers' figures (``broker serve`` starts it,
    # so that a log that grew before the cache existed is cached without waiting for a block to close).
    aggregates_fill: InBackground
    metrics: BrokerMetrics
    # The approvers' OIDC sign-in: ``ui_oidc.client()`` is None when it is not configured.
    ui_oidc: UiOidcSignIn
    # The template folder's loader: SIGHUP reloads through it; the sweep writes a pending templates_loaded.
    templates: TemplateLoader
    # The reviewers' dashboard (its figures shared for a few seconds by the page and its charts).
    review: ReviewDashboard
    # Every class of 503 the API answers, in the operational log with its cause (at least once a minute).
    outages: OutageLog = field(default_factory=OutageLog)
    # This replica's clock against the database's (/readyz measures it; beyond the bound: not ready).
    clock_skew: ClockSkewMonitor | None = None


def template_checks(settings: BrokerSettings | None = None) -> tuple[list, list, Any]:
    """Guardrail checks for templates and rendered policies, and the blast-radius function.  The
    accounts configuration comes from ``settings``: a role in an account it does not name, or of
    another environment than the template's, is refused (no settings: nothing named, all refused)."""
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
    if settings.signing_kms_key_id is not None:
        if settings.signing_key_file is not None:
            raise InvalidInput("BROKER_SIGNING_KEY_FILE and BROKER_SIGNING_KMS_KEY_ID are both set: set only one "
                               "of them", code="config_invalid", field="signing_kms_key_id")
        from broker.aws.kms_signing import KmsMessageSigner  # only when the key is in KMS
        return issuance_log.CheckpointSigner(KmsMessageSigner(
            key_id=settings.signing_kms_key_id, endpoint_url=settings.aws_endpoint_url, region=settings.aws_region))
    if settings.signing_key_file is None:
        if not settings.dev_mode:
            # NOTE: an ephemeral key would make every checkpoint unverifiable after a restart, and
            # different on each replica: refuse to start instead.
            raise InvalidInput("BROKER_SIGNING_KEY_FILE (or BROKER_SIGNING_KMS_KEY_ID) must name the Ed25519 key "
                               "that signs log checkpoints",
                               code="config_invalid", field="signing_key_file")
        log.warning("BROKER_SIGNING_KEY_FILE is not set: dev mode signs checkpoints with an EPHEMERAL key")
        return issuance_log.CheckpointSigner(issuance_log.generate_signing_key())
    try:
        pem = settings.signing_key_file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"signing key {settings.signing_key_file} cannot be read", code="config_invalid") from exc
    return issuance_log.CheckpointSigner(issuance_log.load_signing_key(pem))


def wire_revocation(settings: BrokerSettings, *, database: Store, catalog: TemplateSource, clock: Clock,
                    revoker: DenyPolicyStore | None = None, refusal_budget: RefusalBudget | None = None,
                    ) -> tuple[RevocationService, list[Callable[..., None]], list[Callable[..., None]]]:
    """The revocation service, the gates on new requests, the gates on redemption.

    The lockdown gates both paths that mint (a new request, and redeeming an approved one), inside the
    unit of work that commits to minting, so no path mints while an environment is locked down.
    """
    if revoker is None:
        revoker = IamRevoker(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)
    revocations = RevocationService(database=database, catalog=catalog, revoker=revoker, clock=clock,
                                    refusal_budget=refusal_budget or RefusalBudget.disabled())
    limits = RateLimitGate.from_settings(agent_requests_per_minute=settings.agent_requests_per_minute,
                                         template_requests_per_minute=settings.template_requests_per_minute,
                                         agent_max_live_grants=settings.agent_max_live_grants,
                                         agent_max_pending_requests=settings.agent_max_pending_requests)
    return revocations, [revocations.lockdown_gate, limits], [revocations.lockdown_gate, limits.for_redemption()]


def build_container(settings: BrokerSettings, *, minter: CredentialMinter | None = None, clock: Clock | None = None,
                    notifier: Notifier | None = None, run_migrations: bool = True,
                    revoker: DenyPolicyStore | None = None) -> Container:
    # Observed: metrics and periodic checkpoints see each committed unit of work's log entries.
    database = ObservedDatabase(build_engine(settings.database_url, postgres_limits=postgres_limits(settings),
                                             sqlite_space=SqliteSpace(
                                                 wal_checkpoint_bytes=settings.sqlite_wal_checkpoint_bytes,
                                                 reserve_bytes=settings.sqlite_reserve_bytes)))
    if run_migrations:
        migrate(database.engine)
    template_check, rendered_check, blast = template_checks(settings)
    clock = clock or SystemClock()
    # Checks, signatures, then a templates_loaded entry: a folder that fails any of them does not start.
    templates = TemplateLoader(settings=settings, database=database, clock=clock, checks=template_check,
                               actions=default_action_knowledge())
    catalog = templates.start()
    if minter is None:
        from broker.aws.sts import StsMinter
        minter = StsMinter(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)
    # One budget for every use case that logs refusals (per principal, per replica: see broker.usecases.refusal_budget).
    refusal_budget = RefusalBudget(per_minute=settings.refusals_per_minute, clock=clock)
    revocations, gates, redeem_gates = wire_revocation(settings, database=database, catalog=catalog, clock=clock,
                                                       revoker=revoker, refusal_budget=refusal_budget)
    # This replica's clock against the database's: beyond the bound it issues nothing and does not sweep.
    clock_skew = ClockSkewMonitor(database=database, clock=clock, max_skew_seconds=settings.max_clock_skew_seconds)
    revocations.time_check = clock_skew.measure_and_check
    gates = [clock_skew.gate, *gates, templates.gate]   # last: a start-up's pending templates_loaded entry is written
    redeem_gates = [clock_skew.gate, *redeem_gates]
    if notifier is None and settings.webhook_url:
        from broker.runtime.webhook import WebhookNotifier  # only when a webhook is configured
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
    anchors = None
    if settings.anchor_bucket:  # every checkpoint also goes off the host (Object Lock, compliance mode)
        anchors = S3CheckpointAnchors(bucket=settings.anchor_bucket, prefix=settings.anchor_prefix,
                                      retention_days=settings.anchor_retention_days,
                                      endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)
    audit = AuditLog(database=database, signer=signer, clock=clock,
                     checkpointer=Checkpointer(database=database, signer=signer, clock=clock, anchors=anchors))
    # NOTE: the checkpoint a boundary calls for is signed on a background thread, not inside the request
    # whose entry crossed it (it would add a transaction and a signature to every Nth response).
    checkpointer = InBackground(audit.checkpoint, name="log-checkpoint")
    if settings.checkpoint_every > 0:
        database.observers.append(CheckpointEvery(checkpointer, every=settings.checkpoint_every))
    # The reviewers' cache of closed blocks: each block is added up once it closes, off the request's path
    # (a read computes a block not cached yet itself), for the dashboard and for ``broker audit report`` (which
    # reads a block not cached yet from its bodies).
    aggregates_fill = InBackground(lambda: fill_review_caches(database, audit), name="log-aggregates")
    database.observers.append(CheckpointEvery(aggregates_fill, every=math.gcd(AGGREGATE_BLOCK, REPORT_BLOCK)))
    metrics = wire_metrics(database=database, catalog=catalog, service=service)
    if audit.checkpointer is not None:
        audit.checkpointer.alarm = metrics  # a refused checkpoint is counted (an alarm)
    ui_oidc = UiOidcSignIn(settings, clock=clock)
    start_up(revocations)  # measure the clock, reconcile orphaned mint intents, prune expired revocations
    return Container(settings=settings, database=database, catalog=catalog, service=service,
                     authenticator=authenticator, signer=signer, clock=clock, audit=audit,
                     revocations=revocations, checkpointer=checkpointer, aggregates_fill=aggregates_fill,
                     metrics=metrics, ui_oidc=ui_oidc, templates=templates,
                     review=ReviewDashboard(database=database, clock=clock), clock_skew=clock_skew)


def fill_review_caches(database: Database, audit: AuditLog) -> None:
    """Fill the dashboard's cache of closed blocks, then the report's, each on its own: one failing (a body it
    cannot read, a database error) neither stops the other nor is taken for it; each failure is logged, and the
    next call (a block closing, the sweep) tries again."""
    for cache, fill in (("dashboard", lambda: fill_log_aggregates(database)), ("report", audit.fill_report_blocks)):
        try:
            fill()
        except Exception:  # noqa: BLE001 - a background fill must not stop the other; the next call retries
            log.warning("the %s's cache of closed blocks was not filled (the next sweep tries again)", cache,
                        exc_info=True)


def postgres_limits(settings: BrokerSettings) -> PostgresSessionLimits:
    return PostgresSessionLimits(lock_timeout_ms=settings.db_lock_timeout_ms,
                                 statement_timeout_ms=settings.db_statement_timeout_ms,
                                 idle_in_transaction_ms=settings.db_idle_in_transaction_timeout_ms,
                                 keepalive_seconds=settings.db_keepalive_seconds)


def wire_metrics(*, database: Database, catalog: TemplateCatalog, service: BrokerService) -> BrokerMetrics:
    """The process's metrics: fed by the log's observer, timing the minter's STS calls."""

    def known_template(name: str) -> bool:
        try:
            catalog.get(name)
        except Exception:  # noqa: BLE001 - any miss means "not a catalog name"
            return False
        return True

    metrics = BrokerMetrics(known_template=known_template)
    if isinstance(database, ObservedDatabase):
        database.observers.append(metrics.observe_entries)
    database.lock_observers.append(metrics.observe_lock_hold)
    service.minter = TimedMinter(service.minter, metrics.sts_duration)
    return metrics
