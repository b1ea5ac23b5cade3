"""What a request and a grant look like to the API and the approver pages (never a secret)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from broker.domain.records import CredentialRequest, Grant
from broker.domain.rendering import RenderedPolicy, render_policy
from broker.domain.requests import RequestStatus
from broker.domain.templates import ScopeTemplate
from broker.domain.times import iso
from broker.errors import BrokerError
from broker.ports import TemplateSource
from broker.usecases.caller import stored_identity


def grant_view(grant: Grant, *, ttl_seconds: int) -> dict[str, Any]:
    return {"id": grant.id, "request_id": grant.request_id, "access_key_id": grant.access_key_id,
            "expiration": iso(grant.expiration), "role_arn": grant.role_arn, "session_name": grant.session_name,
            "source_identity": grant.source_identity, "policy_digest": grant.policy_digest, "ttl_seconds": ttl_seconds,
            "revoked_at": iso(grant.revoked_at)}


def _stored_policy(text: str) -> Any:
    """The stored policy as JSON, or its text when it is not JSON (edited in the database: shown, never minted)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class RequestViews:
    """The request view, with its template's blast radius and risks (a part of ``BrokerService``)."""

    _risk_cache: dict[tuple[str, str], list[str]]
    blast_radius: Callable[[ScopeTemplate, RenderedPolicy | None], dict[str, Any]] | None
    catalog: TemplateSource
    public_url: str

    def request_view(self, row: CredentialRequest, *, template: ScopeTemplate | None = None,
                     approvals: list[dict[str, Any]] | None = None,
                     issued_at: datetime | None = None) -> dict[str, Any]:
        """``issued_at``: the view of ``row`` as issued then (the issuance path's answer, without a copy of the
        record for its two fields)."""
        status = row.status if issued_at is None else RequestStatus.ISSUED.value
        view: dict[str, Any] = {
            "id": row.id, "status": status, "template": row.template, "template_digest": row.template_digest,
            "environment": row.environment, "parameters": dict(row.parameters), "role_arn": row.role_arn,
            "policy": _stored_policy(row.policy), "policy_digest": row.policy_digest, "ttl_seconds": row.ttl_seconds,
            "binding_digest": row.binding_digest, "requester": row.requester, "acts_for": row.acts_for,
            "reason": row.reason, "created_at": iso(row.created_at), "approvals_required": row.approvals_required,
            "pending_expires_at": iso(row.pending_expires_at), "approved_at": iso(row.approved_at),
            "redeem_by": iso(row.redeem_by), "issued_at": iso(row.issued_at if issued_at is None else issued_at),
            "identity": stored_identity(row.identity),
            "links": {"self": f"/v1/requests/{row.id}", "approve": f"/v1/requests/{row.id}/approvals",
                      "redeem": f"/v1/requests/{row.id}/credentials", "page": f"{self.public_url}/ui/requests/{row.id}"},
        }
        if approvals is not None:
            view["approvals"] = approvals
            view["approvals_counted"] = len({a["approver"] for a in approvals if a["decision"] == "approve"
                                             and a["binding_digest"] == row.binding_digest})
        if row.decided_reason and status in (RequestStatus.DENIED.value, RequestStatus.FAILED.value):
            view["decided_reason"] = row.decided_reason
        if template is None:
            try:
                template = self.catalog.get(row.template)
            except BrokerError:
                template = None
        if template is not None:
            view["approvers"] = list(template.approval.approvers)
            # The blast radius is for humans deciding; an issued request does not need it recomputed.
            if self.blast_radius is not None and status != RequestStatus.ISSUED.value:
                try:
                    view["blast_radius"] = self.blast_radius(template, render_policy(
                        template, {**row.parameters, **stored_identity(row.identity)}))
                    # Each risk class of the exact policy, most dangerous first, in plain words.
                    view["risk"] = view["blast_radius"].get("risk", [])
                except (BrokerError, TypeError, ValueError):
                    # NOTE: TypeError/ValueError: stored parameters edited into values no request has (the row
                    # is shown as it is; redeeming it fails as altered).
                    view["blast_radius"] = None
        return view

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


__all__ = ["RequestViews", "grant_view"]
