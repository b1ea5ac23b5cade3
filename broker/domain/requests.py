"""Credential requests, their lifecycle, and the approval (co-signing) rules.

Lifecycle::

    (no approval needed)   requested -> issued | failed
    (co-signed)            pending -> approved -> issued
                           pending -> denied | expired | cancelled
                           approved -> expired (not redeemed in time) | cancelled

The two-person rule is enforced here whatever a template says: the requester
never approves, nor does the human the agent acts for; one human counts once;
only principals allowed by the template's approver list (and holding the
approver role) count.  An approval signs the request's *binding digest*: any
change to what would be minted voids it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from broker.domain.principals import Principal, Role
from broker.domain.templates import ApprovalRule
from broker.domain.text import unsafe_characters
from broker.errors import Conflict, Forbidden, InvalidInput


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    ISSUED = "issued"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # Intermediate: the STS call is in flight (an intent row exists).
    ISSUING = "issuing"


TERMINAL = frozenset({RequestStatus.ISSUED, RequestStatus.DENIED, RequestStatus.EXPIRED,
                      RequestStatus.CANCELLED, RequestStatus.FAILED})


class Decision(StrEnum):
    APPROVE = "approve"
    DENY = "deny"


@dataclass(frozen=True)
class BindingFacts:
    """Everything that determines what would be minted.  An approval signs its digest."""

    request_id: str
    template: str
    template_digest: str
    parameters: Mapping[str, str]
    role_arn: str
    policy_digest: str
    ttl_seconds: int
    session_tags: tuple[tuple[str, str], ...]
    source_identity: str

    def digest(self) -> str:
        body = {
            "request_id": self.request_id,
            "template": self.template,
            "template_digest": self.template_digest,
            "parameters": dict(sorted(self.parameters.items())),
            "role_arn": self.role_arn,
            "policy_digest": self.policy_digest,
            "ttl_seconds": self.ttl_seconds,
            "session_tags": sorted(self.session_tags),
            "source_identity": self.source_identity,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return "sha256:" + hashlib.sha256(b"broker.binding.v1\x00" + canonical).hexdigest()


@dataclass(frozen=True)
class CoSignature:
    """One human's decision on one request, bound to the digest they saw."""

    approver: str
    decision: Decision
    binding_digest: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class PendingFacts:
    """What the approval rules need to know about a request."""

    requester: str
    acts_for: str | None
    binding_digest: str
    # The person (``Principal.person``) of the human the agent acts for, when the directory knows them: their
    # other ids may not approve either.
    acts_for_person: str | None = None


def may_approve(rule: ApprovalRule, facts: PendingFacts, approver: Principal) -> None:
    """Raise ``Forbidden`` unless ``approver`` may co-sign this request."""
    if not rule.approvers:
        raise Forbidden("this request has no approvers configured", code="no_approvers")
    if Role.APPROVER not in approver.roles:
        raise Forbidden("only principals with the approver role may co-sign", code="not_an_approver")
    if approver.acts_for is not None:
        # NOTE: agents never co-sign, even if misconfigured with the approver role.
        raise Forbidden("an agent cannot co-sign a request", code="agent_cannot_approve")
    if approver.id == facts.requester:
        raise Forbidden("the requester cannot approve their own request", code="self_approval")
    if facts.acts_for is not None and (approver.id == facts.acts_for
                                       or (facts.acts_for_person is not None
                                           and approver.person == facts.acts_for_person)):
        raise Forbidden("the human an agent acts for cannot approve that agent's request",
                        code="approver_is_principal_human")
    if not any(approver.matches(selector) for selector in rule.approvers):
        raise Forbidden("you are not an approver for this template", code="not_an_approver")


def may_deny(rule: ApprovalRule, facts: PendingFacts, principal: Principal) -> None:
    """Raise ``Forbidden`` unless ``principal`` may refuse this request.

    Refusing only ever stops credentials, so it is open to every eligible co-signer *and* to the
    human the agent acts for (their veto over their own agent).  The agent itself cancels instead.
    """
    if facts.acts_for is not None and principal.id == facts.acts_for and principal.acts_for is None:
        return
    may_approve(rule, facts, principal)


def counted_approvals(signatures: Iterable[CoSignature], *, binding_digest: str,
                      still_allowed: Mapping[str, bool], person_of: Mapping[str, str] | None = None) -> set[str]:
    """Distinct humans whose approval of *this exact binding* still stands (one approver id per person).

    ``still_allowed`` says, for each approver id, whether they pass :func:`may_approve` now
    (re-checked at redemption: a removed approver no longer counts).  ``person_of`` maps an approver id to
    its person (``Principal.person``): two ids of one person count once.
    """
    counted: dict[str, str] = {}
    for sig in signatures:
        if (sig.decision is Decision.APPROVE and sig.binding_digest == binding_digest
                and still_allowed.get(sig.approver, False)):
            counted.setdefault((person_of or {}).get(sig.approver, sig.approver), sig.approver)
    return set(counted.values())


def require_status(current: RequestStatus, allowed: Iterable[RequestStatus], *, action: str) -> None:
    allowed = tuple(allowed)
    if current not in allowed:
        raise Conflict(f"cannot {action} a request that is {current.value}",
                       code=f"request_{current.value}", details={"status": current.value})


def request_summary(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


# What a reason may hold: what approvers read is what was written.
MAX_REASON = 1000


def clean_reason(reason: Any) -> str:
    """A request's or a decision's reason, stripped; refused when missing, too long or not plain text."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a reason is required: say what the credentials are for", code="missing_reason",
                           field="reason")
    if len(reason) > MAX_REASON or unsafe_characters(reason):
        # NOTE: control and bidirectional characters would make what approvers read differ from what was written.
        raise InvalidInput(f"reason must be at most {MAX_REASON} printable characters (no control or bidirectional "
                           "formatting characters)", code="invalid_reason", field="reason")
    return reason.strip()
