"""Co-signing: an approver approves or denies a pending request (one unit of work), under the two-person rule
(``broker.domain.requests``: never the requester nor the human it acts for, one human counts once, an approval
counts only for the binding it signed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from broker.domain import log as issuance_log
from broker.domain.events import EventType
from broker.domain.principals import Principal
from broker.domain.records import Approval, CredentialRequest
from broker.domain.requests import (BindingFacts, CoSignature, Decision, PendingFacts, RequestStatus, clean_reason,
                                    counted_approvals, may_approve, may_deny, require_status)
from broker.domain.templates import ScopeTemplate
from broker.domain.times import as_utc
from broker.errors import BrokerError, Conflict, Forbidden, InvalidInput
from broker.ports import Clock, Notifier, Store, TemplateSource, UnitOfWork


def binding_of(row: CredentialRequest) -> BindingFacts:
    return BindingFacts(request_id=row.id, template=row.template, template_digest=row.template_digest,
                        parameters=row.parameters, role_arn=row.role_arn, policy_digest=row.policy_digest,
                        ttl_seconds=row.ttl_seconds, session_tags=row.session_tags,
                        source_identity=row.source_identity)


@dataclass(frozen=True)
class DecisionOptions:
    """What one person may still decide on one request (the approver page shows only these controls)."""

    approve: bool
    deny: bool
    decided: Mapping[str, Any] | None = None    # their own decision, when they made one
    why: str | None = None                      # why a control is missing, in words


class CoSigning:
    """Approve / deny, and what one person may still decide (a part of ``BrokerService``)."""

    catalog: TemplateSource
    clock: Clock
    database: Store
    notifier: Notifier

    def decide(self, *, principal: Principal, request_id: str, decision: str, reason: str,
               source_ip: str | None = None) -> dict[str, Any]:
        try:
            choice = Decision(decision)
        except ValueError:
            raise InvalidInput("decision must be 'approve' or 'deny'", code="invalid_decision",
                               field="decision") from None
        reason = clean_reason(reason)
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

    def _record_decision(self, repo: UnitOfWork, row: CredentialRequest, template: ScopeTemplate, *, principal: Principal,
                         choice: Decision, reason: str, now: datetime,
                         source_ip: str | None) -> tuple[str | None, dict[str, Any]]:
        notify: str | None = None
        repo.add_approval(Approval(request_id=row.id, approver=principal.id, decision=choice.value,
                                      binding_digest=row.binding_digest, reason=reason, created_at=now))
        approvals = self._approval_list(repo, row.id)
        if choice is Decision.DENY:
            repo.transition_request(row.id, from_statuses=[RequestStatus.PENDING.value],
                                    to_status=RequestStatus.DENIED.value, updated_at=now, decided_reason=reason)
            row = replace(row, status=RequestStatus.DENIED.value, decided_reason=reason, updated_at=now)
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
                row = replace(row, status=RequestStatus.APPROVED.value, approved_at=now, redeem_by=redeem_by,
                              updated_at=now)
                repo.append_event(self._event(EventType.APPROVED, row, actor=principal.id, now=now, approvals=approvals,
                                              details={"counted": sorted(counted)}))
                notify = EventType.APPROVED
        return notify, self.request_view(row, template=template, approvals=approvals)

    def _approval_list(self, repo: UnitOfWork, request_id: str) -> list[dict[str, Any]]:
        return [{"approver": a.approver, "decision": a.decision, "reason": a.reason,
                 "binding_digest": a.binding_digest, "at": issuance_log.log_time(as_utc(a.created_at))}
                for a in repo.approvals_for(request_id)]

    def _counted(self, repo: UnitOfWork, row: CredentialRequest, template: ScopeTemplate,
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
    def _pending_facts(repo: UnitOfWork, row: CredentialRequest) -> PendingFacts:
        """What the approval rules need, with the person of the human the agent acts for (their linked ids)."""
        human = repo.get_principal(row.acts_for) if row.acts_for else None
        return PendingFacts(row.requester, row.acts_for, row.binding_digest,
                            acts_for_person=human.person if human is not None else None)

    @staticmethod
    def _person_decided(repo: UnitOfWork, row: CredentialRequest, principal: Principal) -> bool:
        """Whether another id of ``principal``'s person (the directory's ``person:`` group) already decided."""
        if principal.person == principal.id:
            return False
        others = {a.approver for a in repo.approvals_for(row.id)} - {principal.id}
        return any((p := repo.get_principal(other)) is not None and p.person == principal.person for other in others)

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


__all__ = ["CoSigning", "DecisionOptions", "binding_of"]
