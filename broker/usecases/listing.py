"""What a principal can list of its own: its requests, and the grants (issued sessions) it may see.

* ``my_requests``: requests the principal made, or that an agent made acting for it; newest first.
* ``visible_grants``: admins and reviewers see every grant; anyone else the grants issued to it or to an agent
  acting for it.  Live (unexpired, unrevoked) ones unless expired ones are asked for too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from broker.domain.principals import Principal, Role
from broker.domain.records import Grant
from broker.domain.requests import RequestStatus
from broker.domain.times import as_utc, iso
from broker.errors import InvalidInput
from broker.ports import Clock, Store
from broker.usecases.issuance import BrokerService

MAX_LISTED = 200


def my_requests(service: BrokerService, principal: Principal, *, statuses: Sequence[str] | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
    for status in statuses or ():
        if status not in {s.value for s in RequestStatus}:
            raise InvalidInput(f"status is one of {', '.join(s.value for s in RequestStatus)}", code="invalid_status",
                               field="status")
    limit = max(1, min(int(limit), MAX_LISTED))
    with service.database.read() as repo:
        rows = repo.list_requests(statuses=statuses, requester=principal.id, limit=limit)
        rows += repo.list_requests(statuses=statuses, acts_for=principal.id, limit=limit)
        unique = {row.id: row for row in rows}
        newest = sorted(unique.values(), key=lambda r: r.created_at, reverse=True)[:limit]
        views = []
        for row in newest:
            grant = repo.grant_for_request(row.id)
            view = service.request_view(row)
            view.pop("blast_radius", None)
            view["grant_id"] = grant.id if grant is not None else None
            views.append(view)
        return views


def grant_summary(grant: Grant, now: datetime) -> dict[str, Any]:
    expiration = as_utc(grant.expiration)
    status = "revoked" if grant.revoked_at is not None else ("expired" if expiration <= now else "live")
    return {"id": grant.id, "request_id": grant.request_id, "access_key_id": grant.access_key_id,
            "agent": grant.agent, "acts_for": grant.acts_for, "template": grant.template,
            "environment": grant.environment, "role_arn": grant.role_arn, "issued_at": iso(grant.issued_at),
            "expiration": iso(grant.expiration), "revoked_at": iso(grant.revoked_at),
            "revoked_by": grant.revoked_by, "status": status}


def visible_grants(database: Store, clock: Clock, principal: Principal, *, agent: str | None = None,
                   access_key_id: str | None = None, include_expired: bool = False) -> list[dict[str, Any]]:
    now = clock.now()
    sees_all = principal.has_role(Role.ADMIN) or principal.has_role(Role.REVIEWER)
    with database.read() as repo:
        rows = repo.find_grants(agent=agent, access_key_id=access_key_id,
                                live_at=None if include_expired else now,
                                revoked=None if include_expired else False)
    if not sees_all:
        rows = [g for g in rows if principal.id in (g.agent, g.acts_for)]
    return [grant_summary(g, now) for g in rows[-MAX_LISTED:]]


__all__ = ["grant_summary", "my_requests", "visible_grants"]
