"""What STS receives for a request, derived from what the approvals bind and from nothing else.

A request's stored row holds the rendered policy, the role, the session tags, ... for display and for the
log.  None of it is trusted when credentials are minted: :func:`plan_mint` derives every ``AssumeRole``
field again from the template (a file, not the database), the parameters, the requested TTL and the
request's identity (request id, grant id, requester, the human it acts for).  The approvals sign
:meth:`MintPlan.binding`'s digest; :meth:`MintPlan.disagreements` names every stored field that differs
from the plan, and a row that disagrees is never minted (issue 15 item 2: an ``UPDATE`` of the stored
policy after two approvals made redemption send ``*:*`` to STS).  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.domain.caller_identity import CallerIdentity, identity_session_tags, resolve_identity
from broker.domain.rendering import RenderedPolicy, check_condition_values, render_policy, validate_parameters
from broker.domain.requests import BindingFacts
from broker.domain.sts_rules import resolve_ttl, role_session_name, session_tags, source_identity_for
from broker.domain.templates import ScopeTemplate


@dataclass(frozen=True)
class MintPlan:
    """Every input of the ``AssumeRole`` call for one request, and the binding the approvals sign."""

    request_id: str
    grant_id: str
    template: str
    template_digest: str
    parameters: Mapping[str, str]
    policy: RenderedPolicy
    ttl_seconds: int
    session_name: str
    source_identity: str
    session_tags: tuple[tuple[str, str], ...]
    # Tag keys that pass on to roles the session assumes (the template's identity tags marked transitive).
    transitive_tag_keys: tuple[str, ...] = ()

    @property
    def identity(self) -> Mapping[str, str]:
        """The values bound to the caller's identity this plan was made with."""
        return self.policy.identity

    @property
    def role_arn(self) -> str:
        return self.policy.role_arn

    def binding(self) -> BindingFacts:
        return BindingFacts(request_id=self.request_id, template=self.template, template_digest=self.template_digest,
                            parameters=dict(self.parameters), role_arn=self.role_arn,
                            policy_digest=self.policy.digest, ttl_seconds=self.ttl_seconds,
                            session_tags=self.session_tags, source_identity=self.source_identity)

    def stored_form(self) -> dict[str, Any]:
        """The request row's fields as this plan would store them (``session_tags`` as [key, value] pairs)."""
        return {"template": self.template, "template_digest": self.template_digest,
                "parameters": dict(self.parameters), "role_arn": self.role_arn, "policy": self.policy.json,
                "policy_digest": self.policy.digest, "ttl_seconds": self.ttl_seconds,
                "session_name": self.session_name, "source_identity": self.source_identity,
                "session_tags": [list(tag) for tag in self.session_tags], "grant_id": self.grant_id,
                "binding_digest": self.binding().digest()}

    def disagreements(self, stored: Mapping[str, Any]) -> tuple[str, ...]:
        """The fields of ``stored`` (a row in :meth:`stored_form`'s shape) that differ from this plan."""
        return tuple(sorted(name for name, value in self.stored_form().items() if stored.get(name) != value))


def plan_mint(template: ScopeTemplate, *, request_id: str, grant_id: str, requester: str, acts_for: str | None,
              parameters: Mapping[str, Any] | None, ttl_seconds: int | None,
              identity: CallerIdentity | None = None) -> MintPlan:
    """The plan for a request: parameters validated and rendered, TTL bounded, STS's identity fields derived.
    ``identity``: the caller, for the template's identity-bound values (required when it has any).

    Raises what validation raises (``InvalidParameter``, ``InvalidTtl``, ``PolicyTooLarge``, ...), and
    ``Forbidden`` (403 ``identity_value_*``) for a caller without a usable identity value.
    """
    # NOTE: in the order request validation always had: parameters, TTL, the policy, STS's identity fields.
    values = validate_parameters(template, parameters)
    bound = resolve_identity(template, identity) if template.identity else {}
    if bound:
        check_condition_values(template, {**values, **bound})
    ttl = resolve_ttl(template, ttl_seconds)
    policy = render_policy(template, {**values, **bound})
    source_identity = source_identity_for(requester)
    extra, transitive = identity_session_tags(template, bound)
    tags = session_tags(request_id=request_id, template=template, agent=requester, human=acts_for or requester,
                        grant_id=grant_id, extra=extra)
    return MintPlan(request_id=request_id, grant_id=grant_id, template=template.name,
                    template_digest=template.version_digest, parameters=values, policy=policy, ttl_seconds=ttl,
                    session_name=role_session_name(requester, request_id), source_identity=source_identity,
                    session_tags=tuple((tag["Key"], tag["Value"]) for tag in tags), transitive_tag_keys=transitive)


__all__ = ["MintPlan", "plan_mint"]
