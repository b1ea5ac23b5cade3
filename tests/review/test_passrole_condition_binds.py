"""Review: the PassRole rule only asked whether an ``iam:PassedToService`` condition *existed*; a negated,
wildcard or IfExists condition on that key lets the role be passed to (nearly) every service."""

from __future__ import annotations

from typing import Any

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.guardrails import check_template
from broker.domain.templates import template_from_mapping

ROLE = "arn:aws:iam::123456789012:role/broker-target-task"
ECS = "ecs-tasks.amazonaws.com"


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


def codes(actions, conditions: dict[str, Any]) -> set[str]:
    template = template_from_mapping({
        "name": "t", "description": "review", "environment": "dev",
        "role": "arn:aws:iam::123456789012:role/broker-target-t",
        "statements": [{"actions": ["iam:PassRole"], "resources": [ROLE], "conditions": conditions}],
        "requesters": ["agent:*"], "capabilities": ["permissions-management"],
        "approval": {"approvals": 1, "approvers": ["group:sre"]},
    }, source="review")
    return {f.code for f in check_template(template, actions=actions) if f.blocking}


@pytest.mark.parametrize("conditions", [
    {"StringNotEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
    {"StringNotLike": {"iam:PassedToService": "lambda.*"}},
    {"StringLike": {"iam:PassedToService": "*"}},
    {"StringLike": {"iam:PassedToService": "*.amazonaws.com"}},
    {"StringLike": {"iam:PassedToService": [ECS, "*"]}},
    {"StringEqualsIfExists": {"iam:PassedToService": ECS}},
    {"ForAllValues:StringEquals": {"iam:PassedToService": ECS}},
    {"Null": {"iam:PassedToService": "false"}},
])
def test_a_condition_that_does_not_name_the_services_does_not_bind_passrole(actions, conditions):
    assert "passrole_without_service" in codes(actions, conditions)


@pytest.mark.parametrize("conditions", [
    {"StringEquals": {"iam:PassedToService": ECS}},
    {"StringEquals": {"iam:passedtoservice": [ECS, "lambda.amazonaws.com"]}},
    {"StringEqualsIgnoreCase": {"iam:PassedToService": ECS}},
    {"StringLike": {"iam:PassedToService": ECS}},
    {"ForAnyValue:StringEquals": {"iam:PassedToService": ECS}},
])
def test_naming_the_services_binds_passrole(actions, conditions):
    assert "passrole_without_service" not in codes(actions, conditions)
