"""Blast radius: what a scope lets an agent do, in words a co-signer reads in seconds.

For a template (placeholders shown as ``{name}`` with their constraints) or for one concrete
request (the rendered policy), it names each risk class the grant carries in plain words (most
dangerous first: :mod:`broker.domain.risk`), lists the granted actions with the riskiest first, the resources in plain words ("objects under
s3://bucket/prefix/"), which grants hold only under conditions (decided by the evaluator),
the TTL and the approvals needed.  ``to_dict()`` feeds the approval page and the issuance log;
``to_text()`` is for people.  ``headline()`` is the one sentence an approver reads first: the most
dangerous thing the credentials can do, with its target.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.domain.actions import AccessLevel, ActionInfo, ActionKnowledge, Risk, action_words
from broker.domain.evaluator import AccessRequest, Outcome, PolicyKind, PolicySet, evaluate
from broker.domain.rendering import SESSION_POLICY_MAX_CHARS, RenderedPolicy
from broker.domain.risk import RANK, RiskFinding, classify, ordered, risk_of
from broker.domain.self_scope import statement_confined_by
from broker.domain.templates import ScopeTemplate

# Most dangerous first: the order a reviewer should read.
LEVEL_ORDER = (AccessLevel.PERMISSIONS_MANAGEMENT, AccessLevel.WRITE, AccessLevel.TAGGING, AccessLevel.READ,
               AccessLevel.LIST)

# ARN shapes -> plain words.  First match wins; anything else is shown as the ARN.
RESOURCE_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), f) for p, f in (
    (r"\*", "any resource (these actions have no resource-level permissions)"),
    (r"arn:aws[a-z-]*:s3:::(?P<b>[^/]+)/\*", "every object in s3://{b}"),
    (r"arn:aws[a-z-]*:s3:::(?P<b>[^/]+)/(?P<p>.+)/\*", "objects under s3://{b}/{p}/"),
    (r"arn:aws[a-z-]*:s3:::(?P<b>[^/]+)/(?P<k>.+)", "object s3://{b}/{k}"),
    (r"arn:aws[a-z-]*:s3:::(?P<b>[^/]+)", "bucket s3://{b}"),
    (r"arn:aws[a-z-]*:logs:[^:]*:[^:]*:log-group:(?P<g>[^:]+):log-stream:\*", "every log stream of log group {g}"),
    (r"arn:aws[a-z-]*:logs:[^:]*:[^:]*:log-group:(?P<g>[^:]+)(:\*)?", "log group {g}"),
    (r"arn:aws[a-z-]*:lambda:[^:]*:[^:]*:function:(?P<f>[^:]+)", "Lambda function {f}"),
    (r"arn:aws[a-z-]*:ecs:[^:]*:[^:]*:service/(?P<c>[^/]+)/(?P<s>[^/]+)", "ECS service {s} in cluster {c}"),
    (r"arn:aws[a-z-]*:cloudformation:[^:]*:[^:]*:stack/(?P<n>[^/]+)/\*", "CloudFormation stack {n}"),
    (r"arn:aws[a-z-]*:iam::[^:]*:role/(?P<r>.+)", "IAM role {r}"),
))


# How many targets the headline names before it counts the rest.
HEADLINE_TARGETS = 2


def describe_resource(resource: str) -> str:
    for pattern, phrase in RESOURCE_PHRASES:
        match = pattern.fullmatch(resource)
        if match:
            return phrase.format(**match.groupdict())
    return resource


@dataclass(frozen=True)
class GrantedAction:
    action: str                      # service:Action, AWS's spelling
    access_level: AccessLevel
    risks: tuple[Risk, ...]
    resources: tuple[str, ...]
    conditions: tuple[str, ...]      # "only when ..." phrases, if the grant depends on the request
    description: str
    # Identity values confining every resource of the grant: it reaches only the caller's own ones.
    own: tuple[str, ...] = ()

    @property
    def only_own(self) -> str:
        """``, only the caller's own workspace`` (empty when the grant is not confined to the caller)."""
        return f", only the caller's own {' and '.join(self.own)}" if self.own else ""

    @property
    def sentence(self) -> str:
        where = "; ".join(describe_resource(r) for r in self.resources)
        name = self.action.split(":", 1)[1]
        text = f"can {action_words(name)} on {where} ({self.action}){self.only_own}"
        if self.conditions:
            text += " only when " + " and ".join(self.conditions)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "access_level": self.access_level.value,
                "risks": [r.value for r in self.risks], "resources": list(self.resources),
                "conditions": list(self.conditions), "sentence": self.sentence, "description": self.description,
                "only_callers_own": list(self.own)}


@dataclass(frozen=True)
class BlastRadius:
    template: str
    environment: str
    role: str
    concrete: bool                              # True for a rendered request, False for the template
    actions: tuple[GrantedAction, ...]          # destructive, then permission-changing, then by level
    parameters: Mapping[str, str]               # concrete values, or constraints in words
    ttl_default: int
    ttl_max: int
    approvals: int
    approvers: tuple[str, ...]
    approval_expires_after: int
    policy_size: int | None
    policy_digest: str | None
    risk: tuple[RiskFinding, ...] = ()          # each class granted, most dangerous first
    identity: Mapping[str, str] = field(default_factory=dict)   # identity-bound values, in words

    @property
    def destructive(self) -> tuple[GrantedAction, ...]:
        return tuple(a for a in self.actions if Risk.DESTRUCTIVE in a.risks)

    @property
    def permission_changing(self) -> tuple[GrantedAction, ...]:
        return tuple(a for a in self.actions if Risk.PERMISSION_CHANGING in a.risks)

    @property
    def resources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for a in self.actions for r in a.resources))

    @property
    def danger(self) -> str:
        """The headline's label: the most dangerous risk class of the first grant (``destructive``,
        ``permission-changing``, ...), else ``write`` or ``read-only`` (``none`` when nothing known is granted)."""
        if not self.actions:
            return "none"
        first = self.actions[0]
        if first.risks:
            return first.risks[0].value
        return "read-only" if first.access_level.read_only else "write"

    def headline(self) -> str:
        """The most dangerous thing these credentials can do, with its target, in one sentence.

        ``actions`` is ordered most dangerous first, so the first grant is the one named; the rest are counted.
        """
        if not self.actions:
            return (f"These credentials grant no action the broker knows ({self.environment}): "
                    "read the exact policy before deciding.")
        first = self.actions[0]
        name = first.action.split(":", 1)[1]
        targets = [describe_resource(r) for r in first.resources]
        where = "; ".join(targets[:HEADLINE_TARGETS])
        if len(targets) > HEADLINE_TARGETS:
            where += f" and {len(targets) - HEADLINE_TARGETS} more"
        text = f"Can {action_words(name)} on {where} in {self.environment}{first.only_own}"
        if first.conditions:
            text += " only when " + " and ".join(first.conditions)
        others = len({a.action for a in self.actions[1:]} - {first.action})
        if others:
            text += f", plus {others} other action{'s' if others > 1 else ''}"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        by_level: dict[str, list[str]] = {}
        for granted in self.actions:
            names = by_level.setdefault(granted.access_level.value, [])
            if granted.action not in names:
                names.append(granted.action)
        return {
            "template": self.template, "environment": self.environment, "role": self.role,
            "concrete": self.concrete,
            "risk": [finding.to_dict() for finding in self.risk],
            "destructive": list(dict.fromkeys(a.action for a in self.destructive)),
            "permission_changing": list(dict.fromkeys(a.action for a in self.permission_changing)),
            "by_access_level": by_level,
            "actions": [a.to_dict() for a in self.actions],
            "resources": list(self.resources),
            "parameters": dict(self.parameters),
            "identity": dict(self.identity),
            "ttl": {"default": self.ttl_default, "max": self.ttl_max},
            "approval": {"approvals": self.approvals, "approvers": list(self.approvers),
                         "expires_after": self.approval_expires_after},
            "policy": {"size": self.policy_size, "limit": SESSION_POLICY_MAX_CHARS, "digest": self.policy_digest},
            "summary": self.sentences(),
            "headline": self.headline(),
            "danger": self.danger,
        }

    def sentences(self) -> list[str]:
        lines = []
        for granted in self.actions:
            tags = [r.value.upper() for r in granted.risks]
            prefix = f"[{', '.join(tags)}] " if tags else ""
            lines.append(prefix + granted.sentence[0].upper() + granted.sentence[1:] + ".")
        lines.append(f"Credentials last {_duration(self.ttl_default)} by default, at most {_duration(self.ttl_max)}.")
        if self.approvals:
            lines.append(f"Needs {self.approvals} approval{'s' if self.approvals > 1 else ''} from "
                         f"{', '.join(self.approvers)} before use; a request expires after "
                         f"{_duration(self.approval_expires_after)} without them.")
        else:
            lines.append("Needs no approval: issued on request.")
        return lines

    def to_text(self) -> str:
        head = (f"Scope '{self.template}' ({self.environment}) as role {self.role}"
                + ("" if self.concrete else " (template: values in {braces} are chosen per request)"))
        out = [head]
        if self.parameters:
            out.append("Parameters: " + "; ".join(f"{k} = {v}" for k, v in self.parameters.items()))
        if self.identity:
            out.append("Bound to the caller (never chosen by the request): "
                       + "; ".join(f"{k} = {v}" for k, v in self.identity.items()))
        if self.risk:
            out.append("RISK (most dangerous first):")
            out.extend(f"  - {finding.line}" for finding in self.risk)
        else:
            out.append("RISK: none of the taxonomy's classes.")
        sections: list[tuple[str, list[GrantedAction]]] = [
            ("DESTRUCTIVE", list(self.destructive)),
            ("CHANGES PERMISSIONS", [a for a in self.permission_changing if a not in self.destructive]),
        ]
        risky = {a.action for a in self.destructive + self.permission_changing}
        for level in LEVEL_ORDER:
            sections.append((level.value, [a for a in self.actions if a.access_level is level
                                           and a.action not in risky]))
        for title, items in sections:
            if items:
                out.append(f"{title}:")
                out.extend(f"  - {a.sentence}" for a in items)
        out.extend(self.sentences()[len(self.actions):])
        if self.policy_size is not None:
            out.append(f"Session policy: {self.policy_size} of {SESSION_POLICY_MAX_CHARS} characters "
                       f"({self.policy_size / SESSION_POLICY_MAX_CHARS:.0%}).")
        return "\n".join(out)


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours > 1 else ''}"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def _condition_phrases(statement: Mapping[str, Any]) -> tuple[str, ...]:
    phrases = []
    for operator, by_key in (statement.get("Condition") or {}).items():
        for key, values in by_key.items():
            shown = values if isinstance(values, str) else " or ".join(str(v) for v in values)
            phrases.append(f"{key} {operator} {shown}")
    return tuple(phrases)


def _parameter_constraints(template: ScopeTemplate) -> dict[str, str]:
    out = {}
    for name, spec in template.parameters.items():
        if spec.enum:
            text = "one of " + ", ".join(spec.enum)
        elif spec.pattern:
            text = f"matches {spec.pattern}"
        else:
            text = f"any {spec.type}"
        if spec.default is not None:
            text += f" (default {spec.default})"
        out[name] = text
    return out


def _template_document(template: ScopeTemplate) -> dict[str, Any]:
    statements = []
    for s in template.statements:
        statement: dict[str, Any] = {"Sid": s.sid, "Effect": s.effect, "Action": list(s.actions),
                                     "Resource": list(s.resources)}
        if s.conditions:
            statement["Condition"] = s.conditions
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def assess(template: ScopeTemplate, *, actions: ActionKnowledge, rendered: RenderedPolicy | None = None,
           parameters: Mapping[str, str] | None = None) -> BlastRadius:
    """The blast radius of a template, or of one request when ``rendered`` is given."""
    document = rendered.document if rendered is not None else _template_document(template)
    session = PolicySet.of(PolicyKind.SESSION, document, name="session")
    # One entry per (action, conditions): a grant that holds only under conditions is never merged with
    # one that holds always, or the co-signer would read one as the other.
    granted: dict[tuple[str, tuple[str, ...]], GrantedAction] = {}
    seen: dict[str, ActionInfo] = {}
    aligned = bool(template.identity) and len(document["Statement"]) == len(template.statements)
    for index, statement in enumerate(document["Statement"]):
        patterns = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = tuple(statement["Resource"] if isinstance(statement["Resource"], list)
                          else [statement["Resource"]])
        infos: list[ActionInfo] = []
        for pattern in patterns:
            found = actions.expand(pattern) if any(c in pattern for c in "*?") else (actions.lookup(pattern),)
            infos.extend(info for info in found if info is not None)
        seen.update((info.lower, info) for info in infos)
        own = statement_confined_by(template, index, resources if rendered is not None else None,
                                    rendered.identity if rendered is not None else None) if aligned else ()
        for info in infos:
            # The evaluator decides whether the grant holds for any request or only some.
            decisions = [evaluate([session], AccessRequest(info.key, r)) for r in resources]
            conditional = any(d.outcome is Outcome.UNDECIDABLE for d in decisions)
            conditions = _condition_phrases(statement) if conditional else ()
            previous = granted.get((info.lower, conditions))
            merged = tuple(dict.fromkeys((previous.resources if previous else ()) + resources))
            # NOTE: merged with another statement's grant, it is the caller's own only if both are.
            owned = own if previous is None else tuple(dict.fromkeys(previous.own + own)) if previous.own and own else ()
            granted[(info.lower, conditions)] = GrantedAction(
                action=info.key, access_level=info.access_level,
                risks=tuple(ordered(classify(info))), resources=merged, conditions=conditions,
                description=info.description, own=owned)
    riskiest_first = sorted(granted.values(), key=lambda g: (min((RANK[r] for r in g.risks), default=len(RANK)),
                                                             LEVEL_ORDER.index(g.access_level), g.action,
                                                             g.conditions))
    return BlastRadius(
        template=template.name, environment=template.environment.value,
        role=rendered.role_arn if rendered is not None else template.role,
        concrete=rendered is not None, actions=tuple(riskiest_first),
        parameters=dict(parameters) if parameters is not None else _parameter_constraints(template),
        ttl_default=template.ttl.default, ttl_max=template.ttl.max,
        approvals=template.approval.approvals, approvers=tuple(template.approval.approvers),
        approval_expires_after=template.approval.expires_after,
        policy_size=rendered.size if rendered is not None else None,
        policy_digest=rendered.digest if rendered is not None else None,
        risk=tuple(risk_of(seen.values())),
        identity=_identity_words(template, rendered),
    )


def _identity_words(template: ScopeTemplate, rendered: RenderedPolicy | None) -> dict[str, str]:
    """Each identity value: the caller's own value for a request, where it comes from for the template."""
    words = {}
    for name, spec in template.identity.items():
        if rendered is not None and name in rendered.identity:
            words[name] = f"{rendered.identity[name]}, {spec.words(name)}"
        else:
            words[name] = spec.words(name)
    return words
