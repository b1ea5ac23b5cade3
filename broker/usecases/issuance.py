"""Use cases: request, approve/deny, redeem, cancel, read.  One unit of work each.

Issuance is fail-closed and never half-done:

1. validate, render and check the policy (refusals are logged);
2. unit of work A: the request row, a *mint intent* and the ``requested`` event;
3. STS AssumeRole;
4. unit of work B: the grant, the ``issued`` event (access key id, expiry, policy digest).

Credentials leave only after B commits.  If STS fails, a ``failed`` event is written
and nothing is returned.  If B cannot be written, the credentials are withheld and
the unresolved intent is reconciled at start-up (logged as an orphan, revoked).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.domain.records import Approval, CredentialRequest, Grant, MintIntent
from broker.domain import log as issuance_log
from broker.domain.caller_identity import CallerIdentity
from broker.domain.events import EventType, log_entry
from broker.domain.mint_plan import MintPlan, plan_mint
from broker.domain.principals import Principal, Role
from broker.domain.rendering import RenderedPolicy, render_policy
from broker.domain.requests import (BindingFacts, CoSignature, Decision, PendingFacts, RequestStatus,
                                    counted_approvals, may_approve, may_deny, require_status)
from broker.domain.templates import ScopeTemplate
from broker.domain.text import unsafe_characters
from broker.errors import (BrokerError, Conflict, Forbidden, GuardrailViolation, InvalidInput, RequestNotFound,
                           StorageDisconnected, StorageUnavailable, Unavailable)
from broker.ports import (Clock, CredentialMinter, MintedCredentials, MintOrder, Notifier, NullNotifier, Store,
                          StoredGrant, StoredRequest, TemplateSource, UnitOfWork)
from broker.usecases.caller import caller_identity, stored_identity
from broker.usecases.refusal_budget import RefusalBudget, refusal_entry
from broker.domain.times import as_utc, iso

log = logging.getLogger("broker.service")
# A redemption refused because the stored request disagrees with what its approvals bind (a database edit).
STORED_REQUEST_ALTERED = "stored_request_altered"

MAX_REASON = 1000
# A request as stored (loaded) or about to be (built on the issuance path): the same attributes.
AnyRequest = StoredRequest | CredentialRequest
# A check of a rendered policy: returns findings; any with `.blocking` refuses the request.
RenderedCheck = Callable[[ScopeTemplate, RenderedPolicy], Sequence[object]]
# Extra gate run inside unit of work A (rate limits, lockdown): raises a BrokerError to refuse.
IssuanceGate = Callable[[UnitOfWork, Principal, ScopeTemplate, datetime], None]
# Check run inside unit of work B, after STS minted and before the credentials are released (the
# lockdown): given the environment, raises a BrokerError to withhold them.
ReleaseGate = Callable[[UnitOfWork, str], None]


# The approvers' pending list: a page's default and largest size, and how deep it may page.
PENDING_PAGE = 100
PENDING_PAGE_MAX = 500
PENDING_OFFSET_MAX = 100_000


@dataclass(frozen=True)
class DecisionOptions:
    """What one person may still decide on one request (the approver page shows only these controls)."""

    approve: bool
    deny: bool
    decided: Mapping[str, Any] | None = None    # their own decision, when they made one
    why: str | None = None                      # why a control is missing, in words


@dataclass
class RequestOutcome:
    request: dict[str, Any]
    credentials: MintedCredentials | None = None
    grant: dict[str, Any] | None = None


@dataclass
class BrokerService:
    catalog: TemplateSource
    database: Store
    minter: CredentialMinter
    clock: Clock
    rendered_checks: Sequence[RenderedCheck] = ()
    gates: Sequence[IssuanceGate] = ()
    # Gates run when an approved request is redeemed (the lockdown): the other path that mints.
    redeem_gates: Sequence[IssuanceGate] = ()
    # Checks run when minted credentials are about to be released (a lockdown committed while STS minted).
    release_gates: Sequence[ReleaseGate] = ()
    notifier: Notifier = field(default_factory=NullNotifier)
    public_url: str = "http://127.0.0.1:8080"
    blast_radius: Callable[[ScopeTemplate, RenderedPolicy | None], dict[str, Any]] | None = None
    # How many refusals a minute of one principal are logged one by one (see broker.usecases.refusal_budget).
    refusal_budget: RefusalBudget = field(default_factory=RefusalBudget.disabled)
    _risk_cache: dict[tuple[str, str], list[str]] = field(default_factory=dict, init=False, repr=False)

    # ------------------------------------------------------------------ request
    def request_credentials(self, *, principal: Principal, template_name: str, parameters: Mapping[str, Any] | None,
                            ttl_seconds: int | None, reason: str, source_ip: str | None) -> RequestOutcome:
        now = self.clock.now()
        try:
            template = self.catalog.get(template_name)
            if not principal.has_role(Role.AGENT) or not any(principal.matches(s) for s in template.requesters):
                raise Forbidden(f"'{principal.id}' may not request the scope '{template.name}'",
                                code="requester_not_allowed", field="template")
            reason = _clean_reason(reason)
            request_id, grant_id = str(uuid.uuid4()), str(uuid.uuid4())
            plan = plan_mint(template, request_id=request_id, grant_id=grant_id, requester=principal.id,
                             acts_for=principal.acts_for, parameters=parameters, ttl_seconds=ttl_seconds,
                             identity=caller_identity(principal))
            self._check_rendered(template, plan.policy)
        except BrokerError as exc:
            self._log_refusal(principal=principal, template_name=template_name, error=exc, source_ip=source_ip, now=now)
            raise
        # NOTE: the row is the plan's stored form, field for field (what a redemption checks it against).
        stored = plan.stored_form()
        row = CredentialRequest(
            id=request_id, template=plan.template, template_digest=plan.template_digest,
            environment=template.environment.value, parameters=json.dumps(stored["parameters"], sort_keys=True),
            role_arn=plan.role_arn, policy=plan.policy.json, policy_digest=plan.policy.digest,
            ttl_seconds=plan.ttl_seconds, session_tags=json.dumps(stored["session_tags"]),
            source_identity=plan.source_identity, session_name=plan.session_name, grant_id=grant_id,
            binding_digest=stored["binding_digest"], requester=principal.id, acts_for=principal.acts_for,
            reason=reason, source_ip=source_ip, status=RequestStatus.PENDING.value,
            approvals_required=template.approval.approvals, created_at=now, updated_at=now,
            identity=json.dumps(dict(plan.identity), sort_keys=True) if plan.identity else None,
        )
        if template.needs_approval:
            return self._open_pending(row, template, principal, now)
        return self._issue_now(row, template, principal, plan, now)

    def _check_rendered(self, template: ScopeTemplate, rendered: RenderedPolicy) -> None:
        for check in self.rendered_checks:
            blocking = [f for f in check(template, rendered) if getattr(f, "blocking", True)]
            if blocking:
                raise GuardrailViolation(f"the rendered policy fails a guardrail: {blocking[0]}",
                                         details={"findings": [str(f) for f in blocking]})

    @staticmethod
    def _run_gates(gates: Sequence[IssuanceGate], repo: UnitOfWork, principal: Principal, template: ScopeTemplate,
                   now: datetime) -> None:
        # NOTE: the log's lock first, so the gates decide on a serialized view: a lockdown (which takes the
        # same lock) commits either before they read (and refuses this request) or after this request.
        repo.lock_log_head()
        for gate in gates:
            gate(repo, principal, template, now)

    def _open_pending(self, row: CredentialRequest, template: ScopeTemplate, principal: Principal,
                      now: datetime) -> RequestOutcome:
        row.pending_expires_at = now + timedelta(seconds=template.approval.expires_after)
        try:
            with self.database.transaction() as repo:
                self._run_gates(self.gates, repo, principal, template, now)
                repo.add_request(row)
                repo.append_event(self._event(EventType.REQUESTED, row, actor=principal.id, now=now))
                repo.append_event(self._event(EventType.PENDING, row, actor=principal.id, now=now, details={
                    "approvals_required": template.approval.approvals, "approvers": template.approval.approvers}))
        except BrokerError as exc:
            if not isinstance(exc, Unavailable):
                self._log_refusal(principal=principal, template_name=template.name, error=exc,
                                  source_ip=row.source_ip, now=now)
            raise
        view = self.request_view(row, template=template)
        self.notifier.notify(event=EventType.PENDING, request=view)
        return RequestOutcome(request=view)

    def _issue_now(self, row: CredentialRequest, template: ScopeTemplate, principal: Principal, plan: MintPlan,
                   now: datetime) -> RequestOutcome:
        row.status = RequestStatus.ISSUING.value
        try:
            with self.database.transaction() as repo:
                self._run_gates(self.gates, repo, principal, template, now)
                repo.add_request_and_intent(row, mint_intent_for(row, now))
                repo.append_event(self._event(EventType.REQUESTED, row, actor=principal.id, now=now))
        except BrokerError as exc:
            if not isinstance(exc, Unavailable):
                self._log_refusal(principal=principal, template_name=template.name, error=exc,
                                  source_ip=row.source_ip, now=now)
            raise
        return self._mint_and_record(row, template, plan, actor=principal.id)

    def _mint_and_record(self, row: AnyRequest, template: ScopeTemplate, plan: MintPlan, *,
                         actor: str) -> RequestOutcome:
        # NOTE: every field from the plan (re-derived from the template and what the approvals bind), none from
        # the stored row: a row edited in the database is never what STS receives.
        order = MintOrder(role_arn=plan.role_arn, session_name=plan.session_name, policy_json=plan.policy.json,
                          duration_seconds=plan.ttl_seconds, source_identity=plan.source_identity,
                          tags=[{"Key": k, "Value": v} for k, v in plan.session_tags],
                          transitive_tag_keys=plan.transitive_tag_keys)
        try:
            minted = self.minter.mint(order)
        except BrokerError as exc:
            # NOTE: when STS may have minted anyway (the answer was lost) the intent stays open:
            # reconciliation logs that possible session as an orphan and revokes it.
            self._record_failure(row, actor=actor, error=exc,
                                 session_may_exist=bool(exc.details.get("outcome_unknown")))
            raise
        now = self.clock.now()
        grant = Grant(id=plan.grant_id, request_id=row.id, template=plan.template, agent=row.requester,
                         acts_for=row.acts_for, role_arn=plan.role_arn, access_key_id=minted.access_key_id,
                         source_identity=plan.source_identity, session_name=plan.session_name,
                         policy_digest=plan.policy.digest, environment=row.environment, issued_at=now,
                         expiration=minted.expiration)
        try:
            try:
                self._record_issued(row, grant, actor=actor, risks=self.template_risks(template))
            except StorageDisconnected:
                # NOTE: the connection died while STS minted (a database restart, a failover): once more, on a
                # fresh connection, rather than throw away a session the caller is waiting for.
                log.warning("database connection lost recording request %s; retrying once", row.id)
                self._record_issued(row, grant, actor=actor, risks=self.template_risks(template), retry=True)
        except Unavailable:
            # NOTE: the credentials exist at AWS but are withheld; the open intent makes reconciliation log
            # and revoke them.  Nothing reaches the caller.  (Should the lost connection have hidden a COMMIT
            # that landed, the log says issued and the intent is resolved: this line names what to revoke.)
            log.error("issued event could not be written for request %s; credentials withheld (grant %s, access "
                      "key id %s)", row.id, grant.id, grant.access_key_id)
            raise
        except BrokerError as exc:
            # A release gate refused (a lockdown committed while STS minted), or the request moved on: the
            # session exists but is withheld; it is logged as failed and its open intent revoked.
            self._record_failure(row, actor=actor, error=exc, session_may_exist=True)
            raise
        row.status, row.issued_at = RequestStatus.ISSUED.value, now
        return RequestOutcome(request=self.request_view(row, template=template), credentials=minted,
                              grant=grant_view(grant, ttl_seconds=row.ttl_seconds))

    def template_risks(self, template: ScopeTemplate) -> list[str]:
        """The risk classes a template's grants carry (the blast radius's, most dangerous first), once per version.

        Written into each ``issued`` entry (``details.risks``), so the log itself says which grants were
        destructive or risky, whatever the catalog holds later."""
        key = (template.name, template.version_digest)
        cached = self._risk_cache.get(key)
        if cached is None:
            cached = []
            if self.blast_radius is not None:
                cached = [str(finding["class"]) for finding in self.blast_radius(template, None).get("risk") or []]
            self._risk_cache[key] = cached
        return list(cached)

    def _record_issued(self, row: AnyRequest, grant: Grant, *, actor: str, risks: Sequence[str],
                       retry: bool = False) -> None:
        """Unit of work B: the grant, the request's move to issued and the ``issued`` entry, together."""
        with self.database.transaction() as repo:
            repo.lock_log_head()  # first: a lockdown commits before this unit of work or after it
            for gate in self.release_gates:
                gate(repo, row.environment)
            # NOTE: on a retry the connection may have been lost at COMMIT, after that commit landed: then this
            # exact grant is recorded and logged already, and nothing is written twice.
            recorded = repo.get_grant(grant.id) if retry else None
            if recorded is not None and recorded.access_key_id == grant.access_key_id:
                return
            if recorded is not None or not repo.record_issued(
                    row.id, from_statuses=[RequestStatus.ISSUING.value], to_status=RequestStatus.ISSUED.value,
                    grant=grant, now=grant.issued_at):
                raise Conflict("the request changed while credentials were minted", code="request_changed")
            repo.append_event(self._event(EventType.ISSUED, row, actor=actor, now=grant.issued_at,
                                          access_key_id=grant.access_key_id,
                                          expiration=issuance_log.log_time(grant.expiration),
                                          details={"environment": row.environment, "risks": list(risks)}))

    def _record_failure(self, row: AnyRequest, *, actor: str, error: BrokerError, session_may_exist: bool) -> None:
        now = self.clock.now()
        try:
            with self.database.transaction() as repo:
                repo.transition_request(row.id, from_statuses=[RequestStatus.ISSUING.value],
                                        to_status=RequestStatus.FAILED.value, updated_at=now,
                                        decided_reason=error.code)
                if not session_may_exist:
                    # NOTE: otherwise the intent stays open: reconciliation logs that (possible) session as an
                    # orphan and revokes it.
                    repo.resolve_intent(row.grant_id)
                repo.append_event(self._event(EventType.FAILED, row, actor=actor, now=now, reason_code=error.code))
        except BrokerError:
            log.error("could not record the failure of request %s", row.id)

    def _log_refusal(self, *, principal: Principal, template_name: str, error: BrokerError, source_ip: str | None,
                     now: datetime) -> None:
        body = log_entry(EventType.REFUSED, now=now)
        # NOTE: the name is the caller's; a NUL (which PostgreSQL cannot store) must not stop the refusal's entry.
        body.update(actor=principal.id, acts_for=principal.acts_for,
                    template=str(template_name)[:100].replace("\x00", "\ufffd"),
                    source_ip=source_ip, reason_code=error.code,
                    details={"message": error.message[:300], **({"field": error.field} if error.field else {})})
        append_refusal(self.database, self.refusal_budget, principal.id, body)

    def flush_suppressed_refusals(self, *, close_open: bool = False) -> int:
        """Write the counts of suppressed refusals that no later refusal carried (``broker serve``'s
        periodic sweep; at shutdown with ``close_open``).  Returns the number of entries written."""
        summaries = self.refusal_budget.take_summaries(close_open=close_open)
        if not summaries:
            return 0
        now = self.clock.now()
        try:
            with self.database.transaction() as repo:
                for summary in summaries:
                    body = log_entry(EventType.REFUSALS_SUPPRESSED_SUMMARY, now=now)
                    body.update(actor=summary.principal_id, details=summary.details())
                    repo.append_event(body)
        except BaseException:
            self.refusal_budget.give_back(summaries)  # the next sweep or refusal writes them
            raise
        return len(summaries)

    # ------------------------------------------------------------------ co-signing
    def decide(self, *, principal: Principal, request_id: str, decision: str, reason: str,
               source_ip: str | None = None) -> dict[str, Any]:
        try:
            choice = Decision(decision)
        except ValueError:
            raise InvalidInput("decision must be 'approve' or 'deny'", code="invalid_decision",
                               field="decision") from None
        reason = _clean_reason(reason)
        now = self.clock.now()
        notify: str | None = None
        outbox: list[tuple[str, dict[str, Any]]] = []
        try:
            with self.database.transaction() as repo:
                row = self._visible_request(repo, principal, request_id, for_update=True)
                # NOTE: an expiry found here is committed (nothing is raised inside this unit of work).
                expired = self._expire_if_stale(repo, row, now, outbox)
                if not expired:
                    template = self.catalog.get(row.template)
                    require_status(RequestStatus(row.status), [RequestStatus.PENDING], action="decide on")
                    check = may_deny if choice is Decision.DENY else may_approve
                    check(template.approval, self._pending_facts(repo, row), principal)
                    if template.version_digest != row.template_digest:
                        raise Conflict("the scope template changed since the request was made; the agent must "
                                       "make a new request", code="template_changed")
                    if repo.has_decided(row.id, principal.id) or self._person_decided(repo, row, principal):
                        raise Conflict("you have already decided on this request; each person counts once",
                                       code="already_decided")
                    notify, view = self._record_decision(repo, row, template, principal=principal, choice=choice,
                                                         reason=reason, now=now, source_ip=source_ip)
            self._send(outbox)
            if expired:
                raise Conflict("the request expired before it was decided", code="request_expired")
        except (Forbidden, Conflict) as exc:
            self._log_request_refusal(request_id=request_id, principal=principal, error=exc, source_ip=source_ip)
            raise
        if notify:
            self.notifier.notify(event=notify, request=view)
        return view

    def _record_decision(self, repo: UnitOfWork, row: StoredRequest, template: ScopeTemplate, *, principal: Principal,
                         choice: Decision, reason: str, now: datetime,
                         source_ip: str | None) -> tuple[str | None, dict[str, Any]]:
        notify: str | None = None
        repo.add_approval(Approval(request_id=row.id, approver=principal.id, decision=choice.value,
                                      binding_digest=row.binding_digest, reason=reason, created_at=now))
        approvals = self._approval_list(repo, row.id)
        if choice is Decision.DENY:
            repo.transition_request(row.id, from_statuses=[RequestStatus.PENDING.value],
                                    to_status=RequestStatus.DENIED.value, updated_at=now, decided_reason=reason)
            row.status, row.decided_reason = RequestStatus.DENIED.value, reason
            repo.append_event(self._event(EventType.DENIED, row, actor=principal.id, now=now, approvals=approvals,
                                          details={"reason": reason}, source_ip=source_ip))
            notify = EventType.DENIED
        else:
            repo.append_event(self._event(EventType.COSIGNED, row, actor=principal.id, now=now, approvals=approvals,
                                          source_ip=source_ip, details={"reason": reason}))
            counted = self._counted(repo, row, template)
            if len(counted) >= template.approval.approvals:
                redeem_by = now + timedelta(seconds=template.approval.redeem_within)
                repo.transition_request(row.id, from_statuses=[RequestStatus.PENDING.value],
                                        to_status=RequestStatus.APPROVED.value, approved_at=now,
                                        redeem_by=redeem_by, updated_at=now)
                row.status, row.approved_at, row.redeem_by = RequestStatus.APPROVED.value, now, redeem_by
                repo.append_event(self._event(EventType.APPROVED, row, actor=principal.id, now=now, approvals=approvals,
                                              details={"counted": sorted(counted)}))
                notify = EventType.APPROVED
        return notify, self.request_view(row, template=template, approvals=approvals)

    def _log_request_refusal(self, *, request_id: str, principal: Principal, error: BrokerError,
                             source_ip: str | None) -> None:
        """A refused decision or redemption on an existing request is itself a logged step."""
        now = self.clock.now()
        with refusal_entry(self.refusal_budget, principal.id, reason_code=error.code) as ticket:
            if ticket is None:
                return  # over the principal's refusal budget: counted, not logged
            with self.database.transaction() as repo:
                row = repo.get_request(str(request_id)[:64])
                if row is None:
                    return
                extra: dict[str, Any] = {"source_ip": source_ip} if source_ip else {}
                repo.append_event(ticket.shape(self._event(EventType.REFUSED, row, actor=principal.id, now=now,
                                                           reason_code=error.code,
                                                           details={"message": error.message[:300]}, **extra)))

    def _approval_list(self, repo: UnitOfWork, request_id: str) -> list[dict[str, Any]]:
        return [{"approver": a.approver, "decision": a.decision, "reason": a.reason,
                 "binding_digest": a.binding_digest, "at": issuance_log.log_time(as_utc(a.created_at))}
                for a in repo.approvals_for(request_id)]

    def _counted(self, repo: UnitOfWork, row: StoredRequest, template: ScopeTemplate,
                 binding_digest: str | None = None) -> set[str]:
        """Approvals that still stand now: same binding (``binding_digest``, by default the row's recomputed),
        approver still allowed (re-checked)."""
        signatures = [CoSignature(approver=a.approver, decision=Decision(a.decision), binding_digest=a.binding_digest,
                                  reason=a.reason, at=a.created_at) for a in repo.approvals_for(row.id)]
        facts = self._pending_facts(repo, row)
        still_allowed: dict[str, bool] = {}
        person_of: dict[str, str] = {}
        for sig in signatures:
            approver = repo.get_principal(sig.approver)
            try:
                if approver is None:
                    raise Forbidden("approver no longer exists")
                person_of[sig.approver] = approver.person
                may_approve(template.approval, facts, approver)
                still_allowed[sig.approver] = True
            except Forbidden:
                still_allowed[sig.approver] = False
        return counted_approvals(signatures, binding_digest=binding_digest or binding_of(row).digest(),
                                 still_allowed=still_allowed, person_of=person_of)

    @staticmethod
    def _pending_facts(repo: UnitOfWork, row: StoredRequest) -> PendingFacts:
        """What the approval rules need, with the person of the human the agent acts for (their linked ids)."""
        human = repo.get_principal(row.acts_for) if row.acts_for else None
        return PendingFacts(row.requester, row.acts_for, row.binding_digest,
                            acts_for_person=human.person if human is not None else None)

    @staticmethod
    def _person_decided(repo: UnitOfWork, row: StoredRequest, principal: Principal) -> bool:
        """Whether another id of ``principal``'s person (the directory's ``person:`` group) already decided."""
        if principal.person == principal.id:
            return False
        others = {a.approver for a in repo.approvals_for(row.id)} - {principal.id}
        return any((p := repo.get_principal(other)) is not None and p.person == principal.person for other in others)

    def redeem(self, *, principal: Principal, request_id: str) -> RequestOutcome:
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        try:
            with self.database.transaction() as repo:
                row = self._visible_request(repo, principal, request_id)
                if row.requester != principal.id:
                    raise Forbidden("only the agent that made the request can redeem it", code="not_requester")
                self._expire_if_stale(repo, row, now, outbox)
            self._send(outbox)
            if row.status == RequestStatus.EXPIRED.value:
                raise Conflict("the request expired", code="request_expired")
            if row.status == RequestStatus.PENDING.value:
                raise Conflict("the request is still waiting for approvals", code="approval_pending",
                               details={"approvals_required": row.approvals_required})
            if row.status in (RequestStatus.ISSUING.value, RequestStatus.ISSUED.value):
                raise Conflict("the request was already redeemed", code="request_already_redeemed")
            require_status(RequestStatus(row.status), [RequestStatus.APPROVED], action="redeem")
            template = self.catalog.get(row.template)
            # Re-check everything the approvals were bound to against the current template.
            if template.version_digest != row.template_digest:
                raise Conflict("the scope template changed since approval; a new request is needed",
                               code="approval_void")
            # NOTE: what is minted is derived again from the template and what the approvals bind; the row's
            # rendered policy, role, tags, ... are only compared with it (see broker.domain.mint_plan).
            plan, altered = self._plan_for_stored(template, row, identity=caller_identity(principal))
            if plan is not None:
                if dict(plan.identity) != stored_identity(row.identity):
                    raise Conflict("the caller's identity values changed since the request; a new request is "
                                   "needed", code="identity_changed")
                self._check_rendered(template, plan.policy)
            with self.database.transaction() as repo:
                self._run_gates(self.redeem_gates, repo, principal, template, now)
                if plan is not None and len(self._counted(repo, row, template, plan.binding().digest())) \
                        < template.approval.approvals:
                    raise Conflict("the approvals no longer stand (an approver was removed, or what they approved "
                                   "changed)", code="approval_void")
                if altered:
                    self._fail_altered(repo, row, plan, altered, actor=principal.id, now=now)
                else:
                    # NOTE: the conditional update is the lock: exactly one concurrent redeemer wins.
                    if not repo.transition_request(row.id, from_statuses=[RequestStatus.APPROVED.value],
                                                   to_status=RequestStatus.ISSUING.value, updated_at=now):
                        raise Conflict("the request was already redeemed", code="request_already_redeemed")
                    repo.add_intent(mint_intent_for(row, now))
                    repo.append_event(self._event(EventType.REDEEMING, row, actor=principal.id, now=now))
        except (Forbidden, Conflict, GuardrailViolation) as exc:
            self._log_request_refusal(request_id=request_id, principal=principal, error=exc, source_ip=None)
            raise
        if altered:
            # Logged as failed above (in the same unit of work as the request's move to failed), not as a refusal.
            raise Conflict("the stored request differs from what was approved (the database was edited); nothing "
                           "was minted and the request is failed", code=STORED_REQUEST_ALTERED,
                           details={"altered": list(altered)})
        row.status = RequestStatus.ISSUING.value
        return self._mint_and_record(row, template, plan, actor=principal.id)

    @staticmethod
    def _plan_for_stored(template: ScopeTemplate, row: StoredRequest, *,
                         identity: CallerIdentity) -> tuple[MintPlan | None, tuple[str, ...]]:
        """The plan re-derived for a stored request (identity-bound values from ``identity``, the redeeming
        requester as it authenticated now), and the stored fields that disagree with it."""
        try:
            plan = plan_mint(template, request_id=row.id, grant_id=row.grant_id, requester=row.requester,
                             acts_for=row.acts_for, parameters=json.loads(row.parameters), ttl_seconds=row.ttl_seconds,
                             identity=identity)
        except Forbidden:
            raise  # the caller lacks an identity value now: a refusal, not an altered row
        except BrokerError as exc:
            # A stored value no request could have had (the template is unchanged: its digest matched).
            return None, (exc.field or "parameters",)
        except ValueError:
            return None, ("parameters",)
        try:
            stored = {**{name: getattr(row, name) for name in plan.stored_form()},
                      "parameters": json.loads(row.parameters), "session_tags": json.loads(row.session_tags)}
        except ValueError:
            return plan, ("session_tags",)
        return plan, plan.disagreements(stored)

    def _fail_altered(self, repo: UnitOfWork, row: StoredRequest, plan: MintPlan | None, altered: tuple[str, ...], *,
                      actor: str, now: datetime) -> None:
        """The request ends failed, with a ``failed`` entry naming the altered fields; nothing is minted."""
        if not repo.transition_request(row.id, from_statuses=[RequestStatus.APPROVED.value],
                                       to_status=RequestStatus.FAILED.value, updated_at=now,
                                       decided_reason=STORED_REQUEST_ALTERED):
            raise Conflict("the request was already redeemed", code="request_already_redeemed")
        row.status = RequestStatus.FAILED.value
        # NOTE: the entry carries what was approved (the plan's digest), not the edited row's.
        approved = {"policy_digest": plan.policy.digest} if plan is not None else {}
        repo.append_event(self._event(EventType.FAILED, row, actor=actor, now=now, reason_code=STORED_REQUEST_ALTERED,
                                      details={"altered": list(altered)}, **approved))

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
                row.status = RequestStatus.CANCELLED.value
                repo.append_event(self._event(EventType.CANCELLED, row, actor=principal.id, now=now))
                view = self.request_view(row, approvals=self._approval_list(repo, row.id))
        self._send(outbox)
        if expired:
            raise Conflict("the request expired", code="request_expired")
        return view

    def _expire_if_stale(self, repo: UnitOfWork, row: StoredRequest, now: datetime,
                         outbox: list[tuple[str, dict[str, Any]]]) -> bool:
        """Expire ``row`` if its deadline passed; the notification waits in ``outbox`` until the commit."""
        deadline = {RequestStatus.PENDING.value: row.pending_expires_at,
                    RequestStatus.APPROVED.value: row.redeem_by}.get(row.status)
        if deadline is None or as_utc(deadline) > now:
            return False
        if repo.transition_request(row.id, from_statuses=[row.status], to_status=RequestStatus.EXPIRED.value,
                                   updated_at=now):
            previous = row.status
            row.status = RequestStatus.EXPIRED.value
            repo.append_event(self._event(EventType.EXPIRED, row, actor="broker", now=now, details={"was": previous}))
            outbox.append((EventType.EXPIRED, self.request_view(row)))
        return True

    def _send(self, outbox: list[tuple[str, dict[str, Any]]]) -> None:
        """Notifications for committed changes only (call after the unit of work)."""
        for event, view in outbox:
            self.notifier.notify(event=event, request=view)

    def expire_stale(self) -> int:
        """Sweep: expire pending requests past their wait and approved ones not redeemed in time."""
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        with self.database.transaction() as repo:
            expired = sum(self._expire_if_stale(repo, row, now, outbox) for row in repo.stale_requests(now=now))
        self._send(outbox)
        return expired

    # ------------------------------------------------------------------ reads
    def get_request(self, *, principal: Principal, request_id: str) -> dict[str, Any]:
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        with self.database.transaction() as repo:
            row = self._visible_request(repo, principal, request_id)
            self._expire_if_stale(repo, row, now, outbox)
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

    def decision_options(self, *, principal: Principal, view: Mapping[str, Any]) -> DecisionOptions:
        """What ``principal`` may still decide on the request ``view`` shows, by the same rules ``decide``
        applies (its answer to an actual decision stays the authority)."""
        decided = next((a for a in view.get("approvals") or [] if a.get("approver") == principal.id), None)
        if view.get("status") != RequestStatus.PENDING.value or decided is not None:
            return DecisionOptions(approve=False, deny=False, decided=decided)
        try:
            template = self.catalog.get(str(view["template"]))
        except BrokerError:
            return DecisionOptions(approve=False, deny=False, why="The scope template is no longer loaded.")
        if template.version_digest != view.get("template_digest"):
            return DecisionOptions(approve=False, deny=False, why="The scope template changed since the request "
                                   "was made; the agent must make a new request.")
        facts = PendingFacts(str(view["requester"]), view.get("acts_for"), str(view.get("binding_digest")))
        refusals: dict[str, str] = {}
        for choice, check in ((Decision.APPROVE, may_approve), (Decision.DENY, may_deny)):
            try:
                check(template.approval, facts, principal)
            except Forbidden as exc:
                refusals[choice.value] = exc.message
        approve, deny = "approve" not in refusals, "deny" not in refusals
        why = None
        if not approve:
            reason = refusals["approve"]
            why = (f"You cannot approve: {reason} (two-person rule); you may deny it." if deny
                   else f"You cannot decide on this request: {reason}.")
        return DecisionOptions(approve=approve, deny=deny, why=why)

    def _visible_request(self, repo: UnitOfWork, principal: Principal, request_id: str, *,
                         for_update: bool = False) -> StoredRequest:
        row = repo.get_request(str(request_id)[:64], for_update=for_update)
        visible = row is not None and (
            principal.id in (row.requester, row.acts_for)
            or principal.has_role(Role.APPROVER) or principal.has_role(Role.REVIEWER) or principal.has_role(Role.ADMIN)
        )
        if not visible:
            # NOTE: same answer for "absent" and "not yours": ids are not an oracle.
            raise RequestNotFound("no such request", field="id")
        return row

    def request_view(self, row: AnyRequest, *, template: ScopeTemplate | None = None,
                     approvals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": row.id, "status": row.status, "template": row.template, "template_digest": row.template_digest,
            "environment": row.environment, "parameters": json.loads(row.parameters), "role_arn": row.role_arn,
            "policy": json.loads(row.policy), "policy_digest": row.policy_digest, "ttl_seconds": row.ttl_seconds,
            "binding_digest": row.binding_digest, "requester": row.requester, "acts_for": row.acts_for,
            "reason": row.reason, "created_at": iso(row.created_at), "approvals_required": row.approvals_required,
            "pending_expires_at": iso(row.pending_expires_at), "approved_at": iso(row.approved_at),
            "redeem_by": iso(row.redeem_by), "issued_at": iso(row.issued_at),
            "identity": stored_identity(row.identity),
            "links": {"self": f"/v1/requests/{row.id}", "approve": f"/v1/requests/{row.id}/approvals",
                      "redeem": f"/v1/requests/{row.id}/credentials", "page": f"{self.public_url}/ui/requests/{row.id}"},
        }
        if approvals is not None:
            view["approvals"] = approvals
            view["approvals_counted"] = len({a["approver"] for a in approvals if a["decision"] == "approve"
                                             and a["binding_digest"] == row.binding_digest})
        if row.decided_reason and row.status in (RequestStatus.DENIED.value, RequestStatus.FAILED.value):
            view["decided_reason"] = row.decided_reason
        if template is None:
            try:
                template = self.catalog.get(row.template)
            except BrokerError:
                template = None
        if template is not None:
            view["approvers"] = list(template.approval.approvers)
            # The blast radius is for humans deciding; an issued request does not need it recomputed.
            if self.blast_radius is not None and row.status != RequestStatus.ISSUED.value:
                try:
                    view["blast_radius"] = self.blast_radius(template, render_policy(
                        template, {**json.loads(row.parameters), **stored_identity(row.identity)}))
                    # Each risk class of the exact policy, most dangerous first, in plain words.
                    view["risk"] = view["blast_radius"].get("risk", [])
                except BrokerError:
                    view["blast_radius"] = None
        return view

    # ------------------------------------------------------------------ events
    def _event(self, kind: EventType, row: AnyRequest, *, actor: str, now: datetime, **extra: Any) -> dict[str, Any]:
        body = log_entry(kind, now=now)
        body.update(request_id=row.id, grant_id=row.grant_id, actor=actor,
                    acts_for=row.acts_for if actor == row.requester else None, template=row.template,
                    template_digest=row.template_digest, parameters=json.loads(row.parameters),
                    policy_digest=row.policy_digest, source_ip=row.source_ip)
        details = dict(extra.pop("details", None) or {})
        details.setdefault("requester", row.requester)
        details.setdefault("on_behalf_of", row.acts_for)
        details.setdefault("ttl_seconds", row.ttl_seconds)
        if row.identity:
            details.setdefault("identity", stored_identity(row.identity))
        body["details"] = details
        body.update(extra)
        return body


def append_refusal(database: Store, budget: RefusalBudget, principal_id: str, body: dict[str, Any]) -> None:
    """Write a refusal's entry in its own unit of work, or let the principal's refusal budget count it instead.

    NOTE: if the entry cannot be written the caller gets 503 instead: nothing unlogged.  Over the budget it is
    counted, not written (broker.usecases.refusal_budget); the caller raises its error all the same.
    """
    with refusal_entry(budget, principal_id, reason_code=body["reason_code"]) as ticket:
        if ticket is not None:
            with database.transaction() as repo:
                repo.append_event(ticket.shape(body))


def mint_intent_for(row: AnyRequest, now: datetime) -> MintIntent:
    """The intent written before STS is called for ``row`` (an open one at start-up is an orphan)."""
    return MintIntent(grant_id=row.grant_id, request_id=row.id, role_arn=row.role_arn,
                         source_identity=row.source_identity, created_at=now)


def binding_of(row: AnyRequest) -> BindingFacts:
    return BindingFacts(request_id=row.id, template=row.template, template_digest=row.template_digest,
                        parameters=json.loads(row.parameters), role_arn=row.role_arn, policy_digest=row.policy_digest,
                        ttl_seconds=row.ttl_seconds,
                        session_tags=tuple(tuple(t) for t in json.loads(row.session_tags)),
                        source_identity=row.source_identity)


def grant_view(grant: StoredGrant | Grant, *, ttl_seconds: int) -> dict[str, Any]:
    return {"id": grant.id, "request_id": grant.request_id, "access_key_id": grant.access_key_id,
            "expiration": iso(grant.expiration), "role_arn": grant.role_arn, "session_name": grant.session_name,
            "source_identity": grant.source_identity, "policy_digest": grant.policy_digest, "ttl_seconds": ttl_seconds,
            "revoked_at": iso(grant.revoked_at)}


def _clean_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a reason is required: say what the credentials are for", code="missing_reason",
                           field="reason")
    if len(reason) > MAX_REASON or unsafe_characters(reason):
        # NOTE: control and bidirectional characters would make what approvers read differ from what was written.
        raise InvalidInput(f"reason must be at most {MAX_REASON} printable characters (no control or bidirectional "
                           "formatting characters)", code="invalid_reason", field="reason")
    return reason.strip()






__all__ = ["BrokerService", "RequestOutcome", "StorageUnavailable", "binding_of", "grant_view"]
