"""What `broker scopes simulate` decides with: the action a request names, and one issued session's request
context rebuilt from its `issued` log entry (pure functions; the CLI tests run them against a real broker)."""

from __future__ import annotations

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.evaluator import KnownSuffix
from broker.domain.simulation import check_action, find_grant, session_context
from broker.domain.templates import template_from_mapping
from broker.errors import InvalidInput

ROLE = "arn:aws:iam::123456789012:role/broker-target-t"
TEMPLATE = template_from_mapping({
    "name": "t", "description": "simulation", "environment": "dev", "role": ROLE,
    "statements": [{"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::b/*"]}],
    "requesters": ["agent:*"], "session_tags": {"team": "sre"},
}, source="test")


def issued(grant_id: str, **extra) -> dict:
    return {"seq": 1, "type": "issued", "time": "2024-05-01T12:00:03.250000Z", "grant_id": grant_id,
            "request_id": "0f0e0d0c-0000-4000-8000-000000000001", "template": "t",
            "template_digest": TEMPLATE.version_digest, "parameters": {}, "policy_digest": "sha256:x",
            "actor": "agent:demo", "access_key_id": f"ASIA{grant_id[:4].upper()}", "expiration": "2024-05-01T12:15:00Z",
            "details": {"requester": "agent:demo", "on_behalf_of": "human:alice", "ttl_seconds": 900}} | extra


ENTRIES = [issued("aaaa1111"), issued("aaaa2222"), issued("bbbb3333"),
           {"seq": 9, "type": "revoked", "grant_id": "bbbb3333", "time": "2024-05-01T12:05:00Z", "actor": "human:alice"},
           {"seq": 10, "type": "revoked_all", "time": "2024-05-01T12:06:00Z", "actor": "human:root",
            "details": {"grants_revoked": ["aaaa1111"]}}]


@pytest.mark.parametrize(("wanted", "grant_id"), [
    ("aaaa1111", "aaaa1111"), ("bbbb", "bbbb3333"), ("ASIABBBB", "bbbb3333"), (" aaaa2222 ", "aaaa2222"),
])
def test_find_grant_by_id_prefix_or_access_key(wanted, grant_id):
    assert find_grant(ENTRIES, wanted).grant_id == grant_id


@pytest.mark.parametrize(("wanted", "code"), [("aaaa", "grant_ambiguous"), ("cccc", "grant_not_found"),
                                              ("", "grant_not_found")])
def test_find_grant_refuses_what_it_cannot_name(wanted, code):
    with pytest.raises(InvalidInput) as raised:
        find_grant(ENTRIES, wanted)
    assert raised.value.code == code


def test_revocations_in_the_log_become_notes():
    assert "revoked at 2024-05-01T12:05:00Z by human:alice (seq 9)" in find_grant(ENTRIES, "bbbb").notes[0]
    assert "revoke-all" in find_grant(ENTRIES, "aaaa1111").notes[0]
    assert find_grant(ENTRIES, "aaaa2222").notes == ()


def test_the_session_context_of_a_grant():
    grant = find_grant(ENTRIES, "aaaa1111")
    context = session_context(grant, TEMPLATE, ROLE).context
    assert context["aws:SourceIdentity"] == "agent.demo"
    assert context["aws:TokenIssueTime"] == "2024-05-01T12:00:00Z"       # STS's: expiration minus the duration
    assert context["aws:PrincipalTag/broker-grant-id"] == "aaaa1111"
    assert context["aws:PrincipalTag/broker-on-behalf-of"] == "human:alice"
    assert context["aws:PrincipalTag/team"] == "sre"                      # the template's own session tags too
    assert context["aws:PrincipalAccount"] == "123456789012" and context["aws:PrincipalType"] == "AssumedRole"
    userid = context["aws:userid"]
    assert isinstance(userid, KnownSuffix) and userid.suffix.startswith(":demo-")
    exact = session_context(grant, TEMPLATE, ROLE, role_id="AROAEXAMPLE").context["aws:userid"]
    assert exact == "AROAEXAMPLE" + userid.suffix


def test_without_a_duration_the_entry_time_is_the_token_issue_time():
    grant = find_grant([issued("dddd4444", details={"requester": "agent:demo"})], "dddd4444")
    assert grant.token_issue_time == "2024-05-01T12:00:03Z"


def test_a_template_changed_since_the_grant_is_refused():
    grant = find_grant([issued("eeee5555", template_digest="sha256:older")], "eeee5555")
    with pytest.raises(InvalidInput) as raised:
        session_context(grant, TEMPLATE, ROLE)
    assert raised.value.code == "template_changed"


def test_a_malformed_issued_entry_is_refused():
    with pytest.raises(InvalidInput) as raised:
        find_grant([issued("ffff6666", template=None)], "ffff6666")
    assert raised.value.code == "grant_entry_invalid"


@pytest.mark.parametrize(("action", "kind", "suggestion"), [
    ("s3:GetObject", None, None),
    ("s3:getobject", None, None),
    ("sts:GetCallerIdentity", None, None),
    ("s3:GetObjct", "unknown_action", "s3:GetObject"),
    ("iam:PasRole", "unknown_action", "iam:PassRole"),
    ("s3:Xyzzy", "unknown_action", None),
    ("s4:GetObject", "unknown_service", None),
    ("GetObject", "unknown_action", None),
    ("s3:", "unknown_action", None),
    ("s3:Get*", "action_pattern", None),
])
def test_check_action(action, kind, suggestion):
    problem = check_action(action, default_action_knowledge())
    assert (problem.kind if problem else None) == kind
    if suggestion:
        assert suggestion in problem.suggestions and f"did you mean {suggestion}" in problem.message
    elif problem:
        assert problem.suggestions == ()
