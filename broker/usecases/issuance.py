"""Issuance: ask for a scope's credentials, and redeem an approved request.  One unit of work each.

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

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from broker.domain import log as issuance_log
from broker.domain.caller_identity import CallerIdentity
from broker.domain.events import EventType, log_entry
from broker.domain.mint_plan import MintPlan, plan_mint
from broker.domain.principals import Principal, Role
from broker.domain.records import UNREADABLE, CredentialRequest, Grant, MintIntent
from broker.domain.rendering import RenderedPolicy
from broker.domain.requests import RequestStatus, clean_reason, require_status
from broker.domain.templates import ScopeTemplate
from broker.errors import (BrokerError, Conflict, Forbidden, GuardrailViolation, StorageDisconnected,
                           StorageUnavailable, Unavailable)
from broker.ports import (Clock, CredentialMinter, IssuanceGate, MintOrder, MintedCredentials, Notifier, NullNotifier,
                          ReleaseGate, RenderedCheck, Store, TemplateSource, UnitOfWork)
from broker.usecases.caller import caller_identity, stored_identity
from broker.usecases.cosigning import CoSigning
from broker.usecases.refusal_budget import RefusalBudget
from broker.usecases.refusal_log import RefusalLogging
from broker.usecases.requests import RequestLifecycle
from broker.usecases.views import RequestViews, grant_view

log = logging.getLogger("broker.service")
# A redemption refused because the stored request disagrees with what its approvals bind (a database edit).
STORED_REQUEST_ALTERED = "stored_request_altered"


@dataclass
class RequestOutcome:
    request: dict[str, Any]
    credentials: MintedCredentials | None = None
    grant: dict[str, Any] | None = None


@dataclass
class BrokerService(CoSigning, RequestLifecycle, RequestViews, RefusalLogging):
    """The credential request use cases, one unit of work each: ask (here), co-sign (``cosigning``), redeem
    (here), read, cancel and expire (``requests``), views (``views``), refusals (``refusal_log``)."""

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
            reason = clean_reason(reason)
            request_id, grant_id = str(uuid.uuid4()), str(uuid.uuid4())
            plan = plan_mint(template, request_id=request_id, grant_id=grant_id, requester=principal.id,
                             acts_for=principal.acts_for, parameters=parameters, ttl_seconds=ttl_seconds,
                             identity=caller_identity(principal))
            self._check_rendered(template, plan.policy)
        except BrokerError as exc:
            self._log_refusal(principal=principal, template_name=template_name, error=exc, source_ip=source_ip, now=now)
            raise
        # NOTE: the record is the plan's stored form, field for field (what a redemption checks it against).
        stored = plan.stored_form()
        pending = template.needs_approval
        row = CredentialRequest(
            id=request_id, template=plan.template, template_digest=plan.template_digest,
            environment=template.environment.value, parameters=MappingProxyType(stored["parameters"]),
            role_arn=plan.role_arn, policy=plan.policy.json, policy_digest=plan.policy.digest,
            ttl_seconds=plan.ttl_seconds, session_tags=plan.session_tags,
            source_identity=plan.source_identity, session_name=plan.session_name, grant_id=grant_id,
            binding_digest=stored["binding_digest"], requester=principal.id, acts_for=principal.acts_for,
            reason=reason, source_ip=source_ip,
            status=RequestStatus.PENDING.value if pending else RequestStatus.ISSUING.value,
            approvals_required=template.approval.approvals, created_at=now, updated_at=now,
            pending_expires_at=now + timedelta(seconds=template.approval.expires_after) if pending else None,
            identity=MappingProxyType(plan.identity) if plan.identity else None,
        )
        if pending:
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
        # NOTE: the gates decide on a serialized view: each that reads takes the log's lock before it reads (no
        # statement of its own first), so a lockdown (which takes the same lock) commits either before they
        # read (and refuses this request) or after this request.  Whatever follows is under the lock too.
        for gate in gates:
            gate(repo, principal, template, now)
        repo.lock_log_head()

    def _open_pending(self, row: CredentialRequest, template: ScopeTemplate, principal: Principal,
                      now: datetime) -> RequestOutcome:
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
        # NOTE: the entry and the intent are made before the unit of work (nothing in them depends on the log's
        # head): under the log's lock only the gates' reads and one write (PostgreSQL: one statement) remain.
        requested = self._event(EventType.REQUESTED, row, actor=principal.id, now=now)
        intent = mint_intent_for(row, now)
        try:
            with self.database.transaction() as repo:
                self._run_gates(self.gates, repo, principal, template, now)
                repo.add_request_and_intent(row, intent, entry=requested)
        except BrokerError as exc:
            if not isinstance(exc, Unavailable):
                self._log_refusal(principal=principal, template_name=template.name, error=exc,
                                  source_ip=row.source_ip, now=now)
            raise
        return self._mint_and_record(row, template, plan, actor=principal.id)

    def _mint_and_record(self, row: CredentialRequest, template: ScopeTemplate, plan: MintPlan, *,
                         actor: str) -> RequestOutcome:
        """Mint for ``row`` (moved to issuing by the caller's unit of work: its status is not read here) and record
        the grant; the answer shows the request as issued."""
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
        return RequestOutcome(request=self.request_view(row, template=template, issued_at=now), credentials=minted,
                              grant=grant_view(grant, ttl_seconds=row.ttl_seconds))


    def _record_issued(self, row: CredentialRequest, grant: Grant, *, actor: str, risks: Sequence[str],
                       retry: bool = False) -> None:
        """Unit of work B: the grant, the request's move to issued and the ``issued`` entry, together."""
        issued = self._event(EventType.ISSUED, row, actor=actor, now=grant.issued_at, access_key_id=grant.access_key_id,
                             expiration=issuance_log.log_time(grant.expiration),
                             details={"environment": row.environment, "risks": list(risks)})
        with self.database.transaction() as repo:
            # NOTE: the release gates read under the log's lock (each takes it before it reads): a lockdown
            # commits before this unit of work or after it.  Then the lock, if no gate took it.
            for gate in self.release_gates:
                gate(repo, row.environment)
            repo.lock_log_head()
            # NOTE: on a retry the connection may have been lost at COMMIT, after that commit landed: then this
            # exact grant is recorded and logged already, and nothing is written twice.
            recorded = repo.get_grant(grant.id) if retry else None
            if recorded is not None and recorded.access_key_id == grant.access_key_id:
                return
            if recorded is not None or not repo.record_issued(
                    row.id, from_statuses=[RequestStatus.ISSUING.value], to_status=RequestStatus.ISSUED.value,
                    grant=grant, now=grant.issued_at, entry=issued):
                raise Conflict("the request changed while credentials were minted", code="request_changed")

    def _record_failure(self, row: CredentialRequest, *, actor: str, error: BrokerError, session_may_exist: bool) -> None:
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


    def redeem(self, *, principal: Principal, request_id: str) -> RequestOutcome:
        now = self.clock.now()
        outbox: list[tuple[str, dict[str, Any]]] = []
        try:
            with self.database.transaction() as repo:
                row = self._visible_request(repo, principal, request_id)
                if row.requester != principal.id:
                    raise Forbidden("only the agent that made the request can redeem it", code="not_requester")
                row = self._expire_if_stale(repo, row, now, outbox) or row
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
            if plan is not None and "identity" not in altered:   # an unreadable identity fails as altered below
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
        return self._mint_and_record(row, template, plan, actor=principal.id)

    @staticmethod
    def _plan_for_stored(template: ScopeTemplate, row: CredentialRequest, *,
                         identity: CallerIdentity) -> tuple[MintPlan | None, tuple[str, ...]]:
        """The plan re-derived for a stored request (identity-bound values from ``identity``, the redeeming
        requester as it authenticated now), and the stored fields that disagree with it."""
        try:
            plan = plan_mint(template, request_id=row.id, grant_id=row.grant_id, requester=row.requester,
                             acts_for=row.acts_for, parameters=row.parameters, ttl_seconds=row.ttl_seconds,
                             identity=identity)
        except Forbidden:
            raise  # the caller lacks an identity value now: a refusal, not an altered row
        except BrokerError as exc:
            # A stored value no request could have had (the template is unchanged: its digest matched).
            return None, (exc.field or "parameters",)
        except ValueError:
            return None, ("parameters",)
        # NOTE: in the stored form's shape (plain dict, [key, value] lists): what was compared when the store
        # handed back JSON text, compared the same way.
        stored = {**{name: getattr(row, name) for name in plan.stored_form()},
                  "parameters": dict(row.parameters), "session_tags": [list(tag) for tag in row.session_tags]}
        altered = plan.disagreements(stored)
        if row.identity is not None and UNREADABLE in row.identity:
            # The identity values were edited into text no request holds: altered, not a changed caller.
            altered = (*altered, "identity")
        return plan, altered

    def _fail_altered(self, repo: UnitOfWork, row: CredentialRequest, plan: MintPlan | None, altered: tuple[str, ...], *,
                      actor: str, now: datetime) -> None:
        """The request ends failed, with a ``failed`` entry naming the altered fields; nothing is minted."""
        if not repo.transition_request(row.id, from_statuses=[RequestStatus.APPROVED.value],
                                       to_status=RequestStatus.FAILED.value, updated_at=now,
                                       decided_reason=STORED_REQUEST_ALTERED):
            raise Conflict("the request was already redeemed", code="request_already_redeemed")
        # NOTE: the entry carries what was approved (the plan's digest), not the edited row's.
        approved = {"policy_digest": plan.policy.digest} if plan is not None else {}
        repo.append_event(self._event(EventType.FAILED, row, actor=actor, now=now, reason_code=STORED_REQUEST_ALTERED,
                                      details={"altered": list(altered)}, **approved))


    # ------------------------------------------------------------------ events
    def _event(self, kind: EventType, row: CredentialRequest, *, actor: str, now: datetime, **extra: Any) -> dict[str, Any]:
        body = log_entry(kind, now=now)
        body.update(request_id=row.id, grant_id=row.grant_id, actor=actor,
                    acts_for=row.acts_for if actor == row.requester else None, template=row.template,
                    template_digest=row.template_digest, parameters=dict(row.parameters),
                    policy_digest=row.policy_digest, source_ip=row.source_ip)
        details = dict(extra.pop("details", None) or {})
        details.setdefault("requester", row.requester)
        details.setdefault("on_behalf_of", row.acts_for)
        details.setdefault("ttl_seconds", row.ttl_seconds)
        if row.identity is not None:
            details.setdefault("identity", stored_identity(row.identity))
        body["details"] = details
        body.update(extra)
        return body


def mint_intent_for(row: CredentialRequest, now: datetime) -> MintIntent:
    """The intent written before STS is called for ``row`` (an open one at start-up is an orphan)."""
    return MintIntent(grant_id=row.grant_id, request_id=row.id, role_arn=row.role_arn,
                         source_identity=row.source_identity, created_at=now)


__all__ = ["BrokerService", "RequestOutcome", "StorageUnavailable", "mint_intent_for"]
