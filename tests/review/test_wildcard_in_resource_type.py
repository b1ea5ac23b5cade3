"""Review: a wildcard placed inside the resource-type part of an ARN ("log-gr*", "t*", "r*") covers every
resource of that type just as "log-group:*" does, and must be refused the same way."""

from __future__ import annotations

from typing import Any

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.guardrails import check_template
from broker.domain.templates import template_from_mapping

ACCOUNT = "123456789012"
PASSED_TO_ECS = {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


def template(actions_: list[str], resource: str, **extra: Any):
    return template_from_mapping({
        "name": "t", "description": "review", "environment": "dev",
        "role": f"arn:aws:iam::{ACCOUNT}:role/broker-target-t",
        "statements": [{"actions": actions_, "resources": [resource], **extra}],
        "requesters": ["agent:*"], "capabilities": ["permissions-management"],
        "approval": {"approvals": 1, "approvers": ["group:sre"]},
    }, source="review")


@pytest.mark.parametrize(("actions_", "resource", "extra"), [
    (["logs:FilterLogEvents"], f"arn:aws:logs:us-east-1:{ACCOUNT}:log-gr*", {}),
    (["logs:FilterLogEvents"], f"arn:aws:logs:us-east-1:{ACCOUNT}:l*", {}),
    (["dynamodb:GetItem"], f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:t*", {}),
    (["dynamodb:GetItem"], f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:tabl?/*", {}),
    (["lambda:InvokeFunction"], f"arn:aws:lambda:us-east-1:{ACCOUNT}:function*", {}),
    (["lambda:InvokeFunction"], f"arn:aws:lambda:us-east-1:{ACCOUNT}:f*", {}),
    (["iam:PassRole"], f"arn:aws:iam::{ACCOUNT}:r*", {"conditions": PASSED_TO_ECS}),
])
def test_wildcard_inside_the_type_prefix_is_every_resource_of_the_type(actions, actions_, resource, extra):
    codes = {f.code for f in check_template(template(actions_, resource, **extra), actions=actions) if f.blocking}
    assert "resource_all_of_type" in codes


@pytest.mark.parametrize(("actions_", "resource"), [
    (["s3:GetObject"], "arn:aws:s3:::a*/reports/*"),          # buckets named a...: narrower than every bucket
    (["s3:ListBucket"], "arn:aws:s3:::team-*"),
    (["logs:FilterLogEvents"], f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/lambda/checkout-*"),
    (["dynamodb:GetItem"], f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/orders*"),
    (["lambda:InvokeFunction"], f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:checkout-*"),
])
def test_a_wildcard_in_the_name_is_still_allowed(actions, actions_, resource):
    codes = {f.code for f in check_template(template(actions_, resource), actions=actions) if f.blocking}
    assert "resource_all_of_type" not in codes
