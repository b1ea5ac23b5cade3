"""Repository: every query the use cases need.  It never commits (the unit of work does).

The statements on the issuance path (authentication, the request, intent and grant rows, the
log append) are SQLAlchemy Core on the unit of work's connection, not ORM unit-of-work
flushes: the same tables and column types, a tenth of the Python per statement.  Rows written
that way are not in the session's identity map; a later ORM read in the same unit of work
loads them from the database like any other row.

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

from sqlalchemy import Table, bindparam, cast, func, insert, literal_column, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoResultFound
from sqlmodel import Session, SQLModel, col, select

from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.domain.records import Approval, CredentialRequest, Grant, MintIntent
from broker.domain.times import parse_time
from broker.errors import StorageUnavailable
from broker.ports import ApiKeyRecord
from broker.storage.log_figures import LogFigures
from broker.storage.models import (ApiKeyRow, ApprovalRow, CheckpointRow, EventRow, GrantRow, LogHeadRow,
                                   MintIntentRow, PrincipalRow, RequestRow, SettingRow)


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
# Reviewer query filters -> the entry field each matches (in the hashed body).
EVENT_FILTER_FIELDS = {"agent": "actor", "human": "acts_for", "template": "template", "type": "type",
                       "request_id": "request_id", "access_key_id": "access_key_id", "actor": "actor",
                       "grant_id": "grant_id"}
# The body fields queries filter on (each has an index on its expression, migration 0012).
BODY_FIELDS = frozenset({*EVENT_FILTER_FIELDS.values(), "time"})

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
# be missed.  There the settings are read by a statement of their own, after the lock.
_HEAD_WITH_SETTINGS = (
    core_select(_LOG_HEAD.c.seq, _LOG_HEAD.c.hash, _SETTINGS.c.key, _SETTINGS.c.value)
    .select_from(_LOG_HEAD.outerjoin(_SETTINGS, _SETTINGS.c.key.in_(bindparam("match_keys", expanding=True))))
    .where(_LOG_HEAD.c.id == 1))


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
_RECORD_ISSUED_PG = (
    core_select(func.count()).select_from(_MOVED_TO_ISSUED_PG)
    .add_cte(insert(_GRANTS).values(_values_of(_GRANTS, "grant__")).cte("added_grant"))
    .add_cte(_RESOLVE_INTENT.cte("resolved_intent")))
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
_MOVED_HEAD_PG = _SET_HEAD.returning(_LOG_HEAD.c.id).cte("moved_head")
_RECORD_ISSUED_AND_APPEND_PG = (
    core_select(core_select(func.count()).select_from(_MOVED_TO_ISSUED_PG).scalar_subquery().label("moved"),
                core_select(func.count()).select_from(_MOVED_HEAD_PG).scalar_subquery().label("appended"))
    .add_cte(insert(_GRANTS).values(_values_of(_GRANTS, "grant__")).cte("added_grant"))
    .add_cte(_RESOLVE_INTENT.cte("resolved_intent"))
    .add_cte(insert(_EVENTS).values(_values_of(_EVENTS, "entry__")).cte("appended_entry")))


def _row_values(table: Table, row: SQLModel | CredentialRequest | Grant | MintIntent) -> dict[str, Any]:
    """The column values of a new row (a table model instance or its plain ``New...`` values)."""
    values = {column.name: getattr(row, column.name) for column in table.columns}
    for column in table.primary_key.columns:
        if values.get(column.name) is None:
            values.pop(column.name, None)  # an autoincrement key: the database assigns it
    return values


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
    def get_principal(self, principal_id: str) -> Principal | None:
        row = self.session.get(PrincipalRow, principal_id)
        if row is None or row.disabled:
            return None
        return _principal(row.id, row.roles, row.groups, row.acts_for, row.attributes)

    def is_principal_disabled(self, principal_id: str) -> bool:
        row = self.session.get(PrincipalRow, principal_id)
        return row is not None and bool(row.disabled)

    def upsert_principal(self, *, principal_id: str, roles: Sequence[str], groups: Sequence[str] = (),
                         acts_for: str | None = None, now: datetime,
                         attributes: Mapping[str, str] | None = None) -> None:
        """Create or update a principal; ``attributes`` None keeps the stored ones, a mapping replaces them."""
        row = self.session.get(PrincipalRow, principal_id)
        if row is None:
            row = PrincipalRow(id=principal_id, created_at=now)
        row.roles = json.dumps(sorted(set(roles)))
        row.groups = json.dumps(sorted(set(groups)))
        row.acts_for = acts_for
        if attributes is not None:
            row.attributes = json.dumps(dict(sorted(attributes.items()))) if attributes else None
        # NOTE: a disabled principal stays disabled: only set_principal_disabled (a logged use case) enables it.
        self.session.add(row)

    def get_principal_row(self, principal_id: str) -> PrincipalRow | None:
        """The stored principal, disabled or not (admin views)."""
        return self.session.get(PrincipalRow, principal_id)

    def set_principal_disabled(self, principal_id: str, disabled: bool) -> bool:
        row = self.session.get(PrincipalRow, principal_id)
        if row is None:
            return False
        row.disabled = disabled
        self.session.add(row)
        return True

    def disable_principal(self, principal_id: str) -> bool:
        return self.set_principal_disabled(principal_id, True)

    def add_api_key(self, *, key_id: str, token_hash: str, principal_id: str, now: datetime,
                    expires_at: datetime | None = None) -> None:
        self.session.add(ApiKeyRow(key_id=key_id, token_hash=token_hash, principal_id=principal_id, created_at=now,
                                   expires_at=expires_at))

    def get_api_key_row(self, key_id: str) -> ApiKeyRow | None:
        return self.session.get(ApiKeyRow, key_id)

    def list_api_keys(self, *, principal_id: str | None = None) -> list[ApiKeyRow]:
        statement = select(ApiKeyRow).order_by(col(ApiKeyRow.principal_id), col(ApiKeyRow.created_at))
        if principal_id is not None:
            statement = statement.where(ApiKeyRow.principal_id == principal_id)
        return list(self.session.exec(statement))

    def save_api_key(self, row: ApiKeyRow) -> None:
        """A key loaded in this unit of work and changed (revoked, expiry moved): written at commit."""
        self.session.add(row)

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
    def add_request(self, row: RequestRow | CredentialRequest) -> None:
        self._core.execute(insert(_REQUESTS), _row_values(_REQUESTS, row))

    def get_request(self, request_id: str, *, for_update: bool = False) -> RequestRow | None:
        statement = select(RequestRow).where(RequestRow.id == request_id)
        if for_update:
            self.lock_log_head()  # the lock order: the log head, then rows
            if self._postgres:
                statement = statement.with_for_update()
        return self.session.exec(statement).first()

    def transition_request(self, request_id: str, *, from_statuses: Sequence[str], to_status: str,
                           **values: Any) -> bool:
        """Conditional update: moves the request only if it is still in one of ``from_statuses``.

        Exactly one of many concurrent callers wins (the database decides, not a read-then-write).
        """
        # NOTE: Core, not an ORM bulk update: a request object loaded in this session keeps the values
        # it was read with; callers re-read when they need to.  The SET columns are the parameters' keys.
        self.lock_log_head()  # the lock order: the log head, then rows
        self.flush()
        result = self._core.execute(_TRANSITION, {"match_id": request_id, "match_statuses": list(from_statuses),
                                                  "status": to_status, **values})
        return result.rowcount == 1

    def list_requests(self, *, statuses: Sequence[str] | None = None, requester: str | None = None,
                      acts_for: str | None = None, limit: int = 100, offset: int = 0) -> list[RequestRow]:
        """Newest first (ties by id, so pages never overlap)."""
        statement = (select(RequestRow).order_by(col(RequestRow.created_at).desc(), col(RequestRow.id))
                     .limit(limit).offset(offset))
        if statuses:
            statement = statement.where(col(RequestRow.status).in_(list(statuses)))
        if requester:
            statement = statement.where(RequestRow.requester == requester)
        if acts_for:
            statement = statement.where(RequestRow.acts_for == acts_for)
        return list(self.session.exec(statement))

    def count_requests_by_requester(self, *, statuses: Sequence[str]) -> dict[str, int]:
        """How many requests in ``statuses`` each requester has, most first."""
        n = func.count().label("n")
        statement = (core_select(_REQUESTS.c.requester, n).where(_REQUESTS.c.status.in_(list(statuses)))
                     .group_by(_REQUESTS.c.requester).order_by(n.desc(), _REQUESTS.c.requester))
        return {requester: int(count) for requester, count in self._core.execute(statement)}

    def stale_requests(self, *, now: datetime) -> list[RequestRow]:
        pending = select(RequestRow).where(RequestRow.status == "pending", col(RequestRow.pending_expires_at) < now)
        approved = select(RequestRow).where(RequestRow.status == "approved", col(RequestRow.redeem_by) < now)
        return list(self.session.exec(pending)) + list(self.session.exec(approved))

    # --- approvals ------------------------------------------------------------------------
    def add_approval(self, row: ApprovalRow | Approval) -> None:
        self.session.add(row if isinstance(row, ApprovalRow) else ApprovalRow(**_row_values(_APPROVALS, row)))

    def approvals_for(self, request_id: str) -> list[ApprovalRow]:
        return list(self.session.exec(select(ApprovalRow).where(ApprovalRow.request_id == request_id)
                                      .order_by(col(ApprovalRow.id))))

    def has_decided(self, request_id: str, approver: str) -> bool:
        statement = select(ApprovalRow).where(ApprovalRow.request_id == request_id, ApprovalRow.approver == approver)
        return self.session.exec(statement).first() is not None

    # --- grants and mint intents ----------------------------------------------------------
    def add_request_and_intent(self, row: CredentialRequest, intent: MintIntent, *,
                               entry: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """A request about to be minted and its mint intent, and ``entry`` appended to the log if given (it is
        returned sealed).  PostgreSQL: one statement (with the entry: the log's lock must be held already)."""
        if not self._postgres:
            self.add_request(row)
            self.add_intent(intent)
            return None if entry is None else self.append_event(entry)
        params = {**_prefixed("request__", _row_values(_REQUESTS, row)),
                  **_prefixed("intent__", _row_values(_INTENTS, intent))}
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
        mint intent and append ``entry`` if given.  False when the request had moved on: the caller must
        refuse (its unit of work then rolls back the grant, the intent and the entry too).  PostgreSQL: one
        statement."""
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
        params = _prefixed("grant__", _row_values(_GRANTS, grant))
        params.update(match_id=request_id, match_statuses=list(from_statuses), to_status=to_status,
                      to_issued_at=now, to_updated_at=now, match_grant_id=grant.id)
        if entry is None:
            return self._core.execute(_RECORD_ISSUED_PG, params).scalar_one() == 1
        sealed, entry_row, head = self._sealed(entry)
        counts = self._core.execute(_RECORD_ISSUED_AND_APPEND_PG,
                                    {**params, **_prefixed("entry__", entry_row), **head}).one()
        self._appended(sealed, counts.appended == 1)
        return counts.moved == 1

    def add_intent(self, row: MintIntentRow | MintIntent) -> None:
        self._core.execute(insert(_INTENTS), _row_values(_INTENTS, row))

    def resolve_intent(self, grant_id: str) -> None:
        self.lock_log_head()  # the lock order: the log head, then rows
        self._core.execute(_RESOLVE_INTENT, {"match_grant_id": grant_id})

    def unresolved_intents(self) -> list[MintIntentRow]:
        return list(self.session.exec(select(MintIntentRow).where(MintIntentRow.resolved == False)))  # noqa: E712

    def add_grant(self, row: GrantRow | Grant) -> None:
        """A new grant (an INSERT now; a grant loaded from this unit of work is saved with ``save_grant``)."""
        self._core.execute(insert(_GRANTS), _row_values(_GRANTS, row))

    def save_grant(self, row: GrantRow) -> None:
        """A grant loaded in this unit of work and changed: written when the unit of work commits."""
        self.session.add(row)

    def get_grant(self, grant_id: str) -> GrantRow | None:
        return self.session.get(GrantRow, grant_id)

    def grant_for_request(self, request_id: str) -> GrantRow | None:
        return self.session.exec(select(GrantRow).where(GrantRow.request_id == request_id)).first()

    def find_grants(self, *, access_key_id: str | None = None, source_identity: str | None = None,
                    agent: str | None = None, template: str | None = None, role_arn: str | None = None,
                    live_at: datetime | None = None, revoked: bool | None = None) -> list[GrantRow]:
        statement = select(GrantRow).order_by(col(GrantRow.issued_at))
        filters = {GrantRow.access_key_id: access_key_id, GrantRow.source_identity: source_identity,
                   GrantRow.agent: agent, GrantRow.template: template, GrantRow.role_arn: role_arn}
        for column, value in filters.items():
            if value is not None:
                statement = statement.where(column == value)
        if live_at is not None:
            statement = statement.where(col(GrantRow.expiration) > live_at)
        if revoked is not None:
            statement = statement.where(col(GrantRow.revoked_at).is_not(None) if revoked
                                        else col(GrantRow.revoked_at).is_(None))
        return list(self.session.exec(statement))

    # --- settings (lockdown) --------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self.session.get(SettingRow, key)
        return None if row is None else row.value

    def get_settings(self, keys: Sequence[str], *, lock_log: bool = False) -> dict[str, str]:
        """Several settings in one query (absent keys are left out).

        ``lock_log``: read them under the issuance log's lock (taken first, as :meth:`lock_log_head`; on
        SQLite, when this unit of work does not hold it yet, the lock and the read are one statement)."""
        if lock_log and self._head is None and not self._postgres:
            self._refuse_lock_in_read()
            rows = self._core.execute(_HEAD_WITH_SETTINGS, {"match_keys": list(keys)}).all()
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
                     since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
        """Entries matching ``filters`` (EVENT_FILTER_FIELDS) and times, oldest first.

        NOTE: every condition reads the stored body, the canonical JSON the hash covers, never the columns
        copied from it for the issuance path: editing a column cannot hide an entry from a reviewer.  Log
        times compare as strings (one fixed width format).
        """
        statement = self.events_statement(filters=filters, after_seq=after_seq, limit=limit, since=since, until=until)
        return [json.loads(row.body) for row in self._core.execute(statement)]

    def events_statement(self, *, filters: Mapping[str, Any], after_seq: int, limit: int,
                         since: datetime | None = None, until: datetime | None = None) -> Any:
        """The SELECT of :meth:`query_events` (each condition on a body index, migration 0012)."""
        statement = (core_select(_EVENTS.c.body).where(_EVENTS.c.seq > after_seq).order_by(_EVENTS.c.seq)
                     .limit(limit))
        filtered = False
        for name, value in filters.items():
            if value is not None:
                statement = statement.where(self._body_field(EVENT_FILTER_FIELDS[name]) == value)
                filtered = True
        window = []
        if since is not None:
            window.append(self._body_field("time") >= issuance_log.log_time(since))
        if until is not None:
            window.append(self._body_field("time") < issuance_log.log_time(until))
        if since is not None and until is not None and not filtered and not after_seq:
            # NOTE: the first page of a time window alone: its entries come from its time index: the first seq that
            # has a time in it bounds the walk in seq order from below (exact: no entry before it is in the window,
            # whatever order the replicas' clocks gave the times).  Without it the planner walks seq order from
            # the start of the log, reading every body before the window.  The OFFSET keeps the subquery on the
            # time index.  Not for an open window (``since`` only: report, export) nor for later pages, which
            # start at their after_seq: there the planner would read every body of the window to find its first
            # seq; not with another filter either, whose index leads.
            in_window = core_select(_EVENTS.c.seq).where(*window).offset(literal_column("0")).subquery("in_window")
            statement = statement.where(_EVENTS.c.seq >= core_select(func.min(in_window.c.seq)).scalar_subquery())
        return statement.where(*window)

    def _body_field(self, name: str) -> Any:
        """A top-level string member of the stored entry body, as SQL.

        NOTE: the member's name is written into the SQL, not bound: the expression must be the one the
        body indexes are built on (migration 0012), and a bound name would not match them.  Names come
        from BODY_FIELDS only."""
        if name not in BODY_FIELDS:
            raise ValueError(f"not a body field reviewers filter by: {name!r}")
        if self._postgres:
            # NOTE: the \u0000 escape (older entries may hold it; JSONB refuses it) is read as \ufffd, as in the
            # indexes of migration 0012: the same expression, word for word.
            body = func.replace(_EVENTS.c.body, literal_column("'\\u0000'"), literal_column("'\\ufffd'"))
            return func.jsonb_extract_path_text(cast(body, JSONB), literal_column(f"'{name}'"))
        return func.json_extract(_EVENTS.c.body, literal_column(f"'$.{name}'"))

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

    def log_figures(self) -> LogFigures:
        """The dashboard's aggregate queries, in this unit of work."""
        return LogFigures(self.session)

    def stored_entry_lines(self, *, from_seq: int) -> list[bytes]:
        """The stored lines (canonical JSON, what was hashed) of every entry from ``from_seq`` on, by seq."""
        rows = self._core.execute(core_select(_EVENTS.c.body).where(_EVENTS.c.seq >= from_seq)
                                  .order_by(_EVENTS.c.seq))
        return [row.body.encode("utf-8") for row in rows]


def _checkpoint(row: Any) -> issuance_log.Checkpoint:
    return issuance_log.Checkpoint(seq=row.seq, head_hash=row.head_hash, time=row.time, key_id=row.key_id,
                                   signature=row.signature, prev_checkpoint=row.prev_checkpoint)
