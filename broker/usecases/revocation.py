"""Use cases: revoke a grant, revoke everything (agent / template / role), lockdown, orphans.

Who may do what (decided here, enforced here):

=====================  =========================================================================
action                 allowed
=====================  =========================================================================
revoke one grant       an admin; the human the grant's agent acts for; the agent itself (giving
                       up its own credentials only ever reduces access)
revoke-all --agent     an admin; the human that agent acts for
revoke-all --template  an admin
revoke-all --role      an admin
lockdown / lift        admins only; lifting needs two *different* admins (request, then confirm)
read lockdown state    any authenticated principal (agents learn why they are refused)
=====================  =========================================================================

Reviewers and approvers read; they do not revoke (unless they are the accountable human).

How it reaches AWS: the record of what is revoked lives in the database (``broker_settings``
key ``revocations``, plus ``grants.revoked_at``); each target role carries the deny policy
:func:`broker.domain.revocation.fit_revocation_policy` derives from it.  Every change is planned from
a read, written to IAM under the role's own lock (``Store.exclusive``: never under the log's lock,
so a slow IAM stalls no issuance), then recorded, with its log entry, in one unit of work under the
log's lock, which checks that IAM has what the record now calls for (and writes again if not).  If
IAM refuses the write, nothing is recorded, a ``revocation_failed`` entry is logged and the caller
gets 503 (``revocation_unavailable``): a revocation is never reported done unless AWS has the deny.
(If the commit fails after the IAM write, AWS denies a little more than the record says until the
next sync: fail closed.)  When a role's session entries no longer fit IAM's inline policy limit, an
"issued before now" deny takes their place (``revoked_all`` entry with actor ``broker``, the grants it
also denies revoked): only a role whose other inline policies leave no room for even that answers
422 ``revocation_policy_too_large``.  :meth:`RevocationService.sweep` reconciles orphans and prunes
entries whose credentials have expired; it runs at start-up and every minute (backing off while IAM
fails); ``POST /v1/revocations/sync`` (admin) runs the same two steps at once.

Orphans: a mint intent still unresolved ``orphan_grace_seconds`` after it was written means
STS may have issued credentials the broker never recorded (a crash or a failed log write
between STS and unit of work B, or an STS call whose outcome is unknown).  At start-up, the
orphan is logged (``orphaned``), its request marked failed and its session denied by the
grant-id tag the broker set on ``AssumeRole``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from broker.domain import revocation as rules
from broker.domain.events import EventType, log_entry
from broker.domain.principals import Principal, Role
from broker.domain.records import Grant
from broker.domain.requests import RequestStatus, clean_reason
from broker.domain.sts_rules import source_identity_for
from broker.domain.templates import STS_MAX_DURATION, ScopeTemplate
from broker.errors import (BrokerError, Conflict, Forbidden, InvalidInput, NotFound, PolicyTooLarge,
                           StorageUnavailable, Unavailable)
from broker.ports import Clock, DenyPolicyStore, Store, TemplateSource, UnitOfWork
from broker.usecases.lockdown import Lockdown
from broker.usecases.refusal_budget import RefusalBudget
from broker.usecases.refusal_log import append_refusal
from broker.usecases.views import grant_view
from broker.domain.times import as_utc, iso

log = logging.getLogger("broker.revocation")

REVOCATIONS_KEY = "revocations"


@dataclass
class Change:
    """What one revocation action does: the entries it adds, the roles whose policy must be rewritten, its log
    entries, its answer, and ``record``: its database writes (done only under the log's lock)."""

    roles: set[str]
    events: list[dict[str, Any]]
    view: dict[str, Any]
    entries: list[rules.RevocationEntry] = field(default_factory=list)
    record: Callable[[UnitOfWork], None] = lambda _repo: None


class _StateMoved(Exception):
    """What was written to IAM is not what the record now calls for: write again (see ``_apply``)."""


# How often ``_apply`` writes again when the record moved between the IAM write and the log's lock.
APPLY_ATTEMPTS = 3
# The sweep's pause after IAM failed (seconds): doubled on each failure in a row, up to the maximum.
IAM_BACKOFF_FIRST, IAM_BACKOFF_MAX = 5.0, 300.0


@dataclass
class IamBackoff:
    """After IAM failed, the periodic sweep leaves it alone for a while (5 s, doubling, at most 5 min): a
    failing IAM is not hammered, and the log gets one ``revocation_failed`` entry per attempt, not per orphan
    per minute.  Admin actions always try (their caller is waiting for the answer)."""

    monotonic: Callable[[], float] = time.monotonic
    failures: int = 0
    retry_at: float = 0.0

    def due(self) -> bool:
        return self.monotonic() >= self.retry_at

    def failed(self) -> float:
        self.failures += 1
        pause = min(IAM_BACKOFF_MAX, IAM_BACKOFF_FIRST * 2 ** (self.failures - 1))
        self.retry_at = self.monotonic() + pause
        return pause

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0


def _event(kind: EventType, *, now: datetime, actor: str, acts_for: str | None = None, source_ip: str | None = None,
           grant: Grant | None = None, reason_code: str | None = None, **details: Any) -> dict[str, Any]:
    body = log_entry(kind, now=now, actor=actor, acts_for=acts_for, source_ip=source_ip, reason_code=reason_code,
                     details=details)
    if grant is not None:
        body.update(request_id=grant.request_id, grant_id=grant.id, template=grant.template,
                    policy_digest=grant.policy_digest, access_key_id=grant.access_key_id,
                    expiration=iso(grant.expiration))
    return body


@dataclass(frozen=True)
class _FittedRole:
    fit: rules.FittedPolicy
    room: int              # what IAM left for the policy when it was measured


# The revoke-all target a fallback deny's scope is logged as (the names of POST /v1/revocations).
FALLBACK_TARGETS = {rules.RevokeScope.ROLE: "role_arn", rules.RevokeScope.AGENT: "source_identity",
                    rules.RevokeScope.TEMPLATE: "template"}


@dataclass
class RevocationService(Lockdown):
    database: Store
    catalog: TemplateSource
    revoker: DenyPolicyStore
    clock: Clock
    orphan_grace_seconds: int = 60
    lift_request_seconds: int = 3600
    # Shared with BrokerService: one principal's refusals count once, whichever use case refused.
    refusal_budget: RefusalBudget = field(default_factory=RefusalBudget.disabled)
    iam_backoff: IamBackoff = field(default_factory=IamBackoff)
    # Raises (503) when this replica must make no time decisions (its clock is off the database's): the sweep
    # then neither reconciles orphans (it would take over another replica's issuances) nor prunes entries.
    time_check: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ the unit of work
    def _apply(self, *, principal_id: str, source_ip: str | None, action: str,
               plan: Callable[[UnitOfWork, list[rules.RevocationEntry], datetime], Change],
               precheck: Callable[[UnitOfWork], None] | None = None, now: datetime | None = None) -> dict[str, Any]:
        """Plan, write the deny to IAM, then record it under the log's lock.

        The IAM calls happen outside the log's lock (and outside any write transaction), so a slow or hanging
        IAM stalls no issuance; the roles' own locks (``Store.exclusive``) keep two revocations of one role
        from writing its policy at once.  Fail closed: nothing is recorded unless IAM took the deny; if the
        record moved in between (``plan`` decides differently under the lock), the policy is written again.
        """
        now = now or self.clock.now()
        try:
            if precheck is not None:
                # NOTE: who may do this is decided from a read first, so a refused caller (one flooding, say) never
                # takes a lock; ``plan`` decides again under the log's lock, where it counts.
                with self.database.read() as repo:
                    precheck(repo)
            with self.database.read() as repo:
                roles = set(plan(repo, self._load(repo), now).roles)
            for _attempt in range(APPLY_ATTEMPTS):
                with self.database.exclusive(f"revocation-policy:{role}" for role in roles):
                    with self.database.read() as repo:
                        change = plan(repo, self._load(repo), now)
                        fitted = self._fit(repo, change, now, rooms={})
                    if not change.roles <= roles:
                        roles |= change.roles   # the plan reaches a role not locked: lock it too, and plan again
                        continue
                    rooms = {role: f.room for role, f in fitted.items()}
                    for role in sorted(change.roles):
                        self.revoker.write_deny_policy(role_arn=role, policy_json=fitted[role].fit.policy.json)
                    try:
                        view = self._record(plan, now, fitted, rooms)
                    except _StateMoved:
                        continue
                    break
            else:
                raise Unavailable("the revocation record kept changing while IAM was written; try again",
                                  code="revocation_unavailable")
        except StorageUnavailable:
            raise
        except Forbidden as exc:
            self._log_failure(EventType.REFUSED, principal_id=principal_id, source_ip=source_ip, action=action,
                              error=exc)
            raise
        except (Unavailable, PolicyTooLarge) as exc:
            self._log_failure(EventType.REVOCATION_FAILED, principal_id=principal_id, source_ip=source_ip,
                              action=action, error=exc)
            raise
        return view

    def _fit(self, repo: UnitOfWork, change: Change, now: datetime, *, rooms: dict[str, int]) -> dict[str, _FittedRole]:
        """The policy of each role the change touches; IAM is asked for a role's room unless ``rooms`` has it."""
        entries = rules.merge_revoke_all(rules.live_entries([*self._load(repo), *change.entries], now=now))
        fitted = {}
        for role in sorted(change.roles):
            room = rooms[role] if role in rooms else self.revoker.deny_policy_room(role_arn=role)
            longest = self._expiry_for_role(role, now) - now
            fitted[role] = _FittedRole(fit=rules.fit_revocation_policy(role, entries, now=now, room=room,
                                                                        longest_session=longest), room=room)
        return fitted

    def _record(self, plan, now: datetime, written: dict[str, _FittedRole], rooms: dict[str, int]) -> dict[str, Any]:
        """Under the log's lock: plan again, check IAM has what the record calls for, write the record."""
        if not written:
            with self.database.read() as repo:
                change = plan(repo, self._load(repo), now)
            if not change.roles and not change.events:
                return {**change.view, "policies": []}   # nothing to do (a sweep with no orphans): no lock taken
        with self.database.transaction() as repo:
            repo.lock_log_head()
            change = plan(repo, self._load(repo), now)
            if change.roles != set(written):
                raise _StateMoved()
            fitted = self._fit(repo, change, now, rooms=rooms)
            if any(fitted[role].fit.policy.json != written[role].fit.policy.json for role in fitted):
                raise _StateMoved()
            change.record(repo)
            summary = [{"role_arn": f.fit.policy.role_arn, "chars": f.fit.policy.size, "sessions": f.fit.policy.sessions,
                        "revoke_all": f.fit.policy.revoke_all, "compacted": f.fit.policy.compacted}
                       for f in fitted.values()]
            for body in change.events:
                body["details"]["policies"] = summary
                repo.append_event(body)
            for f in fitted.values():
                for fallback in f.fit.fallbacks:
                    repo.append_event(self._record_fallback(repo, fallback, now, replaced=f.fit.policy.notes))
            # The roles rewritten are stored as written; the others' entries as they were.
            stored = [e for e in [*self._load(repo), *change.entries] if e.role_arn not in fitted]
            for f in fitted.values():
                stored.extend(f.fit.entries)
            self._store(repo, stored, now)
        return {**change.view, "policies": summary}

    @staticmethod
    def _record_fallback(repo: UnitOfWork, fallback: rules.RevokeAll, now: datetime,
                         replaced: Sequence[str]) -> dict[str, Any]:
        """A role's session entries did not fit and a revoke-all took their place: the grants it denies besides
        them are revoked too (the record says what AWS does), and the log says so in a ``revoked_all`` entry."""
        grants = [g for g in repo.find_grants(role_arn=fallback.role_arn, live_at=now, revoked=False)
                  if as_utc(g.issued_at) < fallback.cutoff and (
                      fallback.scope is rules.RevokeScope.ROLE
                      or (fallback.scope is rules.RevokeScope.AGENT and g.source_identity == fallback.value)
                      or (fallback.scope is rules.RevokeScope.TEMPLATE and g.template == fallback.value))]
        for grant in grants:
            repo.save_grant(replace(grant, revoked_at=now, revoked_by="broker"))
        target = FALLBACK_TARGETS[fallback.scope]
        event = _event(EventType.REVOKED_ALL, now=now, actor="broker", reason_code="revocation_policy_full",
                       reason="the role's per-session deny entries no longer fit IAM's inline policy limit",
                       target=target, value=fallback.value or fallback.role_arn, fallback=True, notes=list(replaced),
                       issued_before=rules.iam_time(fallback.cutoff), roles=[fallback.role_arn],
                       grants=[g.id for g in grants])
        if fallback.scope is rules.RevokeScope.TEMPLATE:
            event["template"] = fallback.value
        return event

    def _log_failure(self, kind: EventType, *, principal_id: str, source_ip: str | None, action: str,
                     error: BrokerError) -> None:
        body = _event(kind, now=self.clock.now(), actor=principal_id, source_ip=source_ip, reason_code=error.code,
                      action=action, message=error.message[:300])
        # NOTE: a refusal counts against the principal's refusal budget (see broker.usecases.refusal_budget); a failure
        # (IAM, database) is not the caller's to repeat at will and is always written.
        budget = self.refusal_budget if kind == EventType.REFUSED else RefusalBudget.disabled()
        append_refusal(self.database, budget, principal_id, body)

    @staticmethod
    def _load(repo: UnitOfWork) -> list[rules.RevocationEntry]:
        raw = repo.get_setting(REVOCATIONS_KEY)
        if raw is None:
            return []
        try:
            stored = json.loads(raw)["entries"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput("the stored revocation list is malformed", code="revocation_state_invalid") from exc
        return [rules.entry_from_dict(item) for item in stored]

    @staticmethod
    def _store(repo: UnitOfWork, entries: Sequence[rules.RevocationEntry], now: datetime) -> None:
        value = json.dumps({"entries": [e.to_dict() for e in entries]}, sort_keys=True) if entries else None
        repo.set_setting(REVOCATIONS_KEY, value, now=now)

    def _expiry_for_role(self, role_arn: str, cutoff: datetime) -> datetime:
        """A revoke-all entry lives as long as the longest session the role can have."""
        longest = [t.role_max_session for t in self.catalog.all() if t.role == role_arn]
        return cutoff + timedelta(seconds=max(longest) if longest else STS_MAX_DURATION)

    # ------------------------------------------------------------------ revoke one grant
    def revoke_grant(self, *, principal: Principal, grant_id: str, reason: str,
                     source_ip: str | None = None) -> dict[str, Any]:
        reason = clean_reason(reason)

        def plan(repo: UnitOfWork, _entries: list[rules.RevocationEntry], now: datetime) -> Change:
            grant = repo.get_grant(str(grant_id)[:64])
            self._authorize_grant(principal, grant)
            assert grant is not None
            if grant.revoked_at is not None:
                raise Conflict("this grant is already revoked", code="grant_already_revoked")
            if as_utc(grant.expiration) <= now:
                raise Conflict("this grant's credentials have already expired", code="grant_expired")

            def record(repo: UnitOfWork) -> None:
                repo.save_grant(replace(grant, revoked_at=now, revoked_by=principal.id))

            entry = rules.RevokedSession(role_arn=grant.role_arn, grant_id=grant.id, session_name=grant.session_name,
                                         expires_at=as_utc(grant.expiration), issued_by=as_utc(grant.issued_at),
                                         source_identity=grant.source_identity, template=grant.template)
            event = _event(EventType.REVOKED, now=now, actor=principal.id, acts_for=principal.acts_for,
                           source_ip=source_ip, grant=grant, reason=reason, agent=grant.agent,
                           on_behalf_of=grant.acts_for,
                           role_arn=grant.role_arn, session_name=grant.session_name)
            request = repo.get_request(grant.request_id)
            ttl = request.ttl_seconds if request is not None else 0
            view = {"grant": {**grant_view(grant, ttl_seconds=ttl), "revoked_at": iso(now)}, "status": "revoked",
                    "reason": reason}
            return Change(roles={grant.role_arn}, events=[event], view=view, entries=[entry], record=record)

        return self._apply(principal_id=principal.id, source_ip=source_ip, action="revoke", plan=plan,
                           precheck=lambda repo: self._authorize_grant(principal, repo.get_grant(str(grant_id)[:64])))

    @staticmethod
    def _authorize_grant(principal: Principal, grant: Grant | None) -> None:
        may = grant is not None and (principal.has_role(Role.ADMIN) or principal.id in (grant.agent, grant.acts_for))
        if may:
            return
        if grant is not None and (principal.has_role(Role.REVIEWER) or principal.has_role(Role.APPROVER)):
            raise Forbidden("only an admin, or the human the agent acts for, may revoke this grant",
                            code="not_allowed_to_revoke")
        # NOTE: same answer for "absent" and "not yours": grant ids are not an oracle.
        raise NotFound("no such grant", code="grant_not_found", field="id")

    # ------------------------------------------------------------------ revoke everything
    def revoke_all(self, *, principal: Principal, reason: str, agent: str | None = None, template: str | None = None,
                   role_arn: str | None = None, source_ip: str | None = None) -> dict[str, Any]:
        reason = clean_reason(reason)
        chosen = {k: v for k, v in {"agent": agent, "template": template, "role_arn": role_arn}.items() if v}
        if len(chosen) != 1:
            raise InvalidInput("name exactly one of agent, template or role_arn", code="invalid_revoke_target")
        (target, value), = chosen.items()
        value = str(value)[:2048]

        def plan(repo: UnitOfWork, _entries: list[rules.RevocationEntry], now: datetime) -> Change:
            self._authorize_revoke_all(repo, principal, target, value)
            cutoff = rules.revoke_all_cutoff(now)
            grants = repo.find_grants(live_at=now, revoked=False, **{target: value})
            # Every role where a matching session may still be live (revoked grants' roles included).
            roles = ({g.role_arn for g in repo.find_grants(live_at=now, **{target: value})}
                     | self._intent_roles(repo, target, value))
            if target == "template":
                roles |= self._static_roles(value)
                scope, narrowed = rules.RevokeScope.TEMPLATE, value
            elif target == "agent":
                scope, narrowed = rules.RevokeScope.AGENT, source_identity_for(value)
            else:
                roles.add(value)
                scope, narrowed = rules.RevokeScope.ROLE, None
            entries = [rules.RevokeAll(role_arn=role, scope=scope, value=narrowed, cutoff=cutoff,
                                       expires_at=self._expiry_for_role(role, cutoff)) for role in sorted(roles)]
            revoked = [g for g in grants if as_utc(g.issued_at) < cutoff]

            def record(repo: UnitOfWork) -> None:
                for grant in revoked:
                    repo.save_grant(replace(grant, revoked_at=now, revoked_by=principal.id))

            event = _event(EventType.REVOKED_ALL, now=now, actor=principal.id, acts_for=principal.acts_for,
                           source_ip=source_ip, reason=reason, target=target, value=value,
                           issued_before=rules.iam_time(cutoff), roles=sorted(roles), grants=[g.id for g in grants])
            if target == "template":
                event["template"] = value
            return Change(roles=roles, events=[event], entries=entries, record=record, view={
                "status": "revoked", "target": target, "value": value, "issued_before": rules.iam_time(cutoff),
                "roles": sorted(roles), "grants_revoked": [g.id for g in grants], "reason": reason})

        return self._apply(principal_id=principal.id, source_ip=source_ip, action="revoke_all", plan=plan,
                           precheck=lambda repo: self._authorize_revoke_all(repo, principal, target, value))

    def _authorize_revoke_all(self, repo: UnitOfWork, principal: Principal, target: str, value: str) -> None:
        if principal.has_role(Role.ADMIN):
            if target == "role_arn" and not self._role_is_managed(repo, value):
                raise NotFound("the broker does not manage this role", code="role_not_managed", field="role_arn")
            return
        if target == "agent":
            agent = repo.get_principal(value)
            if agent is not None and agent.acts_for == principal.id:
                return
        raise Forbidden("revoking everything needs an admin (or, for an agent, the human it acts for)",
                        code="not_allowed_to_revoke")

    def _role_is_managed(self, repo: UnitOfWork, role_arn: str) -> bool:
        return role_arn in self._static_roles(None) or bool(repo.find_grants(role_arn=role_arn))

    def _static_roles(self, template_name: str | None) -> set[str]:
        templates: list[ScopeTemplate] = self.catalog.all()
        return {t.role for t in templates if (template_name is None or t.name == template_name)
                and not t.role_parameters()}

    @staticmethod
    def _intent_roles(repo: UnitOfWork, target: str, value: str) -> set[str]:
        field_of = {"agent": "requester", "template": "template", "role_arn": "role_arn"}[target]
        roles = set()
        for intent in repo.unresolved_intents():
            request = repo.get_request(intent.request_id)
            if request is not None and getattr(request, field_of) == value:
                roles.add(intent.role_arn)
        return roles

    # ------------------------------------------------------------------ expiry and orphans
    def sync(self) -> dict[str, Any]:
        """Drop entries whose credentials have expired; rewrite every affected role's policy."""

        def plan(_repo: UnitOfWork, entries: list[rules.RevocationEntry], now: datetime) -> Change:
            live = rules.live_entries(entries, now=now)
            dropped = len(entries) - len(live)
            roles = {e.role_arn for e in entries}
            events = []
            if dropped:
                events.append(_event(EventType.REVOCATIONS_EXPIRED, now=now, actor="broker", dropped=dropped,
                                     roles=sorted(roles)))
            return Change(roles=roles, events=events, view={"dropped": dropped, "roles": sorted(roles)})

        return self._apply(principal_id="broker", source_ip=None, action="sync", plan=plan)

    def reconcile_orphans(self) -> list[str]:
        """Log, fail and revoke every mint intent left unresolved for longer than the grace period: all of them
        in one unit of work, so one IAM write per role and, if IAM fails, one ``revocation_failed`` entry."""
        view = self._apply(principal_id="broker", source_ip=None, action="reconcile", plan=self._orphans)
        return view["orphans"]

    def sweep(self) -> dict[str, Any]:
        """The periodic sweep: orphans, then expired entries.  While IAM is failing it backs off (see
        :class:`IamBackoff`): nothing is attempted, and nothing logged, until the pause is over."""
        try:
            self.time_check()
        except Unavailable as exc:
            log.error("revocation sweep skipped: %s", exc.code)
            return {"skipped": exc.code, "orphans": []}
        if not self.iam_backoff.due():
            return {"skipped": "iam_backoff", "orphans": []}
        try:
            orphans = self.reconcile_orphans()
            synced = self.sync()
        except Unavailable as exc:
            pause = self.iam_backoff.failed()
            log.error("revocation sweep failed (%s); the next attempt in %.0f s", exc.code, pause)
            raise
        self.iam_backoff.succeeded()
        if orphans:
            log.warning("reconciled %d orphaned mint intent(s): logged and revoked", len(orphans))
        return {**synced, "orphans": orphans}

    def _orphans(self, repo: UnitOfWork, _entries: list[rules.RevocationEntry], now: datetime) -> Change:
        stale = [i for i in repo.unresolved_intents()
                 if as_utc(i.created_at) <= now - timedelta(seconds=self.orphan_grace_seconds)]
        requests = {i.grant_id: repo.get_request(i.request_id) for i in stale}
        entries: list[rules.RevocationEntry] = []
        events = []
        for intent in sorted(stale, key=lambda i: (as_utc(i.created_at), i.grant_id)):
            request = requests[intent.grant_id]
            ttl = request.ttl_seconds if request is not None else STS_MAX_DURATION
            session_name = request.session_name if request is not None else intent.grant_id
            # NOTE: issued_by: whatever STS issued for the intent, it issued before now (the call is long over).
            entries.append(rules.RevokedSession(role_arn=intent.role_arn, grant_id=intent.grant_id,
                                                session_name=session_name,
                                                expires_at=as_utc(intent.created_at) + timedelta(seconds=ttl),
                                                issued_by=now, source_identity=intent.source_identity,
                                                template=request.template if request is not None else None))
            event = _event(EventType.ORPHANED, now=now, actor="broker", reason_code="orphaned_mint",
                           role_arn=intent.role_arn, session_name=session_name, revoked=True,
                           intent_created_at=iso(intent.created_at),
                           requester=request.requester if request is not None else None)
            event.update(request_id=intent.request_id, grant_id=intent.grant_id,
                         template=request.template if request is not None else None)
            events.append(event)

        def record(repo: UnitOfWork) -> None:
            for intent in stale:
                request = requests[intent.grant_id]
                if request is not None:
                    repo.transition_request(request.id, from_statuses=[RequestStatus.ISSUING.value],
                                            to_status=RequestStatus.FAILED.value, updated_at=now,
                                            decided_reason="orphaned")
                repo.resolve_intent(intent.grant_id)

        return Change(roles={i.role_arn for i in stale}, events=events, entries=entries, record=record,
                      view={"orphans": [i.grant_id for i in stale]})


__all__ = ["RevocationService", "start_up"]


def start_up(revocations: RevocationService) -> None:
    """Start-up: reconcile orphaned mint intents, then prune expired revocations.  Never fatal:
    a broker that cannot reach IAM still starts (and says so loudly); the intents stay open."""
    try:
        revocations.sweep()
    except BrokerError as exc:
        log.error("start-up revocation sync failed: %s", exc.code)
