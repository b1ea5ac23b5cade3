"""The kill switch: an admin locks down an environment (or all of them) so no new credentials are issued there,
and lifting it takes a second, different admin.  The lockdown gates both paths that mint (a new request and
redeeming an approved one) inside the unit of work that commits to minting.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from broker.domain.events import EventType, log_entry
from broker.domain.principals import Principal, Role
from broker.domain.requests import clean_reason
from broker.domain.templates import Environment, ScopeTemplate
from broker.domain.times import iso, parse_time
from broker.errors import Conflict, Forbidden, InvalidInput
from broker.ports import Clock, Store, UnitOfWork

LOCKDOWN_KEY = "lockdown:{scope}"
LIFT_KEY = "lockdown-lift:{scope}"
# A lockdown covers one environment, or every environment at once.
ALL_ENVIRONMENTS = "all"
LOCKDOWN_SCOPES = (*(e.value for e in Environment), ALL_ENVIRONMENTS)


def _lockdown_entry(kind: EventType, *, now: datetime, actor: str, source_ip: str | None,
                    **details: Any) -> dict[str, Any]:
    return log_entry(kind, now=now, actor=actor, source_ip=source_ip, details=details)


class Lockdown:
    """Lock down, lift (two admins), read, and the gate (a part of ``RevocationService``)."""

    database: Store
    clock: Clock
    lift_request_seconds: int

    def lockdown(self, *, principal: Principal, environment: str, reason: str,
                 source_ip: str | None = None) -> dict[str, Any]:
        reason = clean_reason(reason)
        scope = self._admin_scope(principal, environment, source_ip=source_ip, action="lockdown")
        now = self.clock.now()
        with self.database.transaction() as repo:
            repo.lock_log_head()
            if repo.get_setting(LOCKDOWN_KEY.format(scope=scope)) is not None:
                raise Conflict(f"'{scope}' is already locked down", code="already_locked_down")
            state = {"environment": scope, "by": principal.id, "reason": reason, "at": iso(now)}
            repo.set_setting(LOCKDOWN_KEY.format(scope=scope), json.dumps(state), now=now)
            repo.set_setting(LIFT_KEY.format(scope=scope), None, now=now)
            repo.append_event(_lockdown_entry(EventType.LOCKDOWN, now=now, actor=principal.id, source_ip=source_ip,
                                     environment=scope, reason=reason))
        return {**state, "status": "locked"}

    def lift_lockdown(self, *, principal: Principal, environment: str, reason: str,
                      source_ip: str | None = None) -> dict[str, Any]:
        """First admin: requests the lift.  A *different* admin: confirms it, and the lockdown ends."""
        reason = clean_reason(reason)
        scope = self._admin_scope(principal, environment, source_ip=source_ip, action="lockdown_lift")
        now = self.clock.now()
        with self.database.transaction() as repo:
            repo.lock_log_head()
            locked = repo.get_setting(LOCKDOWN_KEY.format(scope=scope))
            if locked is None:
                raise Conflict(f"'{scope}' is not locked down", code="not_locked_down")
            pending = self._pending_lift(repo, scope, now)
            if pending is None:
                lift = {"environment": scope, "requested_by": principal.id, "reason": reason, "at": iso(now),
                        "expires_at": iso(now + timedelta(seconds=self.lift_request_seconds))}
                repo.set_setting(LIFT_KEY.format(scope=scope), json.dumps(lift), now=now)
                repo.append_event(_lockdown_entry(EventType.LOCKDOWN_LIFT_REQUESTED, now=now, actor=principal.id,
                                         source_ip=source_ip, environment=scope, reason=reason))
                return {**lift, "status": "lift_requested"}
            if pending["requested_by"] == principal.id:
                raise Conflict("a second, different admin must confirm the lift", code="second_admin_required")
            repo.set_setting(LOCKDOWN_KEY.format(scope=scope), None, now=now)
            repo.set_setting(LIFT_KEY.format(scope=scope), None, now=now)
            repo.append_event(_lockdown_entry(EventType.LOCKDOWN_LIFTED, now=now, actor=principal.id, source_ip=source_ip,
                                     environment=scope, requested_by=pending["requested_by"],
                                     request_reason=pending["reason"], confirmed_by=principal.id, reason=reason,
                                     lockdown=json.loads(locked)))
        return {"environment": scope, "status": "lifted", "requested_by": pending["requested_by"],
                "confirmed_by": principal.id}

    def _pending_lift(self, repo: UnitOfWork, scope: str, now: datetime) -> dict[str, Any] | None:
        raw = repo.get_setting(LIFT_KEY.format(scope=scope))
        if raw is None:
            return None
        pending = json.loads(raw)
        expires = parse_time(pending["expires_at"])
        return pending if expires > now else None

    def _admin_scope(self, principal: Principal, environment: str, *, source_ip: str | None, action: str) -> str:
        if not principal.has_role(Role.ADMIN):
            error = Forbidden("only admins may lock down or lift a lockdown", code="admin_required")
            self._log_failure(EventType.REFUSED, principal_id=principal.id, source_ip=source_ip, action=action,
                              error=error)
            raise error
        if environment not in LOCKDOWN_SCOPES:
            raise InvalidInput(f"environment must be one of {', '.join(LOCKDOWN_SCOPES)}",
                               code="invalid_environment", field="environment")
        return environment

    def lockdowns(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        with self.database.transaction() as repo:
            states = []
            for scope in LOCKDOWN_SCOPES:
                raw = repo.get_setting(LOCKDOWN_KEY.format(scope=scope))
                if raw is not None:
                    states.append({**json.loads(raw), "lift_request": self._pending_lift(repo, scope, now)})
            return states

    # ------------------------------------------------------------------ the gate
    @staticmethod
    def check_lockdown(repo: UnitOfWork, environment: str) -> None:
        keys = {LOCKDOWN_KEY.format(scope=scope): scope for scope in (environment, ALL_ENVIRONMENTS)}
        # NOTE: read under the log's lock (every lockdown commits under it): a lockdown commits before this read
        # or after this unit of work.  Both switches in one query.
        locked = repo.get_settings(list(keys), lock_log=True)
        for key, scope in keys.items():
            if key in locked:
                raise Forbidden(f"new credentials for '{environment}' are locked down by an administrator",
                                code="environment_locked", details={"environment": scope})

    def lockdown_gate(self, repo: UnitOfWork, principal: Principal, template: ScopeTemplate,  # noqa: ARG002
                      now: datetime) -> None:  # noqa: ARG002
        """``IssuanceGate``: refuses every new request for a locked-down environment."""
        self.check_lockdown(repo, template.environment.value)


__all__ = ["ALL_ENVIRONMENTS", "LIFT_KEY", "LOCKDOWN_KEY", "LOCKDOWN_SCOPES", "Lockdown"]
