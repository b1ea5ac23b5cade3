"""scopes diff: what a change adds and removes, and whether it widens (table-style over edits)."""

from __future__ import annotations

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.template_diff import Grant, compare_templates, diff_catalogs
from broker.domain.templates import parse_template

BASE = """
name: s3-read
description: read one prefix
environment: production
role: "arn:aws:iam::{account}:role/broker-target-s3"
parameters:
  account: {type: aws_account_id, enum: ["123456789012"], default: "123456789012"}
  prefix: {type: string, pattern: "^[a-z]{1,8}$"}
statements:
  - sid: Read
    actions: ["s3:GetObject"]
    resources: ["arn:aws:s3:::bucket/{prefix}/*"]
  - sid: List
    actions: ["s3:ListBucket"]
    resources: ["arn:aws:s3:::bucket"]
    conditions: {StringLike: {"s3:prefix": ["{prefix}/*"]}}
ttl: {default: 900, max: 1800}
requesters: ["agent:ci"]
approval: {approvals: 2, approvers: ["group:sre"], read_only_single_approver: false}
"""


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


def t(text: str = BASE):
    return parse_template(text, source="t.yaml")


# (edit, widens, a phrase the change must name)
EDITS = [
    (("", ""), False, None),
    (('actions: ["s3:GetObject"]', 'actions: ["s3:GetObject", "s3:DeleteObject"]'), True, "s3:DeleteObject"),
    (('actions: ["s3:GetObject"]', 'actions: ["s3:Get*"]'), True, "s3:GetObjectAcl"),
    (('resources: ["arn:aws:s3:::bucket/{prefix}/*"]', 'resources: ["arn:aws:s3:::bucket/*"]'), True,
     "arn:aws:s3:::bucket/*"),
    (('resources: ["arn:aws:s3:::bucket/{prefix}/*"]', 'resources: ["arn:aws:s3:::bucket/{prefix}/reports/*"]'),
     False, None),
    (('    conditions: {StringLike: {"s3:prefix": ["{prefix}/*"]}}\n', ""), True, "s3:ListBucket"),
    (("approvals: 2,", "approvals: 1,"), True, "approvals: 2 -> 1"),
    (("approvals: 2,", "approvals: 3,"), False, "approvals: 2 -> 3"),
    (('approvers: ["group:sre"]', 'approvers: ["group:sre", "group:dev"]'), True, "approvers added: group:dev"),
    (("ttl: {default: 900, max: 1800}", "ttl: {default: 900, max: 3600}"), True, "ttl max: 1800 -> 3600"),
    (("ttl: {default: 900, max: 1800}", "ttl: {default: 900, max: 900}"), False, "ttl max: 1800 -> 900"),
    (('requesters: ["agent:ci"]', 'requesters: ["agent:*"]'), True, "requesters added: agent:*"),
    (('pattern: "^[a-z]{1,8}$"', 'pattern: "^[a-z]{1,80}$"'), True, "pattern changed"),
    (('enum: ["123456789012"], default', 'enum: ["123456789012", "210987654321"], default'), True,
     "accepts values the enum did not"),
    (("environment: production", "environment: dev"), True, "environment: production -> dev"),
    (("description: read one prefix", "description: read one prefix (ticket 9)"), False, "description changed"),
    (("role-s3", "role-s3"), False, None),
    (("broker-target-s3", "broker-target-admin"), True, "role:"),
    (('    sid: List\n', '    sid: Listing\n'), False, None),
]


@pytest.mark.parametrize("edit, widens, phrase", EDITS)
def test_each_edit_is_judged(actions, edit, widens, phrase):
    old, new = t(), t(BASE.replace(*edit))
    change = compare_templates(old, new, actions=actions)
    assert change.widens is widens, change.to_text()
    if phrase:
        assert phrase in change.to_text()


def test_added_and_removed_templates(actions):
    diff = diff_catalogs({"s3-read": t()}, {"s3-read-2": t(BASE.replace("name: s3-read", "name: s3-read-2"))},
                         actions=actions)
    by_name = {c.name: c for c in diff.templates}
    assert by_name["s3-read-2"].status == "added" and by_name["s3-read-2"].widens
    assert by_name["s3-read"].status == "removed" and not by_name["s3-read"].widens
    assert diff.widens and diff.to_dict()["summary"] == {"added": 1, "removed": 1, "changed": 0, "unchanged": 0}


def test_narrowing_a_statement_lists_what_is_removed(actions):
    old = t(BASE.replace('actions: ["s3:GetObject"]', 'actions: ["s3:GetObject", "s3:GetObjectTagging"]'))
    change = compare_templates(old, t(), actions=actions)
    assert not change.widens
    assert [g.action for g in change.grants_removed] == ["s3:GetObjectTagging"]
    assert change.statements_added and change.statements_removed


def test_risk_classes_gained_are_named(actions):
    change = compare_templates(t(), t(BASE.replace('["s3:GetObject"]', '["s3:GetObject", "s3:PutBucketPolicy"]')),
                               actions=actions)
    assert "permission-changing" in change.risks_gained and change.widens


def test_identical_catalogs_are_same(actions):
    diff = diff_catalogs({"s3-read": t()}, {"s3-read": t()}, actions=actions)
    assert not diff.widens and "no template changed" in diff.to_text()


@pytest.mark.parametrize("new, old, covered", [
    (Grant("s3:GetObject", "arn:aws:s3:::b/p/*", ""), Grant("s3:GetObject", "arn:aws:s3:::b/*", ""), True),
    (Grant("s3:GetObject", "arn:aws:s3:::b/*", ""), Grant("s3:GetObject", "arn:aws:s3:::b/p/*", ""), False),
    (Grant("s3:GetObject", "arn:aws:s3:::b/*", "{}"), Grant("s3:GetObject", "arn:aws:s3:::b/*", ""), True),
    (Grant("s3:GetObject", "arn:aws:s3:::b/*", ""), Grant("s3:GetObject", "arn:aws:s3:::b/*", "{c}"), False),
    (Grant("s3:PutObject", "arn:aws:s3:::b/*", ""), Grant("s3:Get*", "arn:aws:s3:::b/*", ""), False),
])
def test_coverage(new, old, covered):
    assert new.covered_by(old) is covered


# ----------------------------------------------------------------------------- properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from broker.storage.template_files import templates_at  # noqa: E402
from tests.conftest import REPO_SCOPES  # noqa: E402

SHIPPED = sorted(templates_at(str(REPO_SCOPES)).values(), key=lambda t: t.name)


@st.composite
def narrowed(draw):
    """A shipped template with some actions (never all of a statement's) removed."""
    template = draw(st.sampled_from(SHIPPED))
    statements = []
    for statement in template.statements:
        keep = draw(st.lists(st.sampled_from(statement.actions), min_size=1, unique=True))
        statements.append(statement.model_copy(update={"actions": keep}))
    # NOTE: a new model, not model_copy: model_copy would carry the cached version digest over.
    data = template.model_dump(mode="python") | {"statements": [s.model_dump(mode="python") for s in statements]}
    return template, type(template).model_validate(data)


@settings(max_examples=60, deadline=None)
@given(narrowed())
def test_removing_actions_never_widens_and_putting_them_back_does(actions, pair):
    original, smaller = pair
    assert not compare_templates(original, smaller, actions=actions).widens
    back = compare_templates(smaller, original, actions=actions)
    removed_any = any(set(a.actions) != set(b.actions) for a, b in zip(original.statements, smaller.statements))
    assert back.widens is removed_any


# ----------------------------------------------------------------------------- identity-bound values
IDENTITY_BASE = BASE.replace('  prefix: {type: string, pattern: "^[a-z]{1,8}$"}\n', "") + """
identity:
  prefix: {source: claim:workspace, pattern: "^[a-z]{1,8}$", enum: ["a", "b"],
           session_tag: {key: workspace, transitive: false}}
"""
IDENTITY_EDITS = [
    (("source: claim:workspace", "source: [claim:workspace, attribute:workspace]"), True, "source"),
    (("source: claim:workspace", "source: principal"), True, "source claim:workspace -> principal"),
    (('enum: ["a", "b"]', 'enum: ["a", "b", "c"]'), True, "enum accepts more"),
    (('enum: ["a", "b"]', 'enum: ["a"]'), False, "identity prefix changed"),
    (('pattern: "^[a-z]{1,8}$", ', ""), True, "pattern removed"),
    (("transitive: false", "transitive: true"), True, "session tag changed"),
]


@pytest.mark.parametrize("edit, widens, phrase", IDENTITY_EDITS)
def test_identity_value_edits_are_judged(actions, edit, widens, phrase):
    old, new = t(IDENTITY_BASE), t(IDENTITY_BASE.replace(*edit))
    change = compare_templates(old, new, actions=actions)
    assert change.widens is widens, change.to_text()
    assert phrase in change.to_text()


def test_turning_a_parameter_into_an_identity_value_is_named(actions):
    change = compare_templates(t(), t(IDENTITY_BASE), actions=actions)
    assert "identity prefix added (from claim:workspace)" in change.to_text()
