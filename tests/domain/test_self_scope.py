"""Self-scoped risk: a dev template may grant a declared destructive action without co-signers only when every
statement granting it is confined to the caller's own identity, proven from the (rendered) resources."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.blast_radius import assess
from broker.domain.caller_identity import CallerIdentity
from broker.domain.guardrails import check_rendered, check_template
from broker.domain.mint_plan import plan_mint
from broker.domain.rendering import RenderedPolicy
from broker.domain.self_scope import confined_by
from broker.domain.templates import template_from_mapping

ACCOUNT = {"type": "aws_account_id", "enum": ["123456789012"], "default": "123456789012"}
OWN_TABLE = "arn:aws:dynamodb:us-east-1:{account}:table/workspace-{workspace}"
RESET = ["dynamodb:DeleteTable", "dynamodb:CreateTable"]


def make(resources: list[str], *, environment: str = "dev", actions_: list[str] | None = None,
         extra_statements: list[dict[str, Any]] | None = None, **overrides: Any):
    data: dict[str, Any] = {
        "name": "t", "description": "test", "environment": environment,
        "role": "arn:aws:iam::{account}:role/broker-target-t", "destructive": True,
        "parameters": {"account": dict(ACCOUNT), "name": {"type": "string", "pattern": "^[a-z0-9-]{1,20}$"},
                       "kind": {"type": "string", "enum": ["data", "cache"], "default": "data"}},
        "identity": {"workspace": {"source": "claim:workspace", "pattern": "^[a-z0-9-]{1,30}$"},
                     "team": {"source": "claim:team", "pattern": "^[a-z0-9-]{1,30}$"}},
        "statements": [{"actions": actions_ or RESET, "resources": resources}, *(extra_statements or [])],
        "requesters": ["agent:*"],
    }
    if environment == "production":
        data["approval"] = {"approvals": 2, "approvers": ["group:sre"]}
    data.update(copy.deepcopy(overrides))
    return template_from_mapping(data, source="test")


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


def codes(findings) -> set[str]:
    return {f.code for f in findings if f.blocking}


CONFINED = [
    "arn:aws:dynamodb:us-east-1:{account}:table/workspace-{workspace}",
    "arn:aws:dynamodb:us-east-1:{account}:table/{workspace}",
    "arn:aws:dynamodb:us-east-1:{account}:table/{workspace}-data",
    "arn:aws:dynamodb:us-east-1:{account}:table/{kind}/{workspace}",          # an enum parameter before it
]
NOT_CONFINED = [
    ("arn:aws:dynamodb:us-east-1:{account}:table/{name}", "a free parameter, no identity value"),
    ("arn:aws:dynamodb:us-east-1:{account}:table/workspace-{workspace}*", "a wildcard in its segment"),
    ("arn:aws:dynamodb:us-east-1:{account}:table/*{workspace}", "a wildcard in its segment"),
    ("arn:aws:dynamodb:us-east-1:{account}:table/{workspace}-{name}", "a free parameter in its segment"),
    ("arn:aws:dynamodb:us-east-1:{account}:table/{team}-{workspace}", "two identity values in one segment"),
    ("arn:aws:dynamodb:us-east-1:{account}:table/{name}/{workspace}", "a free parameter before it"),
    ("arn:aws:dynamodb:*:{account}:table/{workspace}", "a wildcard before it"),
    ("arn:aws:dynamodb:us-east-1:{account}:table/${aws:username}/{workspace}", "a policy variable before it"),
]


@pytest.mark.parametrize("resource", CONFINED)
def test_confined_resources(resource):
    assert confined_by(make([resource]), resource) == "workspace"


@pytest.mark.parametrize(("resource", "why"), NOT_CONFINED)
def test_resources_that_are_not_the_callers_own(resource, why):
    template = make([resource])
    assert confined_by(template, resource) is None, why


def test_a_confined_dev_template_needs_no_cosigner_for_destruction(actions):
    assert codes(check_template(make([OWN_TABLE]), actions=actions)) == set()


@pytest.mark.parametrize(("resource", "why"), NOT_CONFINED[:6])
def test_an_unconfined_destructive_statement_still_needs_a_cosigner(actions, resource, why):
    assert "risk_without_cosigning" in codes(check_template(make([resource]), actions=actions)), why


def test_every_granting_statement_and_every_resource_must_be_confined(actions):
    one_loose = make([OWN_TABLE, "arn:aws:dynamodb:us-east-1:{account}:table/{name}"])
    assert "risk_without_cosigning" in codes(check_template(one_loose, actions=actions))
    second_statement = make([OWN_TABLE], extra_statements=[
        {"actions": ["dynamodb:DeleteTable"], "resources": ["arn:aws:dynamodb:us-east-1:{account}:table/{name}"]}])
    assert "risk_without_cosigning" in codes(check_template(second_statement, actions=actions))


def test_destruction_must_still_be_declared(actions):
    assert "undeclared_destructive" in codes(check_template(make([OWN_TABLE], destructive=False), actions=actions))


def test_production_still_needs_cosigners(actions):
    template = make([OWN_TABLE], environment="production", approval={"approvals": 0})
    found = codes(check_template(template, actions=actions))
    assert "production_approvals" in found and "risk_without_cosigning" in found


def test_staging_is_not_exempt_either(actions):
    assert "risk_without_cosigning" in codes(check_template(make([OWN_TABLE], environment="staging"),
                                                            actions=actions))


def test_other_risk_classes_keep_their_cosigners(actions):
    # ec2:TerminateInstances is destructive; ec2:RunInstances also runs code as another identity.
    template = make(["arn:aws:ec2:us-east-1:{account}:instance/{workspace}"],
                    actions_=["ec2:TerminateInstances", "ec2:RunInstances"], capabilities=["code-execution"])
    assert "risk_without_cosigning" in codes(check_template(template, actions=actions))


def _plan(template, workspace: str):
    return plan_mint(template, request_id="r", grant_id="g", requester="agent:x", acts_for="human:alice",
                     parameters={"name": "n"}, ttl_seconds=None,
                     identity=CallerIdentity("agent:x", "human:alice", claims={"workspace": workspace, "team": "t"}))


def test_the_rendered_policy_is_proven_again(actions):
    template = make([OWN_TABLE])
    plan = _plan(template, "ws-a")
    assert codes(check_rendered(template, plan.policy, actions=actions)) == set()
    # The same document claiming another caller's value, or none: the proof fails, co-signers are needed.
    for identity in ({"workspace": "ws-b"}, {}):
        forged = RenderedPolicy(role_arn=plan.policy.role_arn, document=plan.policy.document, json=plan.policy.json,
                                digest=plan.policy.digest, identity=identity)
        assert "risk_without_cosigning" in codes(check_rendered(template, forged, actions=actions))


def test_a_rendered_resource_that_reaches_beyond_the_callers_own_is_not_exempt(actions):
    template = make([OWN_TABLE])
    plan = _plan(template, "ws-a")
    document = {"Version": "2012-10-17", "Statement": [
        {**plan.policy.document["Statement"][0],
         "Resource": ["arn:aws:dynamodb:us-east-1:123456789012:table/workspace-ws-a*"]}]}
    wider = RenderedPolicy(role_arn=plan.policy.role_arn, document=document, json="{}", digest="sha256:x",
                           identity={"workspace": "ws-a"})
    assert "risk_without_cosigning" in codes(check_rendered(template, wider, actions=actions))


def test_the_blast_radius_says_only_the_callers_own(actions):
    template = make([OWN_TABLE])
    radius = assess(template, actions=actions)
    assert "only the caller's own workspace" in radius.headline()
    assert radius.to_dict()["identity"]["workspace"].startswith("the caller's own workspace")
    concrete = assess(template, actions=actions, rendered=_plan(template, "ws-a").policy)
    assert "workspace-ws-a" in concrete.headline() and "only the caller's own workspace" in concrete.headline()
    assert concrete.to_dict()["actions"][0]["only_callers_own"] == ["workspace"]
    loose = assess(make(["arn:aws:dynamodb:us-east-1:{account}:table/{name}"]), actions=actions)
    assert "caller's own" not in loose.headline()
