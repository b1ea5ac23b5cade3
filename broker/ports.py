"""What the use cases need from outside, as Protocols.  Adapters implement them.

The store (:class:`Store`, :class:`UnitOfWork`) is ``broker.storage``'s ``Database`` and ``Repository``;
STS and IAM are ``broker.aws``'s; the use cases see only these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from broker.domain import log as issuance_log
from broker.domain.principals import Principal
from broker.domain.rendering import RenderedPolicy
from broker.domain.records import ApiKey, Approval, CredentialRequest, Grant, MintIntent, PrincipalEntry
from broker.domain.templates import ScopeTemplate
from broker.domain.times import Bucketing, as_utc


@dataclass(frozen=True)
class MintOrder:
    """Every AssumeRole field, decided by the broker."""

    role_arn: str
    session_name: str
    policy_json: str
    duration_seconds: int
    source_identity: str
    tags: Sequence[dict[str, str]]
    # Transitive keys are not set: tags must not survive role chaining out of the broker's control.
    transitive_tag_keys: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class MintedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    assumed_role_arn: str
    assumed_role_id: str


class CredentialMinter(Protocol):
    def mint(self, order: MintOrder) -> MintedCredentials: ...


class SessionRevoker(Protocol):
    """Makes AWS refuse sessions: a broker-managed inline deny policy on the target role."""

    def write_deny_policy(self, *, role_arn: str, policy_json: str | None) -> None: ...


class DenyPolicyStore(SessionRevoker, Protocol):
    """The revoker, plus how much room IAM leaves on the role for our policy."""

    def deny_policy_room(self, *, role_arn: str) -> int: ...


class TemplateSource(Protocol):
    def get(self, name: str) -> ScopeTemplate: ...

    def all(self) -> list[ScopeTemplate]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class Notifier(Protocol):
    """Tells humans a request needs them.  Must never raise: failures are the notifier's to log."""

    def notify(self, *, event: str, request: dict[str, Any]) -> None: ...


class NullNotifier:
    def notify(self, *, event: str, request: dict[str, Any]) -> None:
        return None


# ----------------------------------------------------------------------------- API keys and principals
@dataclass(frozen=True)
class ApiKeyRecord:
    """What the broker stores about an API key: never the key itself."""

    key_id: str
    token_hash: str
    principal_id: str
    revoked: bool = False
    # None: the key never expires.
    expires_at: datetime | None = None
    # The key's principal exists but an admin disabled it.
    principal_disabled: bool = False

    def expired(self, now: datetime) -> bool:
        if self.expires_at is None:
            return False
        return as_utc(self.expires_at) <= now


class ApiKeyStore(Protocol):
    def find_api_key(self, key_id: str) -> ApiKeyRecord | None: ...


class PrincipalDirectory(Protocol):
    def get_principal(self, principal_id: str) -> Principal | None: ...

    def is_disabled(self, principal_id: str) -> bool:
        """True if the directory holds this id but an admin disabled it (``get_principal`` says None)."""
        ...


# ----------------------------------------------------------------------------- the store
class LogFigureQueries(Protocol):
    """The reviewers' dashboard's aggregates over the log and the grants (each one query of the store)."""

    def counts_over_time(self, *, types: Sequence[str], since: datetime, until: datetime,
                         bucketing: Bucketing) -> list[tuple[str, str, int]]: ...
    def counts_by_type(self, *, types: Sequence[str], since: datetime, until: datetime) -> dict[str, int]: ...
    def refusal_figures(self, *, refusal_types: Sequence[str], carrying_types: Sequence[str], since: datetime,
                        until: datetime, bucketing: Bucketing) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
        """The entries of ``refusal_types`` by reason code, and the suppressed refusals that entries of
        ``carrying_types`` carry (broker.domain.refusal_counts) as (bucket, reason code, refusals)."""
        ...
    def time_to_approve(self, *, since: datetime, until: datetime) -> tuple[dict[str, int], float | None]: ...
    def live_grants(self, *, now: datetime) -> list[tuple[str, str, str, int]]: ...
    def risky_grants(self, *, since: datetime, until: datetime,
                     limit: int = 50) -> tuple[int, list[dict[str, Any]]]: ...
    def newest(self, *, types: Sequence[str], since: datetime, until: datetime,
               limit: int = 20) -> list[dict[str, Any]]: ...


class UnitOfWork(Protocol):
    """The queries of one unit of work.  It never commits: the :class:`Store` does, when the block ends.

    Lock order: a unit of work that appends to the log and also locks rows it did not create takes the log
    head's lock first (:meth:`lock_log_head`); the methods that lock an existing row take it themselves.

    Reads hand back records (``broker.domain.records``), decoded and frozen: nothing a use case holds is
    tracked.  A use case changes one with :func:`dataclasses.replace` and writes it explicitly
    (``transition_request``, ``record_issued``, ``save_grant``, ``save_api_key``, ...).
    """

    def flush(self) -> None: ...

    # principals and API keys
    def get_principal(self, principal_id: str) -> Principal | None: ...
    def upsert_principal(self, *, principal_id: str, roles: Sequence[str], groups: Sequence[str] = (),
                         acts_for: str | None = None, now: datetime,
                         attributes: Mapping[str, str] | None = None) -> None: ...
    def get_principal_entry(self, principal_id: str) -> PrincipalEntry | None: ...
    def set_principal_disabled(self, principal_id: str, disabled: bool) -> bool: ...
    def add_api_key(self, *, key_id: str, token_hash: str, principal_id: str, now: datetime,
                    expires_at: datetime | None = None) -> None: ...
    def get_api_key(self, key_id: str) -> ApiKey | None: ...
    def list_api_keys(self, *, principal_id: str | None = None) -> list[ApiKey]: ...
    def save_api_key(self, key: ApiKey) -> None:
        """Write a changed key (revoked, expiry moved) over the stored one."""
        ...

    # requests and approvals
    def add_request(self, row: CredentialRequest) -> None: ...
    def get_request(self, request_id: str, *, for_update: bool = False) -> CredentialRequest | None: ...
    def transition_request(self, request_id: str, *, from_statuses: Sequence[str], to_status: str,
                           **values: Any) -> bool: ...
    def list_requests(self, *, statuses: Sequence[str] | None = None, requester: str | None = None,
                      acts_for: str | None = None, limit: int = 100, offset: int = 0) -> list[CredentialRequest]: ...
    def count_requests_by_requester(self, *, statuses: Sequence[str]) -> dict[str, int]: ...
    def stale_requests(self, *, now: datetime) -> list[CredentialRequest]: ...
    def add_approval(self, row: Approval) -> None: ...
    def approvals_for(self, request_id: str) -> list[Approval]: ...
    def has_decided(self, request_id: str, approver: str) -> bool: ...

    # mint intents and grants
    def add_request_and_intent(self, row: CredentialRequest, intent: MintIntent, *,
                               entry: Mapping[str, Any] | None = None) -> dict[str, Any] | None: ...
    def record_issued(self, request_id: str, *, from_statuses: Sequence[str], to_status: str, grant: Grant,
                      now: datetime, entry: Mapping[str, Any] | None = None) -> bool: ...
    def add_intent(self, row: MintIntent) -> None: ...
    def resolve_intent(self, grant_id: str) -> None: ...
    def unresolved_intents(self) -> list[MintIntent]: ...
    def save_grant(self, grant: Grant) -> None:
        """Write a changed grant (revoked) over the stored one."""
        ...
    def get_grant(self, grant_id: str) -> Grant | None: ...
    def grant_for_request(self, request_id: str) -> Grant | None: ...
    def find_grants(self, *, access_key_id: str | None = None, source_identity: str | None = None,
                    agent: str | None = None, template: str | None = None, role_arn: str | None = None,
                    live_at: datetime | None = None, revoked: bool | None = None) -> list[Grant]: ...

    # settings (lockdowns, revocation entries)
    def get_setting(self, key: str) -> str | None: ...
    def get_settings(self, keys: Sequence[str], *, lock_log: bool = False) -> dict[str, str]: ...
    def set_setting(self, key: str, value: str | None, *, now: datetime) -> None: ...

    # limits
    def issuance_counts(self, *, agent: str, template: str, since: datetime, now: datetime) -> dict[str, int]: ...
    def nth_newest_request_since(self, *, nth: int, since: datetime, requester: str | None = None,
                                 template: str | None = None) -> datetime | None: ...
    def earliest_live_grant_expiry(self, *, agent: str, now: datetime) -> datetime | None: ...
    def earliest_pending_expiry(self, *, requester: str, now: datetime) -> datetime | None: ...

    # the issuance log
    def lock_log_head(self) -> tuple[int, str]: ...
    def append_event(self, body: Mapping[str, Any]) -> dict[str, Any]: ...
    def query_events(self, *, filters: Mapping[str, Any], after_seq: int = 0, limit: int = 100,
                     since: datetime | None = None, until: datetime | None = None,
                     up_to: int | None = None) -> list[dict[str, Any]]: ...
    def first_seq_since(self, since: datetime) -> int | None: ...
    # the report's cache of closed blocks (broker.storage.report_blocks), of the tally rules version ``rules``: which
    # seqs a report from ``since`` reads from the bodies, and the cached figures (JSON text) of the blocks wholly in
    # its window, in seq order
    def report_segments(self, since: datetime, *, rules: int) -> list[tuple[int, int | None, str | None]]: ...
    def missing_report_blocks(self, *, rules: int) -> list[int]: ...
    def report_block_entries(self, block: int) -> tuple[list[dict[str, Any]] | None, str | None, str | None]: ...
    def pending_request_ids(self, request_ids: Sequence[str], *, through_block: int) -> set[str] | None: ...
    def report_counts(self, blocks: Sequence[int], *, rules: int) -> list[tuple[str, str, str, str, int]]: ...
    def save_report_block(self, block: int, *, rules: int, min_time: str | None, max_time: str | None,
                          figures: str | None, counts: Sequence[tuple[str, str, str, str, int]]) -> bool: ...
    def latest_event(self, event_type: str) -> dict[str, Any] | None: ...
    def add_checkpoint(self, checkpoint: issuance_log.Checkpoint) -> None: ...
    def latest_checkpoint(self) -> issuance_log.Checkpoint | None: ...
    def checkpoints(self, *, from_seq: int = 0) -> list[issuance_log.Checkpoint]: ...
    def checkpoint_page(self, *, from_seq: int, up_to_seq: int, after_position: int,
                        limit: int) -> list[tuple[int, issuance_log.Checkpoint]]: ...
    def stored_entry_lines(self, *, from_seq: int) -> list[bytes]: ...
    def log_figures(self, *, live: bool = False) -> LogFigureQueries: ...


class Store(Protocol):
    """Units of work on the broker's database."""

    def transaction(self) -> AbstractContextManager[UnitOfWork]:
        """Everything done through the unit of work commits together when the block ends, or not at all."""
        ...

    def read(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work that only reads (writing in it is a bug: nothing would be rolled back)."""
        ...

    def exclusive(self, names: Iterable[str]) -> AbstractContextManager[None]:
        """One lock per name for the block, across replicas; no unit of work (for calls outside the database)."""
        ...


# A check of a rendered policy: returns findings; any with `.blocking` refuses the request.
RenderedCheck = Callable[[ScopeTemplate, RenderedPolicy], Sequence[object]]
# Extra gate run inside unit of work A (rate limits, lockdown): raises a BrokerError to refuse.  A gate that
# reads takes the log's lock before it reads (``lock_log_head``, ``get_settings(lock_log=True)``).
IssuanceGate = Callable[[UnitOfWork, Principal, ScopeTemplate, datetime], None]
# Check run inside unit of work B, after STS minted and before the credentials are released (the
# lockdown): given the environment, raises a BrokerError to withhold them.  It reads under the log's lock.
ReleaseGate = Callable[[UnitOfWork, str], None]
