"""Requests after they are made: reading one (only its requester, the human it acts for, approvers and
reviewers see it), the approvers' pending list, cancelling, and expiring what waited too long.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from broker.domain.events import EventType
from broker.domain.principals import Principal, Role
from broker.domain.requests import RequestStatus, require_status
from broker.domain.times import as_utc
from broker.errors import Conflict, Forbidden, InvalidInput, RequestNotFound
from broker.domain.records import CredentialRequest
from broker.ports import Clock, Notifier, Store, UnitOfWork
from broker.usecases.views import grant_view

# The approvers' pending list: a page's default and largest size, and how deep it may page.
PENDING_PAGE = 100
PENDING_PAGE_MAX = 500
PENDING_OFFSET_MAX = 100_000


class RequestLifecycle:
    """Reads, cancel and expiry (a part of ``BrokerService``)."""

    clock: Clock
    database: Store
    notifier: Notifier

    def cancel(self, *, principal: Principal, request_id: str) -> dict[str, Any]:
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        with self.database.transaction() as repo:
            row = self._visible_request(repo, principal, request_id, for_update=True)
            if principal.id != row.requester and not principal.has_role(Role.ADMIN):
                raise Forbidden("only the requester can cancel a request", code="not_requester")
            # NOTE: an expiry found here is committed; the refusal is raised after the unit of work.
            expired = self._expire_if_stale(repo, row, now, outbox)
            if not expired:
                require_status(RequestStatus(row.status), [RequestStatus.PENDING, RequestStatus.APPROVED],
                               action="cancel")
                repo.transition_request(row.id,
                                        from_statuses=[RequestStatus.PENDING.value, RequestStatus.APPROVED.value],
                                        to_status=RequestStatus.CANCELLED.value, updated_at=now)
                row = replace(row, status=RequestStatus.CANCELLED.value, updated_at=now)
                repo.append_event(self._event(EventType.CANCELLED, row, actor=principal.id, now=now))
                view = self.request_view(row, approvals=self._approval_list(repo, row.id))
        self._send(outbox)
        if expired:
            raise Conflict("the request expired", code="request_expired")
        return view

    def _expire_if_stale(self, repo: UnitOfWork, row: CredentialRequest, now: datetime,
                         outbox: list[tuple[str, dict[str, Any]]]) -> CredentialRequest | None:
        """Expire ``row`` if its deadline passed; the notification waits in ``outbox`` until the commit.

        None if it had not; else the request as expired (or as read, when another unit of work moved it first)."""
        deadline = {RequestStatus.PENDING.value: row.pending_expires_at,
                    RequestStatus.APPROVED.value: row.redeem_by}.get(row.status)
        if deadline is None or as_utc(deadline) > now:
            return None
        if repo.transition_request(row.id, from_statuses=[row.status], to_status=RequestStatus.EXPIRED.value,
                                   updated_at=now):
            previous = row.status
            row = replace(row, status=RequestStatus.EXPIRED.value, updated_at=now)
            repo.append_event(self._event(EventType.EXPIRED, row, actor="broker", now=now, details={"was": previous}))
            outbox.append((EventType.EXPIRED, self.request_view(row)))
        return row

    def _send(self, outbox: list[tuple[str, dict[str, Any]]]) -> None:
        """Notifications for committed changes only (call after the unit of work)."""
        for event, view in outbox:
            self.notifier.notify(event=event, request=view)

    def expire_stale(self) -> int:
        """Sweep: expire pending requests past their wait and approved ones not redeemed in time."""
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        with self.database.transaction() as repo:
            expired = sum(self._expire_if_stale(repo, row, now, outbox) is not None
                          for row in repo.stale_requests(now=now))
        self._send(outbox)
        return expired

    def get_request(self, *, principal: Principal, request_id: str) -> dict[str, Any]:
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        with self.database.transaction() as repo:
            row = self._visible_request(repo, principal, request_id)
            row = self._expire_if_stale(repo, row, now, outbox) or row
            grant = repo.grant_for_request(row.id)
            view = self.request_view(row, approvals=self._approval_list(repo, row.id))
            if grant is not None:
                view["grant"] = grant_view(grant, ttl_seconds=row.ttl_seconds)
        self._send(outbox)
        return view

    def list_pending(self, *, principal: Principal, offset: int = 0, limit: int = PENDING_PAGE) -> dict[str, Any]:
        """One page of the requests waiting for co-signers, newest first, with the totals: how many wait in
        all (``total``) and per agent (``by_agent``, most first), and where the next page starts."""
        if not (principal.has_role(Role.APPROVER) or principal.has_role(Role.ADMIN)
                or principal.has_role(Role.REVIEWER)):
            raise Forbidden("only approvers can list pending requests", code="not_an_approver")
        if not 1 <= limit <= PENDING_PAGE_MAX:
            raise InvalidInput(f"limit must be between 1 and {PENDING_PAGE_MAX}", code="invalid_limit", field="limit")
        if not 0 <= offset <= PENDING_OFFSET_MAX:
            raise InvalidInput(f"offset must be between 0 and {PENDING_OFFSET_MAX}", code="invalid_offset",
                               field="offset")
        self.expire_stale()
        with self.database.read() as repo:
            by_agent = repo.count_requests_by_requester(statuses=[RequestStatus.PENDING.value])
            rows = repo.list_requests(statuses=[RequestStatus.PENDING.value], limit=limit, offset=offset)
            views = [self.request_view(r, approvals=self._approval_list(repo, r.id)) for r in rows]
        total = sum(by_agent.values())
        following = offset + len(views)
        return {"requests": views, "total": total, "offset": offset, "limit": limit,
                "next_offset": following if following < total else None, "by_agent": by_agent}

    def _visible_request(self, repo: UnitOfWork, principal: Principal, request_id: str, *,
                         for_update: bool = False) -> CredentialRequest:
        row = repo.get_request(str(request_id)[:64], for_update=for_update)
        visible = row is not None and (
            principal.id in (row.requester, row.acts_for)
            or principal.has_role(Role.APPROVER) or principal.has_role(Role.REVIEWER) or principal.has_role(Role.ADMIN)
        )
        if not visible:
            # NOTE: same answer for "absent" and "not yours": ids are not an oracle.
            raise RequestNotFound("no such request", field="id")
        return row


__all__ = ["PENDING_OFFSET_MAX", "PENDING_PAGE", "PENDING_PAGE_MAX", "RequestLifecycle"]
