"""Repository: every query the use cases need.  It never commits (the unit of work does).

Requests, approvals, mint intents, grants, principals and API keys go in and come out as
``broker.domain.records`` (``broker.storage.records`` maps rows to records and back, JSON
included), with SQLAlchemy Core on the unit of work's connection: no ORM identity map or dirty
tracking holds them, and a changed record is written only when a use case writes it.  (The
settings, the log head's reads and the dashboard's queries still use an ORM session, made on
first use.)

Lock order: a unit of work that appends to the log and also locks rows it did not create takes the
log head's lock first (see :meth:`Repository.lock_log_head`).  The methods that lock an existing row
(``get_request(for_update=True)``, ``transition_request``, ``record_issued``, ``resolve_intent``) take
it themselves, so on PostgreSQL no two units of work can wait on each other in a cycle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import Table, bindparam, exists, func, insert, literal_column, text, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoResultFound
from sqlmodel import Session, col, select

from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.domain.records import ApiKey, Approval, CredentialRequest, Grant, MintIntent, PrincipalEntry
from broker.domain.times import parse_time
from broker.errors import StorageUnavailable
from broker.ports import ApiKeyRecord
from broker.storage.body_fields import body_field
from broker.storage import log_aggregates, report_blocks
from broker.storage.log_aggregates import CachedLogFigures, Run, window_runs
from broker.storage.log_figures import LogFigures, risk_condition
from broker.storage.models import (ApiKeyRow, ApprovalRow, CheckpointRow, EventRow, GrantRow, LogHeadRow,
                                   MintIntentRow, PrincipalRow, RequestRow, SettingRow)
from broker.storage.report_blocks import Segment
from broker.storage.records import (api_key_record, approval_record, encode_attributes, encode_names, grant_record,
                                    intent_record, plain_values, principal_entry, request_record, request_values)


_PRINCIPALS: Table = PrincipalRow.__table__  # type: ignore[attr-defined]
_API_KEYS: Table = ApiKeyRow.__table__  # type: ignore[attr-defined]
_REQUESTS: Table = RequestRow.__table__  # type: ignore[attr-defined]
_GRANTS: Table = GrantRow.__table__  # type: ignore[attr-defined]
_INTENTS: Table = MintIntentRow.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
_LOG_HEAD: Table = LogHeadRow.__table__  # type: ignore[attr-defined]
_SETTINGS: Table = SettingRow.__table__  # type: ignore[attr-defined]
_CHECKPOINTS: Table = CheckpointRow.__table__  # type: ignore[attr-defined]
_APPROVALS: Table = ApprovalRow.__table__  # type: ignore[attr-defined]
# Reviewer query filters -> the entry field each matches (in the hashed body; each in body_fields.BODY_FIELDS).
EVENT_FILTER_FIELDS = {"agent": "actor", "human": "acts_for", "template": "template", "type": "type",
                       "request_id": "request_id", "access_key_id": "access_key_id", "actor": "actor",
                       "grant_id": "grant_id"}


def _field_filtered(filters: Mapping[str, Any]) -> bool:
    """Whether a filter on a body field (with its own (field, seq) index, which then leads) is set; ``risk`` is
    not one."""
    return any(value is not None and name != "risk" for name, value in filters.items())


# Built once: SQLAlchemy caches their compiled form by identity.
_KEY_WITH_PRINCIPAL = (
    core_select(_API_KEYS.c.key_id, _API_KEYS.c.token_hash, _API_KEYS.c.principal_id, _API_KEYS.c.revoked,
                _API_KEYS.c.expires_at, _PRINCIPALS.c.roles, _PRINCIPALS.c.groups, _PRINCIPALS.c.acts_for, _PRINCIPALS.c.disabled,
                _PRINCIPALS.c.attributes)
    .select_from(_API_KEYS.outerjoin(_PRINCIPALS, _PRINCIPALS.c.id == _API_KEYS.c.principal_id))
    .where(_API_KEYS.c.key_id == bindparam("key_id"))
)
# The SET clause comes from the execute() parameters' keys (compiled once per set of keys).
_TRANSITION = update(_REQUESTS).where(_REQUESTS.c.id == bindparam("match_id"),
                                      _REQUESTS.c.status.in_(bindparam("match_statuses", expanding=True)))
_RESOLVE_INTENT = update(_INTENTS).where(_INTENTS.c.grant_id == bindparam("match_grant_id")).values(resolved=True)
_SETTINGS_IN = core_select(_SETTINGS.c.key, _SETTINGS.c.value).where(
    _SETTINGS.c.key.in_(bindparam("match_keys", expanding=True)))
# SQLite: the log head and some settings in one statement (a row per setting found, or one with NULLs).
# NOTE: not on PostgreSQL: a statement that waited for the head's row lock sees the other tables as they were
# when it started (READ COMMITTED re-reads only the locked row), so a lockdown committed while it waited would
# be missed.  There the settings are read by a query of their own after the lock, inside the function
# broker_lock_log_head (migration 0014: each query of a VOLATILE function takes a fresh snapshot), so the lock
# and the read are still one round trip.
_HEAD_WITH_SETTINGS_PG = text(
    "SELECT head_seq AS seq, head_hash AS hash, setting_key AS key, setting_value AS value "
    "FROM broker_lock_log_head(CAST(:match_keys AS text[]))")
_HEAD_WITH_SETTINGS = (
    core_select(_LOG_HEAD.c.seq, _LOG_HEAD.c.hash, _SETTINGS.c.key, _SETTINGS.c.value)
    .select_from(_LOG_HEAD.outerjoin(_SETTINGS, _SETTINGS.c.key.in_(bindparam("match_keys", expanding=True))))
    .where(_LOG_HEAD.c.id == 1))
# The rows read back as records (broker.storage.records decodes them).
_PRINCIPAL_BY_ID = core_select(_PRINCIPALS).where(_PRINCIPALS.c.id == bindparam("match_id"))
_API_KEY_BY_ID = core_select(_API_KEYS).where(_API_KEYS.c.key_id == bindparam("match_id"))
_REQUEST_BY_ID = core_select(_REQUESTS).where(_REQUESTS.c.id == bindparam("match_id"))
_REQUEST_BY_ID_FOR_UPDATE = _REQUEST_BY_ID.with_for_update()
_APPROVALS_OF = (core_select(_APPROVALS).where(_APPROVALS.c.request_id == bindparam("match_id"))
                 .order_by(_APPROVALS.c.id))
_GRANT_BY_ID = core_select(_GRANTS).where(_GRANTS.c.id == bindparam("match_id"))
_GRANT_OF_REQUEST = core_select(_GRANTS).where(_GRANTS.c.request_id == bindparam("match_id"))
# A changed record written over its row (every column but the key; prefixed binds: see _values_of).
_SAVE_GRANT = update(_GRANTS).where(_GRANTS.c.id == bindparam("match_id")).values(
    {c.name: bindparam("grant__" + c.name, type_=c.type) for c in _GRANTS.columns if c.name != "id"})
_SAVE_API_KEY = update(_API_KEYS).where(_API_KEYS.c.key_id == bindparam("match_id")).values(
    {c.name: bindparam("key__" + c.name, type_=c.type) for c in _API_KEYS.columns if c.name != "key_id"})


def _values_of(table: Table, prefix: str) -> dict[str, Any]:
    """Every column of ``table`` as a bind parameter named ``prefix + column``, typed as the column.

    NOTE: a parameter named like a column (``grant_id``, ``request_id``) would become a SET value of
    an UPDATE in the same statement: prefixes end in a double underscore, which no column has."""
    return {c.name: bindparam(prefix + c.name, type_=c.type) for c in table.columns}


def _prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` keyed as the bind parameters ``_values_of(table, prefix)`` names."""
    return {prefix + name: value for name, value in values.items()}


# PostgreSQL: the issuance path's writes as single statements with data-modifying CTEs (one round
# trip each instead of two or three; all of a statement's parts run, or none).
_ADD_REQUEST_AND_INTENT_PG = insert(_INTENTS).values(_values_of(_INTENTS, "intent__")).add_cte(
    insert(_REQUESTS).values(_values_of(_REQUESTS, "request__")).cte("added_request"))
_MOVED_TO_ISSUED_PG = (
    _TRANSITION.values(status=bindparam("to_status"), issued_at=bindparam("to_issued_at"),
                       updated_at=bindparam("to_updated_at"))
    .returning(_REQUESTS.c.id)
    .cte("moved_request"))


def _insert_if(table: Table, prefix: str, moved: Any) -> Any:
    """An INSERT of one row of ``_values_of(table, prefix)`` for each row the CTE ``moved`` returned (one or none)."""
    values = _values_of(table, prefix)
    return insert(table).from_select(list(values), core_select(*values.values()).select_from(moved))


# NOTE: every data-modifying CTE of a statement runs, whether the others wrote or not: the issuance's writes are
# each conditional on the request having moved (its UPDATE's RETURNING), so a request that had moved on gets no
# grant, no resolved intent and no entry, and the head stays, even if the unit of work then committed.
_IF_MOVED_PG = exists().select_from(_MOVED_TO_ISSUED_PG)
_ADDED_GRANT_PG = _insert_if(_GRANTS, "grant__", _MOVED_TO_ISSUED_PG).cte("added_grant")
_RESOLVED_INTENT_PG = _RESOLVE_INTENT.where(_IF_MOVED_PG).cte("resolved_intent")
_RECORD_ISSUED_PG = (
    core_select(func.count()).select_from(_MOVED_TO_ISSUED_PG).add_cte(_ADDED_GRANT_PG).add_cte(_RESOLVED_INTENT_PG))
_HEAD = core_select(_LOG_HEAD.c.seq, _LOG_HEAD.c.hash).where(_LOG_HEAD.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
# Compare-and-set: the head moves only from the (seq, hash) the entry was chained to.
_SET_HEAD = (update(_LOG_HEAD).where(_LOG_HEAD.c.id == 1, _LOG_HEAD.c.seq == bindparam("prev_head_seq"),
                                     _LOG_HEAD.c.hash == bindparam("prev_head_hash"))
             .values(seq=bindparam("head_seq"), hash=bindparam("head_hash")))
_INSERT_EVENT = insert(_EVENTS)
# What the rate-limit gate counts, in one statement: an agent's and a template's requests since a
# moment, and an agent's live grants: unexpired and unrevoked, plus its issuances in flight (past
# their gate, their grant not yet recorded), which would otherwise slip past the limit together.
_SINCE = bindparam("since", type_=_REQUESTS.c.created_at.type)
_ISSUANCE_COUNTS = core_select(
    core_select(func.count()).select_from(_REQUESTS)
    .where(_REQUESTS.c.requester == bindparam("agent"), _REQUESTS.c.created_at >= _SINCE)
    .scalar_subquery().label("agent_requests"),
    core_select(func.count()).select_from(_REQUESTS)
    .where(_REQUESTS.c.template == bindparam("template"), _REQUESTS.c.created_at >= _SINCE)
    .scalar_subquery().label("template_requests"),
    (core_select(func.count()).select_from(_GRANTS)
     .where(_GRANTS.c.agent == bindparam("agent"),
           _GRANTS.c.expiration > bindparam("now", type_=_GRANTS.c.expiration.type),
           _GRANTS.c.revoked_at.is_(None))
    .scalar_subquery()
    + core_select(func.count()).select_from(_REQUESTS)
    .where(_REQUESTS.c.status == "issuing", _REQUESTS.c.requester == bindparam("agent"))
    .scalar_subquery()
).label("agent_live_grants"),
    core_select(func.count()).select_from(_REQUESTS)
    .where(_REQUESTS.c.requester == bindparam("agent"), _REQUESTS.c.status == "pending",
           _REQUESTS.c.pending_expires_at > bindparam("now", type_=_REQUESTS.c.pending_expires_at.type))
    .scalar_subquery().label("agent_pending_requests"),
)
# PostgreSQL: the entry's INSERT rides in the head UPDATE as a data-modifying CTE, one round trip
# instead of two (both run, or neither: one statement).
_APPEND_PG = _SET_HEAD.add_cte(insert(_EVENTS).values(_values_of(_EVENTS, "entry__")).cte("appended_entry"))
# ... and with the writes of an issuance's unit of work A (the request, its mint intent) or B (the request's
# move to issued, its grant, its intent resolved): the whole unit of work but its COMMIT in one statement.
_ADD_REQUEST_INTENT_AND_APPEND_PG = _APPEND_PG.add_cte(
    insert(_REQUESTS).values(_values_of(_REQUESTS, "request__")).cte("added_request"),
    insert(_INTENTS).values(_values_of(_INTENTS, "intent__")).cte("added_intent"))
_MOVED_HEAD_PG = _SET_HEAD.where(_IF_MOVED_PG).returning(_LOG_HEAD.c.id).cte("moved_head")
_RECORD_ISSUED_AND_APPEND_PG = (
    core_select(core_select(func.count()).select_from(_MOVED_TO_ISSUED_PG).scalar_subquery().label("moved"),
                core_select(func.count()).select_from(_MOVED_HEAD_PG).scalar_subquery().label("appended"))
    .add_cte(_ADDED_GRANT_PG).add_cte(_RESOLVED_INTENT_PG)
    .add_cte(_insert_if(_EVENTS, "entry__", _MOVED_TO_ISSUED_PG).cte("appended_entry")))


def _principal(principal_id: str, roles: str, groups: str, acts_for: str | None,
               attributes: str | None = None) -> Principal:
    return Principal(id=principal_id, roles=frozenset(Role(r) for r in json.loads(roles)), acts_for=acts_for,
                     groups=frozenset(json.loads(groups)),
                     attributes=MappingProxyType(json.loads(attributes)) if attributes else MappingProxyType({}))


class Repository:
    """The queries of one unit of work, on its connection (``Database.transaction`` / ``read``)."""

    def __init__(self, connection: Connection, *, postgres: bool, read_only: bool = False) -> None:
        self._core = connection
        self._postgres = postgres
        self._read_only = read_only
        self._session: Session | None = None
        # The log head (seq, hash) as this unit of work holds it: set by lock_log_head, advanced by
        # append_event.  Valid only while the transaction that read it is open (the repository lives
        # exactly that long).
        self._head: tuple[int, str] | None = None
        # When this unit of work got the log's lock (perf_counter), for the lock's hold time.
        self.locked_at: float | None = None
        # The entries this unit of work appended, sealed (told to the log's observers once it commits).
        self.appended: list[dict[str, Any]] = []

    @property
    def session(self) -> Session:
        """An ORM session in the unit of work's transaction, made on first use (the issuance path needs none)."""
        if self._session is None:
            # NOTE: joins the connection's transaction; the unit of work, not the session, commits it.
            self._session = Session(bind=self._core, expire_on_commit=False,
                                    join_transaction_mode="rollback_only")
        return self._session

    def flush(self) -> None:
        """Send the session's pending ORM changes (the unit of work commits right after)."""
        if self._session is not None:
            self._session.flush()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # --- principals and keys ------------------------------------------------------------
    def _principal_row(self, principal_id: str) -> Any:
        return self._core.execute(_PRINCIPAL_BY_ID, {"match_id": principal_id}).first()

    def get_principal(self, principal_id: str) -> Principal | None:
        row = self._principal_row(principal_id)
        if row is None or row.disabled:
            return None
        return _principal(row.id, row.roles, row.groups, row.acts_for, row.attributes)

    def is_principal_disabled(self, principal_id: str) -> bool:
        row = self._principal_row(principal_id)
        return row is not None and bool(row.disabled)

    def upsert_principal(self, *, principal_id: str, roles: Sequence[str], groups: Sequence[str] = (),
                         acts_for: str | None = None, now: datetime,
                         attributes: Mapping[str, str] | None = None) -> None:
        """Create or update a principal; ``attributes`` None keeps the stored ones, a mapping replaces them."""
        values: dict[str, Any] = {"roles": encode_names(list(roles)), "groups": encode_names(list(groups)),
                                  "acts_for": acts_for}
        if attributes is not None:
            values["attributes"] = encode_attributes(attributes)
        # NOTE: a disabled principal stays disabled: only set_principal_disabled (a logged use case) enables it.
        if self._principal_row(principal_id) is None:
            self._core.execute(insert(_PRINCIPALS), {"id": principal_id, "created_at": now, "disabled": False,
                                                     "attributes": None, **values})
        else:
            self._core.execute(update(_PRINCIPALS).where(_PRINCIPALS.c.id == principal_id).values(values))

    def get_principal_entry(self, principal_id: str) -> PrincipalEntry | None:
        """The stored principal, disabled or not (admin views)."""
        row = self._principal_row(principal_id)
        return None if row is None else principal_entry(row)

    def set_principal_disabled(self, principal_id: str, disabled: bool) -> bool:
        result = self._core.execute(update(_PRINCIPALS).where(_PRINCIPALS.c.id == principal_id)
                                    .values(disabled=disabled))
        return result.rowcount == 1

    def disable_principal(self, principal_id: str) -> bool:
        return self.set_principal_disabled(principal_id, True)

    def add_api_key(self, *, key_id: str, token_hash: str, principal_id: str, now: datetime,
                    expires_at: datetime | None = None) -> None:
        self._core.execute(insert(_API_KEYS), plain_values(ApiKey(key_id=key_id, token_hash=token_hash,
                                                                  principal_id=principal_id, created_at=now,
                                                                  expires_at=expires_at)))

    def get_api_key(self, key_id: str) -> ApiKey | None:
        row = self._core.execute(_API_KEY_BY_ID, {"match_id": key_id}).first()
        return None if row is None else api_key_record(row)

    def list_api_keys(self, *, principal_id: str | None = None) -> list[ApiKey]:
        statement = core_select(_API_KEYS).order_by(_API_KEYS.c.principal_id, _API_KEYS.c.created_at)
        if principal_id is not None:
            statement = statement.where(_API_KEYS.c.principal_id == principal_id)
        return [api_key_record(row) for row in self._core.execute(statement)]

    def save_api_key(self, key: ApiKey) -> None:
        """A changed key (revoked, expiry moved) written over the stored one."""
        self._core.execute(_SAVE_API_KEY, {**_prefixed("key__", plain_values(key)), "match_id": key.key_id})

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        found = self.find_api_key_with_principal(key_id)
        return None if found is None else found[0]

    def find_api_key_with_principal(self, key_id: str) -> tuple[ApiKeyRecord, Principal | None] | None:
        """An API key and its principal (None if missing or disabled), in one query."""
        row = self._core.execute(_KEY_WITH_PRINCIPAL, {"key_id": key_id}).first()
        if row is None:
            return None
        record = ApiKeyRecord(key_id=row.key_id, token_hash=row.token_hash, principal_id=row.principal_id,
                              revoked=bool(row.revoked), expires_at=row.expires_at,
                              principal_disabled=row.roles is not None and bool(row.disabled))
        if row.roles is None or row.disabled:
            return record, None
        return record, _principal(row.principal_id, row.roles, row.groups, row.acts_for, row.attributes)

    # --- requests -------------------------------------------------------------------------
    def add_request(self, row: CredentialRequest) -> None:
        self._core.execute(insert(_REQUESTS), request_values(row))

    def get_request(self, request_id: str, *, for_update: bool = False) -> CredentialRequest | None:
        statement = _REQUEST_BY_ID
        if for_update:
            self.lock_log_head()  # the lock order: the log head, then rows
            if self._postgres:
                statement = _REQUEST_BY_ID_FOR_UPDATE
        row = self._core.execute(statement, {"match_id": request_id}).first()
        return None if row is None else request_record(row)

    def transition_request(self, request_id: str, *, from_statuses: Sequence[str], to_status: str,
                           **values: Any) -> bool:
        """Conditional update: moves the request only if it is still in one of ``from_statuses``.

        Exactly one of many concurrent callers wins (the database decides, not a read-then-write).
        """
        # NOTE: a record read before keeps the values it was read with (records are values); callers build the
        # moved one with dataclasses.replace, or read it again.  The SET columns are the parameters' keys.
        self.lock_log_head()  # the lock order: the log head, then rows
        self.flush()
        result = self._core.execute(_TRANSITION, {"match_id": request_id, "match_statuses": list(from_statuses),
                                                  "status": to_status, **values})
        return result.rowcount == 1

    def list_requests(self, *, statuses: Sequence[str] | None = None, requester: str | None = None,
                      acts_for: str | None = None, limit: int = 100,
                      offset: int = 0) -> list[CredentialRequest]:
        """Newest first (ties by id, so pages never overlap)."""
        statement = (core_select(_REQUESTS).order_by(_REQUESTS.c.created_at.desc(), _REQUESTS.c.id)
                     .limit(limit).offset(offset))
        if statuses:
            statement = statement.where(_REQUESTS.c.status.in_(list(statuses)))
        if requester:
            statement = statement.where(_REQUESTS.c.requester == requester)
        if acts_for:
            statement = statement.where(_REQUESTS.c.acts_for == acts_for)
        return [request_record(row) for row in self._core.execute(statement)]

    def count_requests_by_requester(self, *, statuses: Sequence[str]) -> dict[str, int]:
        """How many requests in ``statuses`` each requester has, most first."""
        n = func.count().label("n")
        statement = (core_select(_REQUESTS.c.requester, n).where(_REQUESTS.c.status.in_(list(statuses)))
                     .group_by(_REQUESTS.c.requester).order_by(n.desc(), _REQUESTS.c.requester))
        return {requester: int(count) for requester, count in self._core.execute(statement)}

    def stale_requests(self, *, now: datetime) -> list[CredentialRequest]:
        pending = core_select(_REQUESTS).where(_REQUESTS.c.status == "pending", _REQUESTS.c.pending_expires_at < now)
        approved = core_select(_REQUESTS).where(_REQUESTS.c.status == "approved", _REQUESTS.c.redeem_by < now)
        return [request_record(row) for statement in (pending, approved) for row in self._core.execute(statement)]

    # --- approvals ------------------------------------------------------------------------
    def add_approval(self, row: Approval) -> None:
        self._core.execute(insert(_APPROVALS), plain_values(row))

    def approvals_for(self, request_id: str) -> list[Approval]:
        return [approval_record(row) for row in self._core.execute(_APPROVALS_OF, {"match_id": request_id})]

    def has_decided(self, request_id: str, approver: str) -> bool:
        statement = core_select(_APPROVALS.c.id).where(_APPROVALS.c.request_id == request_id,
                                                      _APPROVALS.c.approver == approver).limit(1)
        return self._core.execute(statement).first() is not None

    # --- grants and mint intents ----------------------------------------------------------
    def add_request_and_intent(self, row: CredentialRequest, intent: MintIntent, *,
                               entry: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """A request about to be minted and its mint intent, and ``entry`` appended to the log if given (it is
        returned sealed).  PostgreSQL: one statement (with the entry: the log's lock must be held already)."""
        if not self._postgres:
            self.add_request(row)
            self.add_intent(intent)
            return None if entry is None else self.append_event(entry)
        params = {**_prefixed("request__", request_values(row)), **_prefixed("intent__", plain_values(intent))}
        if entry is None:
            self._core.execute(_ADD_REQUEST_AND_INTENT_PG, params)
            return None
        sealed, entry_row, head = self._sealed(entry)
        result = self._core.execute(_ADD_REQUEST_INTENT_AND_APPEND_PG,
                                    {**params, **_prefixed("entry__", entry_row), **head})
        return self._appended(sealed, result.rowcount == 1)

    def record_issued(self, request_id: str, *, from_statuses: Sequence[str], to_status: str, grant: Grant,
                      now: datetime, entry: Mapping[str, Any] | None = None) -> bool:
        """Move the request to ``to_status`` if it is still in ``from_statuses``, add its grant, resolve its
        mint intent and append ``entry`` if given.  False when the request had moved on: then nothing was
        written (the head this unit of work holds stays) and the caller must refuse.  PostgreSQL: one statement,
        each of whose parts writes only if the request moved."""
        self.lock_log_head()  # the lock order: the log head, then rows
        if not self._postgres:
            if not self.transition_request(request_id, from_statuses=from_statuses, to_status=to_status,
                                           issued_at=now, updated_at=now):
                return False
            self.add_grant(grant)
            self.resolve_intent(grant.id)
            if entry is not None:
                self.append_event(entry)
            return True
        self.flush()
        params = _prefixed("grant__", plain_values(grant))
        params.update(match_id=request_id, match_statuses=list(from_statuses), to_status=to_status,
                      to_issued_at=now, to_updated_at=now, match_grant_id=grant.id)
        if entry is None:
            return self._core.execute(_RECORD_ISSUED_PG, params).scalar_one() == 1
        sealed, entry_row, head = self._sealed(entry)
        counts = self._core.execute(_RECORD_ISSUED_AND_APPEND_PG,
                                    {**params, **_prefixed("entry__", entry_row), **head}).one()
        if counts.moved != 1:
            self._head = (head["prev_head_seq"], head["prev_head_hash"])  # nothing was written: the head stays
            return False
        self._appended(sealed, counts.appended == 1)
        return True

    def add_intent(self, row: MintIntent) -> None:
        self._core.execute(insert(_INTENTS), plain_values(row))

    def resolve_intent(self, grant_id: str) -> None:
        self.lock_log_head()  # the lock order: the log head, then rows
        self._core.execute(_RESOLVE_INTENT, {"match_grant_id": grant_id})

    def unresolved_intents(self) -> list[MintIntent]:
        statement = core_select(_INTENTS).where(_INTENTS.c.resolved == False)  # noqa: E712
        return [intent_record(row) for row in self._core.execute(statement)]

    def add_grant(self, row: Grant) -> None:
        """A new grant (an INSERT; a changed one is written with ``save_grant``)."""
        self._core.execute(insert(_GRANTS), plain_values(row))

    def save_grant(self, grant: Grant) -> None:
        """A changed grant (revoked) written over the stored one."""
        self._core.execute(_SAVE_GRANT, {**_prefixed("grant__", plain_values(grant)), "match_id": grant.id})

    def get_grant(self, grant_id: str) -> Grant | None:
        row = self._core.execute(_GRANT_BY_ID, {"match_id": grant_id}).first()
        return None if row is None else grant_record(row)

    def grant_for_request(self, request_id: str) -> Grant | None:
        row = self._core.execute(_GRANT_OF_REQUEST, {"match_id": request_id}).first()
        return None if row is None else grant_record(row)

    def find_grants(self, *, access_key_id: str | None = None, source_identity: str | None = None,
                    agent: str | None = None, template: str | None = None, role_arn: str | None = None,
                    live_at: datetime | None = None, revoked: bool | None = None) -> list[Grant]:
        statement = core_select(_GRANTS).order_by(_GRANTS.c.issued_at)
        filters = {_GRANTS.c.access_key_id: access_key_id, _GRANTS.c.source_identity: source_identity,
                   _GRANTS.c.agent: agent, _GRANTS.c.template: template, _GRANTS.c.role_arn: role_arn}
        for column, value in filters.items():
            if value is not None:
                statement = statement.where(column == value)
        if live_at is not None:
            statement = statement.where(_GRANTS.c.expiration > live_at)
        if revoked is not None:
            statement = statement.where(_GRANTS.c.revoked_at.is_not(None) if revoked
                                        else _GRANTS.c.revoked_at.is_(None))
        return [grant_record(row) for row in self._core.execute(statement)]

    # --- settings (lockdown) --------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self.session.get(SettingRow, key)
        return None if row is None else row.value

    def get_settings(self, keys: Sequence[str], *, lock_log: bool = False) -> dict[str, str]:
        """Several settings in one query (absent keys are left out).

        ``lock_log``: read them under the issuance log's lock (taken first, as :meth:`lock_log_head`; when this
        unit of work does not hold it yet, the lock and the read are one statement: on PostgreSQL a call of
        ``broker_lock_log_head``, whose read runs after its lock)."""
        if lock_log and self._head is None:
            self._refuse_lock_in_read()
            rows = self._core.execute(_HEAD_WITH_SETTINGS_PG if self._postgres else _HEAD_WITH_SETTINGS,
                                      {"match_keys": list(keys)}).all()
            if not rows:
                raise NoResultFound("no log head row: the database is not migrated")  # as lock_log_head's .one()
            self._locked(rows[0].seq, rows[0].hash)
            return {row.key: row.value for row in rows if row.key is not None}
        if lock_log:
            self.lock_log_head()
        rows = self._core.execute(_SETTINGS_IN, {"match_keys": list(keys)})
        return {row.key: row.value for row in rows}

    def set_setting(self, key: str, value: str | None, *, now: datetime) -> None:
        row = self.session.get(SettingRow, key)
        if value is None:
            if row is not None:
                self.session.delete(row)
            return
        if row is None:
            row = SettingRow(key=key, value=value, updated_at=now)
        row.value, row.updated_at = value, now
        self.session.add(row)

    # --- the issuance log -----------------------------------------------------------------
    def lock_log_head(self) -> tuple[int, str]:
        """Take the issuance log's lock for the rest of this unit of work; return the head (seq, hash).

        Every log append takes it, so a unit of work that takes it first decides on a serialized view:
        nothing another unit of work appends (a lockdown, a request that counts against a limit) can
        commit between what this one reads and what it writes.
        """
        self._refuse_lock_in_read()
        if self._head is None:
            # NOTE: on PostgreSQL the row lock serializes appends across broker replicas until this unit
            # of work commits; SQLite units of work are BEGIN IMMEDIATE (one writer at a time), so the
            # head cannot move under us either.  The head row is created by migration 0004; a database
            # without it is not migrated: .one() fails closed.
            head = self._core.execute(_HEAD_FOR_UPDATE if self._postgres else _HEAD).one()
            self._locked(head.seq, head.hash)
        return self._head  # type: ignore[return-value]

    def _refuse_lock_in_read(self) -> None:
        if self._read_only:
            raise RuntimeError("the log's lock is taken in a unit of work (Database.transaction), not a read")

    def _locked(self, seq: int, head_hash: str) -> None:
        self._head = (seq, head_hash)
        if self.locked_at is None:
            self.locked_at = time.perf_counter()

    def issuance_counts(self, *, agent: str, template: str, since: datetime, now: datetime) -> dict[str, int]:
        """``agent_requests`` and ``template_requests`` made since ``since``; ``agent_live_grants`` and
        ``agent_pending_requests`` (still waiting for co-signers) at ``now``."""
        row = self._core.execute(_ISSUANCE_COUNTS, {"agent": agent, "template": template, "since": since,
                                                    "now": now}).one()
        return {name: int(value) for name, value in row._mapping.items()}

    def nth_newest_request_since(self, *, nth: int, since: datetime, requester: str | None = None,
                                 template: str | None = None) -> datetime | None:
        """When the ``nth`` newest request (of one agent or one template) since ``since`` was made, if any:
        the request whose leaving the window brings the count under ``nth``."""
        statement = core_select(_REQUESTS.c.created_at).where(_REQUESTS.c.created_at >= since)
        if requester is not None:
            statement = statement.where(_REQUESTS.c.requester == requester)
        if template is not None:
            statement = statement.where(_REQUESTS.c.template == template)
        statement = statement.order_by(_REQUESTS.c.created_at.desc()).limit(1).offset(nth - 1)
        return self._core.execute(statement).scalar_one_or_none()

    def earliest_live_grant_expiry(self, *, agent: str, now: datetime) -> datetime | None:
        return self._core.execute(
            core_select(func.min(_GRANTS.c.expiration))
            .where(_GRANTS.c.agent == agent, _GRANTS.c.expiration > now, _GRANTS.c.revoked_at.is_(None))
        ).scalar_one_or_none()

    def earliest_pending_expiry(self, *, requester: str, now: datetime) -> datetime | None:
        return self._core.execute(
            core_select(func.min(_REQUESTS.c.pending_expires_at))
            .where(_REQUESTS.c.requester == requester, _REQUESTS.c.status == "pending",
                   _REQUESTS.c.pending_expires_at > now)
        ).scalar_one_or_none()

    def append_event(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Seal and append one entry in this unit of work (committed with the state change)."""
        entry, row, head = self._sealed(body)
        if self._postgres:
            result = self._core.execute(_APPEND_PG, {**_prefixed("entry__", row), **head})
        else:
            self._core.execute(_INSERT_EVENT, row)
            result = self._core.execute(_SET_HEAD, head)
        return self._appended(entry, result.rowcount == 1)

    def _sealed(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``body`` sealed as the entry after the head this unit of work holds (taking the log's lock if it does
        not yet), its row, and the values of the head's compare-and-set."""
        seq, prev_hash = self.lock_log_head()
        entry = issuance_log.seal_entry(body, seq=seq + 1, prev_hash=prev_hash)
        row = {
            "seq": entry["seq"], "event_id": entry["event_id"], "time": parse_time(entry["time"]),
            "type": entry["type"], "request_id": entry.get("request_id"), "grant_id": entry.get("grant_id"),
            "actor": entry.get("actor"), "acts_for": entry.get("acts_for"), "template": entry.get("template"),
            "access_key_id": entry.get("access_key_id"), "body": issuance_log.entry_line(entry).decode("utf-8"),
            "prev_hash": entry["prev_hash"], "hash": entry["hash"],
        }
        self._head = None  # until this append is known to have moved the head
        return entry, row, {"head_seq": entry["seq"], "head_hash": entry["hash"], "prev_head_seq": seq,
                            "prev_head_hash": prev_hash}

    def _appended(self, entry: dict[str, Any], moved_head: bool) -> dict[str, Any]:
        if not moved_head:
            # NOTE: the head is missing or is not the one this entry was chained to: fail closed, and the
            # unit of work rolls back the entry with everything else.
            raise StorageUnavailable("the issuance log head moved or is missing; nothing was written")
        self._head = (entry["seq"], entry["hash"])
        self.appended.append(entry)
        return entry

    def log_head(self) -> tuple[int, str]:
        head = self.session.get(LogHeadRow, 1)
        return (0, issuance_log.GENESIS_HASH) if head is None else (head.seq, head.hash)

    def query_events(self, *, filters: Mapping[str, Any], after_seq: int = 0, limit: int = 100,
                     since: datetime | None = None, until: datetime | None = None,
                     up_to: int | None = None) -> list[dict[str, Any]]:
        """Entries matching ``filters`` (EVENT_FILTER_FIELDS) and times, oldest first (of the seqs after
        ``after_seq``, up to ``up_to`` if given).

        NOTE: every condition reads the stored body, the canonical JSON the hash covers, never the columns
        copied from it for the issuance path: editing a column cannot hide an entry from a reviewer.  Log
        times compare as strings (one fixed width format).  A time window trusts the cached blocks' time bounds
        (derived from the bodies, log_aggregate_blocks): whoever can write that table can hide a block's entries
        from windows, not from the queries without one, the export from the start or ``broker audit verify``.
        """
        if since is None and until is None:
            statement = self.events_statement(filters=filters, after_seq=after_seq, limit=limit, up_to=up_to)
            return [json.loads(row.body) for row in self._core.execute(statement)]
        found: list[dict[str, Any]] = []
        # NOTE: a time window reads only the runs of seqs that may hold its entries (the filled blocks' time
        # bounds, log_aggregates.window_runs), in seq order, each on the primary key or a filter's (field, seq)
        # index: exact, as no skipped block holds an entry of the window.  A run not filled (a log the fill has not
        # caught up with, the open tail) starts, as without the cache, at the window's first seq from the time
        # index when that bound is cheap to trust (a closed window, no other filter: see events_statement).
        first: int | None = 0
        filtered = _field_filtered(filters)
        time_bound = since is not None and until is not None and not filtered
        for after, run_up_to, cached, high in self._window_runs(after_seq, since, until):
            if up_to is not None and after >= up_to:
                break
            if up_to is not None:
                run_up_to = up_to if run_up_to is None else min(run_up_to, up_to)
            if cached and not filtered and since is not None and high is not None:
                after = self._first_in_block(after, since, until, high)
            if not cached and time_bound:
                if first == 0:
                    first = self._first_seq(self._window(since, until))
                if first is None:
                    break  # no entry in the window at all
                after = max(after, first - 1)
                if run_up_to is not None and after >= run_up_to:
                    continue
            statement = self.events_statement(filters=filters, after_seq=after, limit=limit - len(found),
                                              since=since, until=until, up_to=run_up_to, time_bound=False,
                                              time_indexed=not cached)
            found.extend(json.loads(row.body) for row in self._core.execute(statement))
            if len(found) >= limit:
                break
        return found

    def _window(self, since: datetime | None, until: datetime | None, *, indexed: bool = True) -> list[Any]:
        """The time window's conditions; not ``indexed``: the same values, but not the time index's expression on
        PostgreSQL (``|| ''`` leaves a text as it is), so that a walk by seq in a cached run stays on the primary
        key (the planner, misjudging the window and the seq range together as one row, would read the whole
        window from the time index and sort it)."""
        time = self._body_field("time")
        if not indexed and self._postgres:
            time = time.op("||")(literal_column("''"))
        window = []
        if since is not None:
            window.append(time >= issuance_log.log_time(since))
        if until is not None:
            window.append(time < issuance_log.log_time(until))
        return window

    def _first_in_block(self, after: int, since: datetime, until: datetime | None, high: str) -> int:
        """Where to walk a cached run from: before the first seq of its first block (``after``'s) with a time in
        the window, read on the time index between ``since`` and the block's greatest time ``high`` (every time
        of the block is at most ``high``: without skew a block's worth of index entries, not the window's), or
        the block's end when it has none."""
        block_end = (after // log_aggregates.BLOCK + 1) * log_aggregates.BLOCK
        query, seq = self._first_seq_query([*self._window(since, until), self._body_field("time") <= high])
        first = self._core.execute(query.where(seq > after, seq <= block_end)).scalar_one_or_none()
        return block_end if first is None else int(first) - 1

    def _first_seq(self, window: list[Any]) -> int | None:
        """The first seq with a body time in the window, from the time index."""
        first = self._core.execute(self._first_seq_query(window)[0]).scalar_one_or_none()
        return None if first is None else int(first)

    @staticmethod
    def _first_seq_query(window: list[Any]) -> tuple[Any, Any]:
        """SELECT min(seq) of the entries in ``window``, read on the time index (the OFFSET keeps the planner on
        it), and the seq column of its subquery (for bounds a caller adds)."""
        in_window = core_select(_EVENTS.c.seq).where(*window).offset(literal_column("0")).subquery("in_window")
        return core_select(func.min(in_window.c.seq)), in_window.c.seq

    def _window_runs(self, after_seq: int, since: datetime | None, until: datetime | None) -> list[Run]:
        return window_runs(self._core, after_seq=after_seq,
                           since=None if since is None else issuance_log.log_time(since),
                           until=None if until is None else issuance_log.log_time(until))

    def events_statement(self, *, filters: Mapping[str, Any], after_seq: int, limit: int,
                         since: datetime | None = None, until: datetime | None = None, up_to: int | None = None,
                         time_bound: bool = True, time_indexed: bool = True) -> Any:
        """The SELECT of :meth:`query_events` without the cache (each condition on a body index, migration 0012),
        of the seqs after ``after_seq`` (up to ``up_to``); ``time_bound``: a closed window's first page starts at
        its first seq from the time index; ``time_indexed``: see :meth:`_window`."""
        statement = (core_select(_EVENTS.c.body).where(_EVENTS.c.seq > after_seq).order_by(_EVENTS.c.seq)
                     .limit(limit))
        if up_to is not None:
            statement = statement.where(_EVENTS.c.seq <= up_to)
        for name, value in filters.items():
            if value is not None and name == "risk":
                statement = statement.where(risk_condition(value, postgres=self._postgres))
            elif value is not None:
                statement = statement.where(self._body_field(EVENT_FILTER_FIELDS[name]) == value)
        window = self._window(since, until, indexed=time_indexed)
        if since is not None and until is not None and not _field_filtered(filters) and not after_seq and time_bound:
            # NOTE: the first page of a time window alone: its entries come from its time index: the first seq that
            # has a time in it bounds the walk in seq order from below (exact: no entry before it is in the window,
            # whatever order the replicas' clocks gave the times).  Without it the planner walks seq order from
            # the start of the log, reading every body before the window.  The OFFSET keeps the subquery on the
            # time index.  Not for an open window (``since`` only: report, export) nor for later pages, which
            # start at their after_seq: there the planner would read every body of the window to find its first
            # seq; not with another filter either, whose index leads.
            first, _ = self._first_seq_query(window)
            statement = statement.where(_EVENTS.c.seq >= first.scalar_subquery())
        return statement.where(*window)

    def first_seq_since(self, since: datetime) -> int | None:
        """The first seq whose entry's (body) time is ``since`` or later, from the time index (None: no such entry).
        No entry before it is in an open window from ``since``, whatever order the replicas' clocks gave the times.
        The filled blocks that end before ``since`` (log_aggregates.window_runs) are skipped; the first kept filled
        block holds an entry from ``since`` (its greatest time is), read on the primary key."""
        for after, up_to, cached, high in self._window_runs(0, since, None):
            if not cached:
                break  # NOTE: from a block not filled on: the time index, as without the cache
            if high is not None:  # a cached run's first block holds an entry from since (its greatest time does)
                after = self._first_in_block(after, since, None, high)
            first = self._core.execute(core_select(func.min(_EVENTS.c.seq)).where(
                _EVENTS.c.seq > after, _EVENTS.c.seq <= up_to, *self._window(since, None, indexed=False))
            ).scalar_one_or_none()
            if first is not None:
                return int(first)
        return self._first_seq(self._window(since, None))

    # --- the report's cache of closed blocks (broker.storage.report_blocks) -----------------------------------
    def report_segments(self, since: datetime, *, rules: int) -> list[Segment]:
        return report_blocks.report_segments(self._core, since=issuance_log.log_time(since), rules=rules)

    def missing_report_blocks(self, *, rules: int) -> list[int]:
        return report_blocks.missing_report_blocks(self._core, rules=rules)

    def report_block_entries(self, block: int) -> tuple[list[dict[str, Any]] | None, str | None, str | None]:
        return report_blocks.block_entries(self._core, block, postgres=self._postgres)

    def pending_request_ids(self, request_ids: Sequence[str], *, through_block: int) -> set[str] | None:
        return report_blocks.pending_request_ids(self._core, request_ids, through_block=through_block,
                                                 postgres=self._postgres)

    def report_counts(self, blocks: Sequence[int], *, rules: int) -> list[tuple[str, str, str, str, int]]:
        return report_blocks.report_counts(self._core, blocks, rules=rules)

    def save_report_block(self, block: int, *, rules: int, min_time: str | None, max_time: str | None,
                          figures: str | None, counts: Sequence[tuple[str, str, str, str, int]]) -> bool:
        return report_blocks.save_report_block(self._core, block, rules=rules, min_time=min_time, max_time=max_time,
                                               figures=figures, counts=counts, postgres=self._postgres)

    def _body_field(self, name: str) -> Any:
        """A top-level string member of the stored entry body, as SQL (the expression of the body indexes)."""
        return body_field(name, postgres=self._postgres)

    def latest_event(self, event_type: str) -> dict[str, Any] | None:
        """The newest entry of one type (e.g. the last ``templates_loaded``), or None."""
        row = self.session.exec(select(EventRow).where(col(EventRow.type) == event_type)
                                .order_by(col(EventRow.seq).desc()).limit(1)).first()
        return None if row is None else json.loads(row.body)

    def add_checkpoint(self, checkpoint: issuance_log.Checkpoint) -> None:
        """Insert the next checkpoint (the caller holds the log's lock).  Never an overwrite: a row at
        the same position, or a second successor of one checkpoint, fails the unit of work."""
        latest = self._core.execute(core_select(func.max(_CHECKPOINTS.c.position))).scalar_one_or_none()
        self._core.execute(insert(_CHECKPOINTS).values(
            position=(latest or 0) + 1, seq=checkpoint.seq, head_hash=checkpoint.head_hash, time=checkpoint.time,
            key_id=checkpoint.key_id, signature=checkpoint.signature,
            prev_checkpoint=checkpoint.prev_checkpoint, hash=checkpoint.hash()))

    def latest_checkpoint(self) -> issuance_log.Checkpoint | None:
        row = self._core.execute(core_select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.position.desc()).limit(1)).first()
        return None if row is None else _checkpoint(row)

    def checkpoints(self, *, from_seq: int = 0) -> list[issuance_log.Checkpoint]:
        """The checkpoints signing seq ``from_seq`` or later, in the order they were signed."""
        rows = self._core.execute(core_select(_CHECKPOINTS).where(_CHECKPOINTS.c.seq >= from_seq)
                                  .order_by(_CHECKPOINTS.c.position))
        return [_checkpoint(row) for row in rows]

    def checkpoint_page(self, *, from_seq: int, up_to_seq: int, after_position: int,
                        limit: int) -> list[tuple[int, issuance_log.Checkpoint]]:
        """Up to ``limit`` checkpoints signing a seq from ``from_seq`` to ``up_to_seq``, signed after the one at
        ``after_position``, in the order they were signed, each with its position (where the next page starts)."""
        rows = self._core.execute(core_select(_CHECKPOINTS).where(
            _CHECKPOINTS.c.seq >= from_seq, _CHECKPOINTS.c.seq <= up_to_seq, _CHECKPOINTS.c.position > after_position)
            .order_by(_CHECKPOINTS.c.position).limit(limit))
        return [(row.position, _checkpoint(row)) for row in rows]

    def log_figures(self, *, live: bool = False) -> LogFigures:
        """The dashboard's aggregate queries, in this unit of work: from the cache of closed blocks
        (broker.storage.log_aggregates), or ``live`` from every entry of the range.  The cache is written
        only from a read (on SQLite a transaction holds the write lock another connection would wait for)."""
        if live:
            return LogFigures(self.session)
        return CachedLogFigures(self.session, fill=self._read_only or self._postgres)

    def stored_entry_lines(self, *, from_seq: int) -> list[bytes]:
        """The stored lines (canonical JSON, what was hashed) of every entry from ``from_seq`` on, by seq."""
        rows = self._core.execute(core_select(_EVENTS.c.body).where(_EVENTS.c.seq >= from_seq)
                                  .order_by(_EVENTS.c.seq))
        return [row.body.encode("utf-8") for row in rows]


def _checkpoint(row: Any) -> issuance_log.Checkpoint:
    return issuance_log.Checkpoint(seq=row.seq, head_hash=row.head_hash, time=row.time, key_id=row.key_id,
                                   signature=row.signature, prev_checkpoint=row.prev_checkpoint)
