"""Repository: every query the use cases need.  It never commits (the unit of work does)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.identity.authenticator import ApiKeyRecord
from broker.storage.models import (ApiKeyRow, ApprovalRow, CheckpointRow, EventRow, GrantRow, LogHeadRow,
                                   MintIntentRow, PrincipalRow, RequestRow, SettingRow)


class Repository:
    def __init__(self, session: Session, *, postgres: bool) -> None:
        self.session = session
        self._postgres = postgres

    # --- principals and keys ------------------------------------------------------------
    def get_principal(self, principal_id: str) -> Principal | None:
        row = self.session.get(PrincipalRow, principal_id)
        if row is None or row.disabled:
            return None
        return Principal(id=row.id, roles=frozenset(Role(r) for r in json.loads(row.roles)),
                         acts_for=row.acts_for, groups=frozenset(json.loads(row.groups)))

    def is_principal_disabled(self, principal_id: str) -> bool:
        row = self.session.get(PrincipalRow, principal_id)
        return row is not None and bool(row.disabled)

    def upsert_principal(self, *, principal_id: str, roles: Sequence[str], groups: Sequence[str] = (),
                         acts_for: str | None = None, now: datetime) -> None:
        row = self.session.get(PrincipalRow, principal_id)
        if row is None:
            row = PrincipalRow(id=principal_id, created_at=now)
        row.roles = json.dumps(sorted(set(roles)))
        row.groups = json.dumps(sorted(set(groups)))
        row.acts_for = acts_for
        row.disabled = False
        self.session.add(row)

    def disable_principal(self, principal_id: str) -> bool:
        row = self.session.get(PrincipalRow, principal_id)
        if row is None:
            return False
        row.disabled = True
        self.session.add(row)
        return True

    def add_api_key(self, *, key_id: str, token_hash: str, principal_id: str, now: datetime) -> None:
        self.session.add(ApiKeyRow(key_id=key_id, token_hash=token_hash, principal_id=principal_id, created_at=now))

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self.session.get(ApiKeyRow, key_id)
        if row is None:
            return None
        return ApiKeyRecord(key_id=row.key_id, token_hash=row.token_hash, principal_id=row.principal_id,
                            revoked=row.revoked)

    # --- requests -------------------------------------------------------------------------
    def add_request(self, row: RequestRow) -> None:
        self.session.add(row)

    def get_request(self, request_id: str, *, for_update: bool = False) -> RequestRow | None:
        statement = select(RequestRow).where(RequestRow.id == request_id)
        if for_update and self._postgres:
            statement = statement.with_for_update()
        return self.session.exec(statement).first()

    def transition_request(self, request_id: str, *, from_statuses: Sequence[str], to_status: str,
                           **values: Any) -> bool:
        """Conditional update: moves the request only if it is still in one of ``from_statuses``.

        Exactly one of many concurrent callers wins (the database decides, not a read-then-write).
        """
        result = self.session.execute(
            update(RequestRow)
            .where(col(RequestRow.id) == request_id, col(RequestRow.status).in_(list(from_statuses)))
            .values(status=to_status, **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def list_requests(self, *, statuses: Sequence[str] | None = None, requester: str | None = None,
                      limit: int = 100) -> list[RequestRow]:
        statement = select(RequestRow).order_by(col(RequestRow.created_at).desc()).limit(limit)
        if statuses:
            statement = statement.where(col(RequestRow.status).in_(list(statuses)))
        if requester:
            statement = statement.where(RequestRow.requester == requester)
        return list(self.session.exec(statement))

    def stale_requests(self, *, now: datetime) -> list[RequestRow]:
        pending = select(RequestRow).where(RequestRow.status == "pending", col(RequestRow.pending_expires_at) < now)
        approved = select(RequestRow).where(RequestRow.status == "approved", col(RequestRow.redeem_by) < now)
        return list(self.session.exec(pending)) + list(self.session.exec(approved))

    # --- approvals ------------------------------------------------------------------------
    def add_approval(self, row: ApprovalRow) -> None:
        self.session.add(row)

    def approvals_for(self, request_id: str) -> list[ApprovalRow]:
        return list(self.session.exec(select(ApprovalRow).where(ApprovalRow.request_id == request_id)
                                      .order_by(col(ApprovalRow.id))))

    def has_decided(self, request_id: str, approver: str) -> bool:
        statement = select(ApprovalRow).where(ApprovalRow.request_id == request_id, ApprovalRow.approver == approver)
        return self.session.exec(statement).first() is not None

    # --- grants and mint intents ----------------------------------------------------------
    def add_intent(self, row: MintIntentRow) -> None:
        self.session.add(row)

    def resolve_intent(self, grant_id: str) -> None:
        self.session.execute(update(MintIntentRow).where(col(MintIntentRow.grant_id) == grant_id)
                             .values(resolved=True).execution_options(synchronize_session=False))

    def unresolved_intents(self) -> list[MintIntentRow]:
        return list(self.session.exec(select(MintIntentRow).where(MintIntentRow.resolved == False)))  # noqa: E712

    def add_grant(self, row: GrantRow) -> None:
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

    def count_live_grants(self, *, agent: str | None = None, template: str | None = None, now: datetime) -> int:
        statement = select(func.count()).select_from(GrantRow).where(col(GrantRow.expiration) > now,
                                                                     col(GrantRow.revoked_at).is_(None))
        if agent is not None:
            statement = statement.where(GrantRow.agent == agent)
        if template is not None:
            statement = statement.where(GrantRow.template == template)
        return int(self.session.exec(statement).one())

    def count_requests_since(self, *, since: datetime, requester: str | None = None,
                             template: str | None = None) -> int:
        statement = select(func.count()).select_from(RequestRow).where(col(RequestRow.created_at) >= since)
        if requester is not None:
            statement = statement.where(RequestRow.requester == requester)
        if template is not None:
            statement = statement.where(RequestRow.template == template)
        return int(self.session.exec(statement).one())

    # --- settings (lockdown) --------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self.session.get(SettingRow, key)
        return None if row is None else row.value

    def get_settings(self, keys: Sequence[str]) -> dict[str, str]:
        """Several settings in one query (absent keys are left out)."""
        rows = self.session.exec(select(SettingRow).where(col(SettingRow.key).in_(list(keys))))
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
    def _lock_head(self) -> LogHeadRow:
        # The head row is created by migration 0004; a database without it is not migrated: fail closed.
        statement = select(LogHeadRow).where(LogHeadRow.id == 1)
        if self._postgres:
            # NOTE: serializes appends across broker replicas; held until this unit of work commits.
            statement = statement.with_for_update()
        return self.session.exec(statement).one()

    def append_event(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Seal and append one entry in this unit of work (committed with the state change)."""
        head = self._lock_head()
        entry = issuance_log.seal_entry(body, seq=head.seq + 1, prev_hash=head.hash)
        self.session.add(EventRow(
            seq=entry["seq"], event_id=entry["event_id"], time=_parse_time(entry["time"]), type=entry["type"],
            request_id=entry.get("request_id"), grant_id=entry.get("grant_id"), actor=entry.get("actor"),
            acts_for=entry.get("acts_for"), template=entry.get("template"),
            access_key_id=entry.get("access_key_id"),
            body=issuance_log.entry_line(entry).decode("utf-8"), prev_hash=entry["prev_hash"], hash=entry["hash"],
        ))
        head.seq, head.hash = entry["seq"], entry["hash"]
        self.session.add(head)
        # Flush now so a conflicting head insert (two first appends) fails inside this unit of work.
        self.session.flush()
        return entry

    def log_head(self) -> tuple[int, str]:
        head = self.session.get(LogHeadRow, 1)
        return (0, issuance_log.GENESIS_HASH) if head is None else (head.seq, head.hash)

    def query_events(self, *, filters: Mapping[str, Any], after_seq: int = 0, limit: int = 100,
                     since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
        statement = select(EventRow).where(col(EventRow.seq) > after_seq).order_by(col(EventRow.seq)).limit(limit)
        columns = {"agent": EventRow.actor, "human": EventRow.acts_for, "template": EventRow.template,
                   "type": EventRow.type, "request_id": EventRow.request_id, "access_key_id": EventRow.access_key_id,
                   "actor": EventRow.actor, "grant_id": EventRow.grant_id}
        for name, value in filters.items():
            if value is not None:
                statement = statement.where(columns[name] == value)
        if since is not None:
            statement = statement.where(col(EventRow.time) >= since)
        if until is not None:
            statement = statement.where(col(EventRow.time) < until)
        return [json.loads(row.body) for row in self.session.exec(statement)]

    def add_checkpoint(self, checkpoint: issuance_log.Checkpoint) -> None:
        self.session.merge(CheckpointRow(seq=checkpoint.seq, head_hash=checkpoint.head_hash, time=checkpoint.time,
                                         key_id=checkpoint.key_id, signature=checkpoint.signature))

    def latest_checkpoint(self) -> issuance_log.Checkpoint | None:
        row = self.session.exec(select(CheckpointRow).order_by(col(CheckpointRow.seq).desc())).first()
        if row is None:
            return None
        return issuance_log.Checkpoint(seq=row.seq, head_hash=row.head_hash, time=row.time, key_id=row.key_id,
                                       signature=row.signature)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
