"""Loading the template catalog at start-up and on ``SIGHUP``: checks, signatures, the log entry, the swap.

A load reads the whole folder, runs the guardrails, and (when template owners are configured) checks
that every production template, and every template whose risk classes need co-signing, carries valid
signatures from enough distinct owners.  Then it appends a ``templates_loaded`` entry, and only then does
a reload swap the new catalog in (one assignment).  Anything that fails leaves the running catalog as it
was, and says why in the operational log (logger ``broker.templates``).

Compatibility: with no owners file (``BROKER_TEMPLATE_OWNERS_FILE`` unset) signatures are not required,
so deployments from before signed templates keep loading, and ``broker dev`` works as it did; ``broker
serve`` then logs a WARNING at every load naming the production templates that loaded unsigned.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from broker.domain.actions import ActionKnowledge, Risk
from broker.domain.risk import BY_RISK
from broker.domain.template_diff import risk_classes
from broker.domain.template_signatures import DEFAULT_REQUIRED_SIGNATURES, SigningRule, owners_from_config
from broker.domain.templates import Environment, ScopeTemplate
from broker.domain.documents import DuplicateKey, load_reviewed
from broker.errors import BrokerError, InvalidInput, Unavailable
from broker.settings import BrokerSettings
from broker.storage.template_files import TemplateCatalog, load_catalog
from broker.usecases.template_loads import LoadedVersion, append_templates_loaded, record_templates_loaded

log = logging.getLogger("broker.templates")
BY_RISK_VALUES = frozenset(r.value for r in BY_RISK)


def signing_rule(path: Path | None, required_setting: int | None = None) -> SigningRule:
    """The owners file (YAML or JSON), or no owners at all when it is unset."""
    if path is None:
        if required_setting is not None:
            raise InvalidInput("BROKER_TEMPLATE_SIGNATURES_REQUIRED is set but BROKER_TEMPLATE_OWNERS_FILE is not: "
                               "name the owners whose signatures count", code="config_invalid",
                               field="template_owners_file")
        return SigningRule()
    try:
        text = path.read_text(encoding="utf-8")
        data = load_reviewed(text, json_format=path.suffix == ".json")  # an owner written twice is refused
    except DuplicateKey as exc:
        raise InvalidInput(f"template owners file {path}: {exc.problem}", code="config_invalid",
                           field="template_owners_file") from exc
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(f"template owners file {path} cannot be read", code="config_invalid",
                           field="template_owners_file") from exc

    def read_key_file(name: str) -> bytes:
        key_path = Path(name) if Path(name).is_absolute() else path.parent / name
        try:
            return key_path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"template owner key file {key_path} cannot be read", code="config_invalid",
                               field="template_owners_file") from exc

    owners, required = owners_from_config(data, read_key_file=read_key_file)
    required = required_setting or required or DEFAULT_REQUIRED_SIGNATURES
    return SigningRule(owners=owners, required=required)


def risk_needs_cosigning(actions: ActionKnowledge) -> Callable[[ScopeTemplate], bool]:
    """A template granting any action of a risk class (every class of the taxonomy needs at least one
    co-signer: :data:`broker.domain.risk.TAXONOMY`) needs owners' signatures like a production one."""
    def risky(template: ScopeTemplate) -> bool:
        return any(BY_RISK[Risk(c)].approvals >= 1 if c in BY_RISK_VALUES else True
                   for c in risk_classes(template, actions))
    return risky


class TemplateLoader:
    """Builds the catalog once, and rebuilds it on demand (``SIGHUP``), atomically."""

    def __init__(self, *, settings: BrokerSettings, database, clock, checks: Sequence,
                 actions: ActionKnowledge) -> None:
        self.settings = settings
        self.database = database
        self.clock = clock
        self.checks = list(checks)
        self.signing = signing_rule(settings.template_owners_file, settings.template_signatures_required)
        self.risky = risk_needs_cosigning(actions)
        self.catalog: TemplateCatalog | None = None
        self._pending: dict | None = None
        self._lock = threading.Lock()

    def _load(self) -> TemplateCatalog:
        return load_catalog(Path(self.settings.scopes_dir), checks=self.checks, signing=self.signing,
                            risky=self.risky)

    def _load_facts(self, catalog: TemplateCatalog, reason: str) -> dict:
        loaded = [LoadedVersion(name=i.template.name, digest=i.template.version_digest, source=i.source,
                                signed_by=i.signed_by) for i in catalog.loaded()]
        return {"reason": reason, "loaded": loaded, "enforced": self.signing.enforced,
                "required": self.signing.required}

    def _record(self, catalog: TemplateCatalog, reason: str) -> None:
        record_templates_loaded(self.database, now=self.clock.now(), **self._load_facts(catalog, reason))
        self._warn_unsigned(catalog)

    def write_pending(self) -> None:
        """Write the start-up entry that could not be written then (the periodic sweep, a reload)."""
        pending = self._pending
        if pending is not None:
            record_templates_loaded(self.database, now=self.clock.now(), **pending)
            self._pending = None

    def gate(self, repo, _principal, _template, _now) -> None:
        """An issuance gate: no request is written before the start-up's templates_loaded entry.

        NOTE: appended in the request's own unit of work; ``load_id`` makes a second append of the same load a
        no-op, and a unit of work that rolls back leaves it pending for the next one."""
        pending = self._pending
        if pending is not None:
            append_templates_loaded(repo, now=self.clock.now(), **pending)

    def _warn_unsigned(self, catalog: TemplateCatalog) -> None:
        if self.signing.enforced:
            return
        unsigned = [t.name for t in catalog.all() if t.environment is Environment.PRODUCTION or self.risky(t)]
        if unsigned:
            log.warning("NO TEMPLATE OWNERS CONFIGURED (BROKER_TEMPLATE_OWNERS_FILE): %d production or risky "
                        "template(s) loaded WITHOUT signatures: %s", len(unsigned), ", ".join(unsigned))

    def start(self) -> TemplateCatalog:
        """Start-up: a folder that fails any check, or a log entry that cannot be written, stops start-up."""
        catalog = self._load()
        try:
            self._record(catalog, "start-up")
        except Unavailable as exc:
            # NOTE: like every other start-up step, a database that is down does not stop the process (readiness
            # reports it, requests are refused); the entry is written before the first request is.
            log.error("the templates_loaded entry could not be written at start-up (%s); it is written before "
                      "the first request", exc.code)
            self._pending = self._load_facts(catalog, "start-up") | {"load_id": str(uuid.uuid4())}
            self._warn_unsigned(catalog)
        self.catalog = catalog
        log.info("loaded %d template(s) from %s", len(catalog), self.settings.scopes_dir)
        if self.signing.enforced:
            log.info("template signatures enforced: %d of %d template owners (%s) sign every production or risky "
                     "template", self.signing.required, len(self.signing.owners),
                     ", ".join(o.name for o in self.signing.owners))
        return catalog

    def reload(self) -> bool:
        """Load the folder again; swap it in only if every check passed and the entry is written."""
        with self._lock:
            if self.catalog is None:
                raise RuntimeError("reload before start")
            try:
                self.write_pending()
                fresh = self._load()
                self._record(fresh, "reload")
            except BrokerError as exc:
                log.error("template reload refused, the running catalog is unchanged: [%s] %s", exc.code,
                          exc.diagnostics())
                return False
            self.catalog.replace_with(fresh)
            log.info("reloaded %d template(s) from %s", len(fresh), self.settings.scopes_dir)
            return True
