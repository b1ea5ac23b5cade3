"""Tightening from use: what the sessions issued from one template really did, per statement.

The sessions are found through the issuance log (``issued`` entries of the template: access key id,
parameters, requester).  A CloudTrail call belongs to a session when it was signed with that
session's access key id, or (a record without one) when its assumed-role session name and
SourceIdentity are the ones the broker set for that request.  Each call is attributed to the
template statements whose rendered actions and resources match it (the session's own parameters
fill the placeholders): a call with an ``errorCode`` of AccessDenied and its kin is *denied*, any
other is *used*.  A denied call that no statement grants is the agent trying something outside the
scope; a statement never matched by any call is unused.

:func:`suggest` turns that into a tighter template: actions never used are removed, statements
with no used action are removed, and a wildcard resource without ``{placeholders}`` is narrowed to
the ARNs that were used (at most :data:`MAX_NARROWED_RESOURCES`).  Conditions, parameters, approval
and TTL are kept as they are.  A resource pattern that calls never named (CloudTrail names resources
for data events only) is kept: unknown is not unused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.domain.actions import ActionKnowledge
from broker.domain.cloudtrail import ApiCall, TrailRecords, iso
from broker.domain.evaluator import action_matches, arn_matches
from broker.domain.events import EventType
from broker.domain.guardrails import CAPABILITIES, check_template
from broker.domain.rendering import render_policy, validate_parameters
from broker.domain.risk import classify
from broker.domain.sts_rules import role_session_name, source_identity_for
from broker.domain.templates import PLACEHOLDER, ScopeTemplate, Statement
from broker.errors import BrokerError, InvalidInput

MAX_NARROWED_RESOURCES = 10
NOT_NAMED = "(resource not named by CloudTrail)"


@dataclass(frozen=True)
class IssuedSession:
    request_id: str
    access_key_id: str | None
    session_name: str | None
    source_identity: str | None
    template_digest: str | None
    statements: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] | None   # rendered (actions, resources)


@dataclass
class StatementUsage:
    index: int
    sid: str | None
    actions: tuple[str, ...]                 # as the template writes them
    granted: tuple[str, ...]                 # concrete actions they expand to (when known)
    resources: tuple[str, ...]               # as the template writes them
    used: Counter = field(default_factory=Counter)                       # action -> calls
    used_resources: dict[int, set[str]] = field(default_factory=dict)    # resource index -> ARNs
    unnamed_uses: int = 0                    # used calls whose resource CloudTrail did not name
    denied: Counter = field(default_factory=Counter)                     # (action, resource) -> calls

    @property
    def never_used(self) -> list[str]:
        used = {a.lower() for a in self.used}
        return [a for a in self.granted if a.lower() not in used]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "sid": self.sid, "actions": list(self.actions),
                "granted_actions": len(self.granted),
                "used": dict(sorted(self.used.items())), "never_used": self.never_used,
                "resources": [{"resource": r, "used": sorted(self.used_resources.get(j, ())),
                               "matched": j in self.used_resources} for j, r in enumerate(self.resources)],
                "uses_without_resource": self.unnamed_uses,
                "denied": [{"action": a, "resource": r, "calls": n} for (a, r), n in sorted(self.denied.items())]}


@dataclass
class TemplateUsage:
    template: ScopeTemplate
    sessions: int
    sessions_with_calls: int
    calls: int
    statements: list[StatementUsage]
    denied_outside: Counter = field(default_factory=Counter)     # (action, resource) not granted, denied
    allowed_outside: Counter = field(default_factory=Counter)    # not granted by the template, not denied
    other_versions: int = 0                                      # sessions issued from another digest
    unrenderable: int = 0                                        # sessions the current version cannot render
    first: str | None = None
    last: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template.name, "digest": self.template.version_digest,
                "sessions": self.sessions, "sessions_with_calls": self.sessions_with_calls, "calls": self.calls,
                "sessions_from_other_versions": self.other_versions, "sessions_not_renderable": self.unrenderable,
                "cloudtrail_window": {"first_record": self.first, "last_record": self.last},
                "statements": [s.to_dict() for s in self.statements],
                "denied_not_granted": [{"action": a, "resource": r, "calls": n}
                                       for (a, r), n in sorted(self.denied_outside.items())],
                "not_granted_but_not_denied": [{"action": a, "resource": r, "calls": n}
                                               for (a, r), n in sorted(self.allowed_outside.items())]}

    def to_text(self) -> str:
        lines = [f"template {self.template.name} ({self.template.version_digest}): {self.sessions} session(s) in "
                 f"the log, {self.sessions_with_calls} with calls in CloudTrail, {self.calls} call(s) "
                 f"({self.first} .. {self.last})"]
        if self.other_versions:
            lines.append(f"  note: {self.other_versions} session(s) were issued from another version of the template")
        for s in self.statements:
            lines.append(f"statement {s.index}{f' ({s.sid})' if s.sid else ''}: {', '.join(s.actions)}")
            for action, count in sorted(s.used.items()):
                lines.append(f"  used      {action} ({count} call(s))")
            never = s.never_used
            if never:
                shown = ", ".join(never[:8]) + (f" and {len(never) - 8} more" if len(never) > 8 else "")
                lines.append(f"  never     {shown}")
            for j, resource in enumerate(s.resources):
                arns = sorted(s.used_resources.get(j, ()))
                state = f"used: {', '.join(arns[:5])}" + (" ..." if len(arns) > 5 else "") if arns else "never matched"
                lines.append(f"  resource  {resource}: {state}")
            for (action, resource), count in sorted(s.denied.items()):
                lines.append(f"  DENIED    {action} on {resource} ({count} call(s)): granted here, refused by AWS")
        for (action, resource), count in sorted(self.denied_outside.items()):
            lines.append(f"DENIED, not granted: {action} on {resource} ({count} call(s))")
        for (action, resource), count in sorted(self.allowed_outside.items()):
            lines.append(f"not granted by the template, yet not denied: {action} on {resource} ({count} call(s))")
        return "\n".join(lines)


def _render(template: ScopeTemplate, parameters: Any):
    values = validate_parameters(template, parameters if isinstance(parameters, dict) else {})
    document = render_policy(template, values).document
    return tuple((tuple(s["Action"]), tuple(s["Resource"])) for s in document["Statement"])


def issued_sessions(template: ScopeTemplate, entries: Iterable[Mapping[str, Any]]) -> tuple[list[IssuedSession], int]:
    sessions, unrenderable = [], 0
    for entry in entries:
        if entry.get("type") != EventType.ISSUED or entry.get("template") != template.name:
            continue
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        requester, request_id = details.get("requester"), entry.get("request_id")
        try:
            statements = _render(template, entry.get("parameters"))
        except BrokerError:
            statements, unrenderable = None, unrenderable + 1
        try:
            identity = source_identity_for(requester) if requester else None
        except InvalidInput:
            identity = None
        sessions.append(IssuedSession(
            request_id=request_id, access_key_id=entry.get("access_key_id"),
            session_name=role_session_name(requester, request_id) if requester and request_id else None,
            source_identity=identity, template_digest=entry.get("template_digest"), statements=statements))
    return sessions, unrenderable


def _session_of(call: ApiCall, by_key: Mapping[str, IssuedSession],
                by_name: Mapping[tuple[str, str], IssuedSession]) -> IssuedSession | None:
    if call.access_key_id and call.access_key_id in by_key:
        return by_key[call.access_key_id]
    if not call.access_key_id and call.session_name and call.source_identity:
        return by_name.get((call.session_name, call.source_identity))
    return None


def _matches(rendered: tuple[tuple[str, ...], tuple[str, ...]], call: ApiCall) -> list[int] | None:
    """Indexes of the rendered resources the call matches ([] when CloudTrail named none); None: no match."""
    actions, resources = rendered
    if not any(action_matches(a, call.action) for a in actions):
        return None
    if not call.resources:
        return []
    hits = [j for j, pattern in enumerate(resources) if any(arn_matches(pattern, arn) for arn in call.resources)]
    return hits or None


def _expand(actions: ActionKnowledge, patterns: Sequence[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for pattern in patterns:
        found = actions.expand(pattern) if any(c in pattern for c in "*?") else (actions.lookup(pattern),)
        known = [i.key for i in found if i is not None]
        out.update(dict.fromkeys(known or [pattern]))
    return tuple(out)


def measure(template: ScopeTemplate, *, entries: Sequence[Mapping[str, Any]], trail: TrailRecords,
            actions: ActionKnowledge) -> TemplateUsage:
    sessions, unrenderable = issued_sessions(template, entries)
    by_key = {s.access_key_id: s for s in sessions if s.access_key_id}
    by_name = {(s.session_name, s.source_identity): s for s in sessions if s.session_name and s.source_identity}
    statements = [StatementUsage(index=i, sid=s.sid, actions=tuple(s.actions), granted=_expand(actions, s.actions),
                                 resources=tuple(dict.fromkeys(s.resources)))
                  for i, s in enumerate(template.statements)]
    usage = TemplateUsage(template=template, sessions=len(sessions), sessions_with_calls=0, calls=0,
                          statements=statements, unrenderable=unrenderable,
                          other_versions=sum(s.template_digest != template.version_digest for s in sessions),
                          first=iso(trail.first), last=iso(trail.last))
    active: set[str] = set()
    seen_events: set[str] = set()
    for call in trail.calls:
        session = _session_of(call, by_key, by_name)
        if session is None or session.statements is None:
            continue
        if call.event_id:
            if call.event_id in seen_events:   # one call in two aggregated trails
                continue
            seen_events.add(call.event_id)
        usage.calls += 1
        active.add(session.request_id)
        shown_resource = call.resources[0] if call.resources else NOT_NAMED
        hits = [(i, m) for i, rendered in enumerate(session.statements)
                if (m := _matches(rendered, call)) is not None]
        if not hits:
            (usage.denied_outside if call.denied else usage.allowed_outside)[(call.action, shown_resource)] += 1
            continue
        for i, resource_hits in hits:
            stats = statements[i]
            if call.denied:
                stats.denied[(call.action, shown_resource)] += 1
                continue
            stats.used[_spelling(actions, call.action)] += 1
            if not resource_hits:
                stats.unnamed_uses += 1
            rendered_resources = session.statements[i][1]
            for j in resource_hits:
                stats.used_resources.setdefault(j, set()).update(
                    arn for arn in call.resources if arn_matches(rendered_resources[j], arn))
    usage.sessions_with_calls = len(active)
    return usage


def _spelling(actions: ActionKnowledge, action: str) -> str:
    info = actions.lookup(action)
    return info.key if info is not None else action


def _tightened_statement(template_statement: Statement, stats: StatementUsage) -> Statement | None:
    used = sorted(stats.used)
    if not used:
        return None
    resources: list[str] = []
    for j, pattern in enumerate(stats.resources):
        arns = stats.used_resources.get(j)
        if arns is None:
            if stats.unnamed_uses:
                resources.append(pattern)   # NOTE: unknown is not unused: a call without a named resource
            continue
        narrowable = ("*" in pattern or "?" in pattern) and not PLACEHOLDER.search(pattern)
        if narrowable and len(arns) <= MAX_NARROWED_RESOURCES:
            resources.extend(sorted(a for a in arns if arn_matches(pattern, a)))
        else:
            resources.append(pattern)
    resources = list(dict.fromkeys(resources)) or list(stats.resources)
    return template_statement.model_copy(update={"actions": used, "resources": resources})


def suggest(template: ScopeTemplate, usage: TemplateUsage, *, actions: ActionKnowledge) -> ScopeTemplate:
    """A tighter template from ``usage``; raises InvalidInput when nothing was used or it would not lint clean."""
    kept = [s for s in (_tightened_statement(t, u) for t, u in zip(template.statements, usage.statements, strict=True))
            if s is not None]
    if not kept:
        raise InvalidInput(f"no action of template '{template.name}' was used in these CloudTrail records: "
                           "nothing to keep (retire the template, or read a longer window)",
                           code="nothing_used", field="cloudtrail")
    data = template.model_dump(mode="python")
    data["statements"] = [s.model_dump(mode="python") for s in kept]
    tightened = ScopeTemplate.model_validate(data)
    # Declared risks that no longer appear would be lint warnings: drop them with the actions.
    present = {risk for s in tightened.statements for i in _infos(actions, s.actions) for risk in classify(i)}
    capabilities = [c for c in tightened.capabilities if CAPABILITIES.get(c) in present]
    destructive = tightened.destructive and any(r.value == "destructive" for r in present)
    tightened = ScopeTemplate.model_validate(tightened.model_dump(mode="python")
                                             | {"capabilities": capabilities, "destructive": destructive})
    findings = [f for f in check_template(tightened, actions=actions) if f.blocking]
    if findings:
        raise InvalidInput(f"the tightened template would not lint clean: {findings[0]}", code="suggestion_not_clean",
                           details={"findings": [str(f) for f in findings]})
    return tightened


def _infos(actions: ActionKnowledge, patterns: Sequence[str]):
    for pattern in patterns:
        found = actions.expand(pattern) if any(c in pattern for c in "*?") else (actions.lookup(pattern),)
        yield from (i for i in found if i is not None)
