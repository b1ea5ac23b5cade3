"""What changed between two versions of the template catalog, and whether it widens what agents may do.

Per template: statements added and removed, the grants (action x resource x conditions) added and removed,
the risk classes gained and lost, approval, TTL, requester, role, parameter and environment changes, each
in words, and one verdict: *widens* or *narrows or same*.

A change widens when a new version lets some agent get more than the old one could:

* a template appears (a new scope), or any grant appears that no old grant covers (same action; the old
  resource pattern matches the new one; the old grant held under the same conditions or none);
* a risk class appears; the template leaves production; fewer approvals; more approvers or requesters;
  a longer TTL (default or max); a later redemption or approval expiry; another role;
* a parameter accepts more (values added to an enum, a pattern or type changed, a longer max_length,
  a wider min/max, an enum or pattern removed) or a new parameter appears;
* conditions removed from a statement show as a grant that no old grant covers.

Unknown is not narrow: a parameter pattern that changed in any way counts as widening (regular
expressions are not compared for inclusion).  Pure: templates and the action knowledge in, values out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.domain.actions import ActionKnowledge, action_words
from broker.domain.blast_radius import describe_resource
from broker.domain.evaluator import action_matches, arn_matches
from broker.domain.risk import classify
from broker.domain.templates import Environment, ScopeTemplate, Statement

# Environments from least to most guarded.
ENVIRONMENT_RANK = {Environment.DEV: 0, Environment.STAGING: 1, Environment.PRODUCTION: 2}


@dataclass(frozen=True, order=True)
class Grant:
    action: str              # service:Action (AWS spelling when known), or the pattern as written
    resource: str            # as written in the template ({placeholders} kept)
    conditions: str          # canonical JSON of the statement's Condition block, "" when none

    def covered_by(self, other: "Grant") -> bool:
        """``other`` allows at least what this grant allows."""
        # NOTE: literal comparison of placeholders: {bucket} in both is the same parameter.
        return (action_matches(other.action, self.action) and arn_matches(other.resource, self.resource)
                and (other.conditions == "" or other.conditions == self.conditions))

    def sentence(self) -> str:
        name = self.action.split(":", 1)[-1]
        text = f"{action_words(name)} ({self.action}) on {describe_resource(self.resource)}"
        return text + (f" only when {self.conditions}" if self.conditions else "")


def _conditions(statement: Statement) -> str:
    if not statement.conditions:
        return ""
    return json.dumps(statement.conditions, sort_keys=True, separators=(",", ":"))


def grants_of(template: ScopeTemplate, actions: ActionKnowledge) -> set[Grant]:
    out: set[Grant] = set()
    for statement in template.statements:
        names: list[str] = []
        for pattern in statement.actions:
            expanded = actions.expand(pattern) if any(c in pattern for c in "*?") else ()
            found = [i.key for i in expanded] or [(actions.lookup(pattern).key if actions.lookup(pattern)
                                                   else pattern)]
            names.extend(found)
        for name in names:
            for resource in statement.resources:
                out.add(Grant(name, resource, _conditions(statement)))
    return out


def risk_classes(template: ScopeTemplate, actions: ActionKnowledge) -> set[str]:
    """The risk classes of what the template grants (:mod:`broker.domain.risk`'s taxonomy), and
    ``unknown-action`` for an action the database does not know (not known to be harmless)."""
    classes: set[str] = set()
    for grant in grants_of(template, actions):
        info = actions.lookup(grant.action)
        if info is None:
            classes.add("unknown-action")
        else:
            classes.update(risk.value for risk in classify(info))
    return classes


@dataclass
class TemplateChange:
    name: str
    status: str                                   # added | removed | changed | unchanged
    old_digest: str | None
    new_digest: str | None
    statements_added: list[dict[str, Any]] = field(default_factory=list)
    statements_removed: list[dict[str, Any]] = field(default_factory=list)
    grants_added: list[Grant] = field(default_factory=list)
    grants_removed: list[Grant] = field(default_factory=list)
    risks_gained: list[str] = field(default_factory=list)
    risks_lost: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)      # approval, TTL, requesters... in words
    widening: list[str] = field(default_factory=list)     # why this change widens (empty: it does not)

    @property
    def widens(self) -> bool:
        return bool(self.widening)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.name, "status": self.status, "old_digest": self.old_digest,
                "new_digest": self.new_digest, "widens": self.widens, "widening": self.widening,
                "statements_added": self.statements_added, "statements_removed": self.statements_removed,
                "grants_added": [g.sentence() for g in self.grants_added],
                "grants_removed": [g.sentence() for g in self.grants_removed],
                "risks_gained": self.risks_gained, "risks_lost": self.risks_lost, "changes": self.changes}

    def to_text(self) -> str:
        verdict = "WIDENS" if self.widens else "narrows or same"
        lines = [f"{self.name}: {self.status}, {verdict}"]
        lines += [f"  + statement {json.dumps(s, sort_keys=True)}" for s in self.statements_added]
        lines += [f"  - statement {json.dumps(s, sort_keys=True)}" for s in self.statements_removed]
        lines += [f"  + can {g.sentence()}" for g in self.grants_added]
        lines += [f"  - can no longer {g.sentence()}" for g in self.grants_removed]
        lines += [f"  + risk class {r}" for r in self.risks_gained]
        lines += [f"  - risk class {r}" for r in self.risks_lost]
        lines += [f"  * {c}" for c in self.changes]
        lines += [f"  ! widens: {w}" for w in self.widening]
        return "\n".join(lines)


@dataclass
class CatalogDiff:
    templates: list[TemplateChange]

    @property
    def widens(self) -> bool:
        return any(t.widens for t in self.templates)

    def to_dict(self) -> dict[str, Any]:
        return {"widens": self.widens, "templates": [t.to_dict() for t in self.templates],
                "summary": {status: sum(t.status == status for t in self.templates)
                            for status in ("added", "removed", "changed", "unchanged")}}

    def to_text(self) -> str:
        changed = [t for t in self.templates if t.status != "unchanged"]
        body = "\n".join(t.to_text() for t in changed) or "no template changed"
        verdict = "WIDENS what agents may do" if self.widens else "narrows or keeps what agents may do"
        return f"{body}\n{len(changed)} of {len(self.templates)} template(s) changed: {verdict}"


def _statement_dict(statement: Statement) -> dict[str, Any]:
    return statement.model_dump(mode="json", exclude_none=True)


def _set_change(label: str, old: list[str], new: list[str], change: TemplateChange, *, widens_if_added: bool) -> None:
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if added:
        change.changes.append(f"{label} added: {', '.join(added)}")
        if widens_if_added:
            change.widening.append(f"{label} added: {', '.join(added)}")
    if removed:
        change.changes.append(f"{label} removed: {', '.join(removed)}")


def _number_change(label: str, old: int, new: int, change: TemplateChange, *, widens_if: str) -> None:
    if old == new:
        return
    change.changes.append(f"{label}: {old} -> {new}")
    if (new > old) if widens_if == "more" else (new < old):
        change.widening.append(f"{label}: {old} -> {new}")


def _parameter_changes(old: ScopeTemplate, new: ScopeTemplate, change: TemplateChange) -> None:
    for name in sorted(set(old.parameters) | set(new.parameters)):
        before, after = old.parameters.get(name), new.parameters.get(name)
        if before == after:
            continue
        if before is None:
            change.changes.append(f"parameter {name} added")
            change.widening.append(f"parameter {name} added")
            continue
        if after is None:
            change.changes.append(f"parameter {name} removed")
            continue
        wider: list[str] = []
        if before.type != after.type:
            wider.append(f"type {before.type} -> {after.type}")
        if before.enum is not None and (after.enum is None or set(after.enum) - set(before.enum)):
            wider.append("accepts values the enum did not" if after.enum is not None else "enum removed")
        if before.pattern != after.pattern and before.pattern is not None:
            wider.append("pattern changed" if after.pattern is not None else "pattern removed")
        if after.max_length > before.max_length:
            wider.append(f"max_length {before.max_length} -> {after.max_length}")
        if (before.min is not None and (after.min is None or after.min < before.min)) or \
           (before.max is not None and (after.max is None or after.max > before.max)):
            wider.append(f"range {before.min}..{before.max} -> {after.min}..{after.max}")
        change.changes.append(f"parameter {name} changed" + (f" ({'; '.join(wider)})" if wider else ""))
        change.widening.extend(f"parameter {name}: {w}" for w in wider)


def _identity_changes(old: ScopeTemplate, new: ScopeTemplate, change: TemplateChange) -> None:
    """Values bound to the caller: another source, a looser check or another session tag is not known to be
    narrower (who can say "I am workspace X" changes), so each counts as widening."""
    for name in sorted(set(old.identity) | set(new.identity)):
        before, after = old.identity.get(name), new.identity.get(name)
        if before == after:
            continue
        if before is None or after is None:
            change.changes.append(f"identity {name} {'added' if before is None else 'removed'}")
            if before is None:
                change.widening.append(f"identity {name} added (from {' or '.join(after.sources)})")
            continue
        wider: list[str] = []
        if set(after.sources) - set(before.sources):
            wider.append(f"source {' or '.join(before.sources)} -> {' or '.join(after.sources)}")
        for label, was, now in (("enum", before.enum, after.enum), ("map", before.map, after.map)):
            if was is not None and (now is None or set(now.items() if isinstance(now, dict) else now)
                                    - set(was.items() if isinstance(was, dict) else was)):
                wider.append(f"{label} accepts more" if now is not None else f"{label} removed")
        if before.pattern != after.pattern and before.pattern is not None:
            wider.append("pattern changed" if after.pattern is not None else "pattern removed")
        if after.max_length > before.max_length:
            wider.append(f"max_length {before.max_length} -> {after.max_length}")
        if before.session_tag != after.session_tag:
            wider.append("session tag changed")
        change.changes.append(f"identity {name} changed" + (f" ({'; '.join(wider)})" if wider else ""))
        change.widening.extend(f"identity {name}: {w}" for w in wider)


def compare_templates(old: ScopeTemplate | None, new: ScopeTemplate | None, *,
                      actions: ActionKnowledge) -> TemplateChange:
    name = (new or old).name  # type: ignore[union-attr]
    if old is None or new is None:
        present = new or old
        change = TemplateChange(name=name, status="added" if old is None else "removed",
                                old_digest=old.version_digest if old else None,
                                new_digest=new.version_digest if new else None)
        statements = [_statement_dict(s) for s in present.statements]  # type: ignore[union-attr]
        grants = sorted(grants_of(present, actions))  # type: ignore[arg-type]
        risks = sorted(risk_classes(present, actions))  # type: ignore[arg-type]
        if new is not None:
            change.statements_added, change.grants_added, change.risks_gained = statements, grants, risks
            change.widening.append(f"new template ({new.environment.value}, {new.approval.approvals} approval(s))")
        else:
            change.statements_removed, change.grants_removed, change.risks_lost = statements, grants, risks
        return change
    change = TemplateChange(name=name, status="unchanged" if old.version_digest == new.version_digest else "changed",
                            old_digest=old.version_digest, new_digest=new.version_digest)
    if change.status == "unchanged":
        return change
    old_statements = [_statement_dict(s) for s in old.statements]
    new_statements = [_statement_dict(s) for s in new.statements]
    change.statements_added = [s for s in new_statements if s not in old_statements]
    change.statements_removed = [s for s in old_statements if s not in new_statements]
    old_grants, new_grants = grants_of(old, actions), grants_of(new, actions)
    change.grants_added = sorted(new_grants - old_grants)
    change.grants_removed = sorted(old_grants - new_grants)
    uncovered = [g for g in change.grants_added if not any(g.covered_by(o) for o in old_grants)]
    change.widening.extend(f"grants {g.sentence()}" for g in uncovered)
    old_risks, new_risks = risk_classes(old, actions), risk_classes(new, actions)
    change.risks_gained, change.risks_lost = sorted(new_risks - old_risks), sorted(old_risks - new_risks)
    change.widening.extend(f"risk class {r} gained" for r in change.risks_gained)
    if old.environment != new.environment:
        change.changes.append(f"environment: {old.environment.value} -> {new.environment.value}")
        if ENVIRONMENT_RANK[new.environment] < ENVIRONMENT_RANK[old.environment]:
            change.widening.append(f"environment: {old.environment.value} -> {new.environment.value}")
    if old.role != new.role:
        change.changes.append(f"role: {old.role} -> {new.role}")
        change.widening.append(f"role: {old.role} -> {new.role}")
    _number_change("approvals", old.approval.approvals, new.approval.approvals, change, widens_if="fewer")
    _set_change("approvers", old.approval.approvers, new.approval.approvers, change, widens_if_added=True)
    _set_change("requesters", old.requesters, new.requesters, change, widens_if_added=True)
    _number_change("approval expires_after", old.approval.expires_after, new.approval.expires_after, change,
                   widens_if="more")
    _number_change("approval redeem_within", old.approval.redeem_within, new.approval.redeem_within, change,
                   widens_if="more")
    if old.approval.read_only_single_approver != new.approval.read_only_single_approver:
        change.changes.append(f"read_only_single_approver: {old.approval.read_only_single_approver} -> "
                              f"{new.approval.read_only_single_approver}")
    _number_change("ttl default", old.ttl.default, new.ttl.default, change, widens_if="more")
    _number_change("ttl max", old.ttl.max, new.ttl.max, change, widens_if="more")
    _number_change("role_max_session", old.role_max_session, new.role_max_session, change, widens_if="more")
    _parameter_changes(old, new, change)
    _identity_changes(old, new, change)
    if old.session_tags != new.session_tags:
        change.changes.append("session_tags changed")
        # NOTE: a role's trust or resource policies may grant by tag: a tag change is not known to be narrow.
        change.widening.append("session_tags changed")
    for key in ("description", "destructive", "capabilities"):
        if getattr(old, key) != getattr(new, key):
            change.changes.append(f"{key} changed")
    return change


def diff_catalogs(old: Mapping[str, ScopeTemplate], new: Mapping[str, ScopeTemplate], *,
                  actions: ActionKnowledge) -> CatalogDiff:
    return CatalogDiff([compare_templates(old.get(name), new.get(name), actions=actions)
                        for name in sorted(set(old) | set(new))])
