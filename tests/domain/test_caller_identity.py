"""Values bound to the caller's identity: hostile claims, sources, the template keys, the session tags."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.caller_identity import CallerIdentity, resolve_identity
from broker.domain.guardrails import check_rendered, check_template
from broker.domain.mint_plan import plan_mint
from broker.domain.rendering import render_policy, validate_parameters
from broker.domain.templates import template_from_mapping
from broker.errors import Forbidden, InvalidParameter, TemplateError

ACCOUNT = {"type": "aws_account_id", "enum": ["123456789012"], "default": "123456789012"}
TABLE = "arn:aws:dynamodb:us-east-1:{account}:table/workspace-{workspace}"


def data(**overrides: Any) -> dict[str, Any]:
    """A dev template that lets the caller read its own workspace's table."""
    base: dict[str, Any] = {
        "name": "t", "description": "test", "environment": "dev",
        "role": "arn:aws:iam::{account}:role/broker-target-t",
        "parameters": {"account": dict(ACCOUNT)},
        "identity": {"workspace": {"source": "claim:workspace", "pattern": "^[a-z0-9-]{1,40}$", "max_length": 40}},
        "statements": [{"actions": ["dynamodb:DescribeTable"], "resources": [TABLE]}],
        "requesters": ["agent:*"],
    }
    base.update(copy.deepcopy(overrides))
    return base


def make(**overrides: Any):
    return template_from_mapping(data(**overrides), source="test")


def caller(claims: dict[str, Any] | None = None, attributes: dict[str, Any] | None = None,
           principal: str = "agent:ws-bot", human: str = "human:alice") -> CallerIdentity:
    return CallerIdentity(principal=principal, human=human, claims=claims or {}, attributes=attributes or {})


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


# ----------------------------------------------------------------------------- hostile claims
HOSTILE_CLAIMS = [
    ("missing", {}, "identity_value_missing"),
    ("null", {"workspace": None}, "identity_value_missing"),
    ("empty", {"workspace": ""}, "identity_value_invalid"),
    ("wildcard star", {"workspace": "*"}, "identity_value_invalid"),
    ("wildcard inside", {"workspace": "ws-*"}, "identity_value_invalid"),
    ("question mark", {"workspace": "ws-?"}, "identity_value_invalid"),
    ("policy variable", {"workspace": "${aws:username}"}, "identity_value_invalid"),
    ("arn separator", {"workspace": "ws:a"}, "identity_value_invalid"),
    ("path separator", {"workspace": "ws-a/ws-b"}, "identity_value_invalid"),
    ("list separator", {"workspace": "ws-a,ws-b"}, "identity_value_invalid"),
    ("path traversal", {"workspace": "..."}, "identity_value_invalid"),
    ("quote", {"workspace": 'ws"a'}, "identity_value_invalid"),
    ("backslash", {"workspace": "ws\\a"}, "identity_value_invalid"),
    ("brace", {"workspace": "{account}"}, "identity_value_invalid"),
    ("newline", {"workspace": "ws-a\n"}, "identity_value_invalid"),
    ("space", {"workspace": "ws a"}, "identity_value_invalid"),
    ("NUL", {"workspace": "ws\x00a"}, "identity_value_invalid"),
    ("very long", {"workspace": "a" * 41}, "identity_value_invalid"),
    ("huge", {"workspace": "a" * 100_000}, "identity_value_invalid"),
    ("non-ASCII letter", {"workspace": "wörk"}, "identity_value_invalid"),
    ("Unicode digit", {"workspace": "ws-\u0661"}, "identity_value_invalid"),
    ("look-alike", {"workspace": "w\u0455-a"}, "identity_value_invalid"),
    ("right-to-left override", {"workspace": "ws-\u202ea"}, "identity_value_invalid"),
    ("list where a string is expected", {"workspace": ["ws-a", "ws-b"]}, "identity_value_invalid"),
    ("one-element list", {"workspace": ["ws-a"]}, "identity_value_invalid"),
    ("number", {"workspace": 42}, "identity_value_invalid"),
    ("boolean", {"workspace": True}, "identity_value_invalid"),
    ("object", {"workspace": {"name": "ws-a"}}, "identity_value_invalid"),
    ("fails the pattern", {"workspace": "WS-A"}, "identity_value_invalid"),
]


@pytest.mark.parametrize(("label", "claims", "code"), HOSTILE_CLAIMS, ids=[c[0] for c in HOSTILE_CLAIMS])
def test_hostile_claims_are_refused_403_with_a_stable_code(label, claims, code):
    with pytest.raises(Forbidden) as caught:
        resolve_identity(make(), caller(claims))
    assert caught.value.status == 403
    assert caught.value.code == code
    assert caught.value.field == "identity.workspace"
    # NOTE: the message names the value, never echoes the caller's (possibly huge, hostile) claim.
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(("label", "claims", "code"), HOSTILE_CLAIMS, ids=[c[0] for c in HOSTILE_CLAIMS])
def test_a_hostile_claim_never_reaches_a_plan(label, claims, code):
    with pytest.raises(Forbidden):
        plan_mint(make(), request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                  parameters={}, ttl_seconds=None, identity=caller(claims))


def test_no_caller_at_all_is_missing_never_a_default():
    with pytest.raises(Forbidden) as caught:
        resolve_identity(make(), None)
    assert caught.value.code == "identity_value_missing"


def test_a_clean_claim_is_bound():
    assert resolve_identity(make(), caller({"workspace": "ws-a"})) == {"workspace": "ws-a"}


# ----------------------------------------------------------------------------- sources
@pytest.mark.parametrize(("source", "who", "expected"), [
    ("principal", caller(principal="agent:ws-bot"), "ws-bot"),
    ("human", caller(human="human:alice"), "alice"),
    ("claim:workspace", caller({"workspace": "ws-a"}), "ws-a"),
    ("attribute:workspace", caller(attributes={"workspace": "ws-d"}), "ws-d"),
    ("claim:kubernetes.io/namespace", caller({"kubernetes.io": {"namespace": "team-a"}}), "team-a"),
])
def test_each_source(source, who, expected):
    template = make(identity={"workspace": {"source": source}})
    assert resolve_identity(template, who) == {"workspace": expected}


@pytest.mark.parametrize(("who", "code"), [
    (caller(principal="agent:repo:acme/app"), "identity_value_invalid"),   # a principal id with separators
    (caller({"kubernetes.io": "team-a"}), None),                           # not nested: missing
])
def test_awkward_sources(who, code):
    source = "principal" if code else "claim:kubernetes.io/namespace"
    with pytest.raises(Forbidden) as caught:
        resolve_identity(make(identity={"workspace": {"source": source}}), who)
    assert caught.value.code == (code or "identity_value_missing")


def test_several_sources_must_agree():
    template = make(identity={"workspace": {"source": ["claim:workspace", "attribute:workspace"]}})
    assert resolve_identity(template, caller({"workspace": "ws-a"})) == {"workspace": "ws-a"}
    assert resolve_identity(template, caller(attributes={"workspace": "ws-a"})) == {"workspace": "ws-a"}
    assert resolve_identity(template, caller({"workspace": "ws-a"}, {"workspace": "ws-a"})) == {"workspace": "ws-a"}
    with pytest.raises(Forbidden) as caught:
        resolve_identity(template, caller({"workspace": "ws-a"}, {"workspace": "ws-b"}))
    assert caught.value.code == "identity_value_conflict"


def test_a_map_turns_the_callers_value_into_the_templates_and_refuses_the_rest():
    template = make(identity={"workspace": {"source": "claim:team", "map": {"payments": "ws-pay"}}})
    assert resolve_identity(template, caller({"team": "payments"})) == {"workspace": "ws-pay"}
    with pytest.raises(Forbidden) as caught:
        resolve_identity(template, caller({"team": "search"}))
    assert caught.value.code == "identity_value_invalid"


def test_an_enum_refuses_values_it_does_not_list():
    template = make(identity={"workspace": {"source": "claim:workspace", "enum": ["ws-a"]}})
    with pytest.raises(Forbidden):
        resolve_identity(template, caller({"workspace": "ws-b"}))


# ----------------------------------------------------------------------------- the request cannot set one
def test_a_request_that_sets_an_identity_value_is_422():
    with pytest.raises(InvalidParameter) as caught:
        validate_parameters(make(), {"workspace": "ws-b"})
    assert caught.value.status == 422
    assert caught.value.code == "identity_value_not_settable"
    assert caught.value.field == "parameters.workspace"


def test_rendering_without_the_identity_value_refuses_rather_than_crash():
    with pytest.raises(InvalidParameter) as caught:
        render_policy(make(), {"account": "123456789012"})
    assert caught.value.code == "missing_parameter"


# ----------------------------------------------------------------------------- template keys
BAD_IDENTITY = [
    ({"identity": {"workspace": {"source": "token:workspace"}}}, "identity.workspace.source"),
    ({"identity": {"workspace": {"source": []}}}, "identity.workspace.source"),
    ({"identity": {"workspace": {"source": ["principal", "principal"]}}}, "identity.workspace.source"),
    ({"identity": {"workspace": {"source": "claim:"}}}, "identity.workspace.source"),
    ({"identity": {"workspace": {"source": "claim:a b"}}}, "identity.workspace.source"),
    ({"identity": {"workspace": {"source": "principal", "pattern": "("}}}, "identity.workspace.pattern"),
    ({"identity": {"workspace": {"source": "principal", "enum": []}}}, "identity.workspace.enum"),
    ({"identity": {"workspace": {"source": "principal", "map": {}}}}, "identity.workspace.map"),
    ({"identity": {"workspace": {"source": "principal", "session_tag": {"key": "ws"}}}},
     "identity.workspace.session_tag.transitive"),
    ({"identity": {"workspace": {"source": "principal", "session_tag": {"key": "aws:x", "transitive": False}}}},
     "identity.workspace.session_tag.key"),
    ({"identity": {"workspace": {"source": "principal", "default": "ws-a"}}}, "identity.workspace.default"),
    ({"identity": {"account": {"source": "principal"}}}, "(template)"),   # also a parameter
]


@pytest.mark.parametrize(("overrides", "field"), BAD_IDENTITY)
def test_bad_identity_declarations_name_the_field(overrides, field):
    with pytest.raises(TemplateError) as caught:
        make(**overrides)
    assert caught.value.field == field


def test_identity_value_in_a_negated_condition_must_be_a_fixed_list():
    statements = [{"actions": ["dynamodb:DescribeTable"], "resources": [TABLE],
                   "conditions": {"StringNotEquals": {"aws:ResourceTag/workspace": "{workspace}"}}}]
    with pytest.raises(TemplateError):
        make(statements=statements)
    make(statements=statements, identity={"workspace": {"source": "claim:workspace", "enum": ["ws-a"]}})


def test_role_arn_takes_an_identity_value_only_through_a_map(actions):
    free = make(role="arn:aws:iam::{team_account}:role/broker-target-t",
                identity={"workspace": {"source": "claim:workspace"}, "team_account": {"source": "claim:team"}})
    assert "role_parameter_not_fixed" in {f.code for f in check_template(free, actions=actions)}
    mapped = make(role="arn:aws:iam::{team_account}:role/broker-target-t",
                  identity={"workspace": {"source": "claim:workspace"},
                            "team_account": {"source": "claim:team", "map": {"payments": "123456789012"}}})
    assert [f.code for f in check_template(mapped, actions=actions) if f.blocking] == []
    values = resolve_identity(mapped, caller({"workspace": "ws-a", "team": "payments"}))
    assert render_policy(mapped, {"account": "123456789012", **values}).role_arn == \
        "arn:aws:iam::123456789012:role/broker-target-t"


# ----------------------------------------------------------------------------- session tags
def test_identity_session_tags_and_transitive_keys_reach_the_plan():
    template = make(identity={"workspace": {"source": "claim:workspace",
                                            "session_tag": {"key": "workspace", "transitive": True}},
                              "team": {"source": "claim:team", "session_tag": {"key": "team", "transitive": False}}})
    plan = plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                     parameters={}, ttl_seconds=None, identity=caller({"workspace": "ws-a", "team": "pay"}))
    tags = dict(plan.session_tags)
    assert tags["workspace"] == "ws-a" and tags["team"] == "pay"
    assert plan.transitive_tag_keys == ("workspace",)
    assert dict(plan.identity) == {"workspace": "ws-a", "team": "pay"}
    assert "ws-a" in plan.policy.json


@pytest.mark.parametrize("key", ["broker-agent", "Broker-Agent", "fixed"])
def test_a_session_tag_the_broker_or_the_template_already_sets_is_refused(actions, key):
    template = make(session_tags={"fixed": "x"},
                    identity={"workspace": {"source": "claim:workspace",
                                            "session_tag": {"key": key, "transitive": False}}})
    assert "identity_session_tag_taken" in {f.code for f in check_template(template, actions=actions)}


def test_an_unused_identity_value_is_a_warning(actions):
    template = make(identity={"workspace": {"source": "claim:workspace"}, "team": {"source": "claim:team"}})
    findings = {f.code: f for f in check_template(template, actions=actions)}
    assert findings["identity_value_unused"].severity == "warning"


def test_plans_of_two_callers_name_only_their_own_resources():
    template = make()
    policies = []
    for workspace in ("ws-a", "ws-b"):
        plan = plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                         parameters={}, ttl_seconds=None, identity=caller({"workspace": workspace}))
        policies.append(json.loads(plan.policy.json)["Statement"][0]["Resource"])
    assert policies == [["arn:aws:dynamodb:us-east-1:123456789012:table/workspace-ws-a"],
                        ["arn:aws:dynamodb:us-east-1:123456789012:table/workspace-ws-b"]]


def test_the_rendered_policy_of_an_identity_template_passes_the_guardrails(actions):
    template = make()
    plan = plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                     parameters={}, ttl_seconds=None, identity=caller({"workspace": "ws-a"}))
    assert [f for f in check_rendered(template, plan.policy, actions=actions) if f.blocking] == []


def test_an_identity_value_in_a_condition_is_data_and_is_checked_by_its_operator():
    template = make(statements=[{"actions": ["dynamodb:DescribeTable"], "resources": [TABLE],
                                 "conditions": {"StringEquals": {"aws:ResourceTag/workspace": "{workspace}"},
                                                "IpAddress": {"aws:SourceIp": "{network}"}}}],
                    identity={"workspace": {"source": "claim:workspace"}, "network": {"source": "attribute:network",
                                                                                        "max_length": 20}})
    plan = plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                     parameters={}, ttl_seconds=None,
                     identity=caller({"workspace": "ws-a"}, {"network": "10.1.2.3"}))
    condition = json.loads(plan.policy.json)["Statement"][0]["Condition"]
    assert condition == {"StringEquals": {"aws:ResourceTag/workspace": "ws-a"},
                         "IpAddress": {"aws:SourceIp": "10.1.2.3"}}
    with pytest.raises(Forbidden) as caught:
        plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                  parameters={}, ttl_seconds=None, identity=caller({"workspace": "ws-a"}, {"network": "not-an-ip"}))
    assert caught.value.code == "identity_value_invalid" and "IpAddress" in caught.value.message


# ----------------------------------------------------------------------------- property
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANY_CLAIM = st.one_of(st.text(max_size=60), st.lists(st.text(max_size=5), max_size=3), st.integers(), st.none(),
                      st.booleans(), st.text(alphabet="ab-*?$:/,.{}", max_size=12))


@settings(max_examples=150, deadline=None)
@given(claim=ANY_CLAIM)
def test_whatever_the_claim_the_policy_names_one_table_of_the_callers_own_or_nothing(claim):
    template = make()
    try:
        plan = plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                         parameters={}, ttl_seconds=None, identity=caller({"workspace": claim}))
    except Forbidden:
        return
    (resource,) = json.loads(plan.policy.json)["Statement"][0]["Resource"]
    assert resource == TABLE.format(account="123456789012", workspace=claim)
    assert not any(c in claim for c in "*?$:/,{}") and claim.isascii() and ".." not in claim
