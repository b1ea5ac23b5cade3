"""Blast radius: destructive first, plain sentences, TTL and approvals, JSON and text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.storage.template_files import load_catalog
from broker.domain.actions import AccessLevel
from broker.domain.blast_radius import assess, describe_resource
from broker.domain.rendering import render_policy, validate_parameters
from broker.domain.templates import template_from_mapping

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(REPO_SCOPES)


def concrete(catalog, actions, name, **params):
    template = catalog.get(name)
    values = validate_parameters(template, params)
    return assess(template, actions=actions, rendered=render_policy(template, values), parameters=values)


def test_destructive_action_comes_first_in_words(catalog, actions):
    radius = concrete(catalog, actions, "prod-stack-recreate", stack_name="cost-explorer-api")
    assert radius.actions[0].action == "cloudformation:DeleteStack"
    assert [a.action for a in radius.destructive] == ["cloudformation:DeleteStack"]
    text = radius.to_text()
    lines = text.splitlines()
    assert lines.index("DESTRUCTIVE:") < lines.index("Write:")
    assert "can delete stack on CloudFormation stack cost-explorer-api (cloudformation:DeleteStack)" in text
    assert "Needs 2 approvals from group:sre" in text
    assert "Credentials last 15 minutes by default, at most 30 minutes." in text


def test_s3_prefix_in_plain_words_with_its_condition(catalog, actions):
    radius = concrete(catalog, actions, "s3-read-prefix", prefix="invoices/2024")
    sentences = {a.action: a.sentence for a in radius.actions}
    assert sentences["s3:GetObject"] == \
        "can get object on objects under s3://broker-demo-bucket/invoices/2024/ (s3:GetObject)"
    # the evaluator finds ListBucket conditional on s3:prefix
    assert sentences["s3:ListBucket"].endswith("only when s3:prefix StringLike invoices/2024/*")
    assert not radius.destructive and "Needs no approval" in radius.to_text()


def test_json_groups_by_access_level_and_carries_ttl_approvals_and_policy(catalog, actions):
    radius = concrete(catalog, actions, "ecs-update-service-prod", cluster="prod", service="api")
    body = json.loads(json.dumps(radius.to_dict()))
    assert body["by_access_level"] == {"Write": ["ecs:UpdateService"], "Read": ["ecs:DescribeServices"]}
    assert body["ttl"] == {"default": 900, "max": 1800}
    assert body["approval"]["approvals"] == 2 and body["approval"]["approvers"] == ["group:sre"]
    assert body["resources"] == ["arn:aws:ecs:us-east-1:444455556666:service/prod/api"]
    assert body["policy"]["size"] == len(render_policy(catalog.get("ecs-update-service-prod"), validate_parameters(
        catalog.get("ecs-update-service-prod"), {"cluster": "prod", "service": "api"})).json)
    assert body["summary"][0] == ("[PRODUCTION-TRAFFIC] Can update service on ECS service api in cluster prod "
                                  "(ecs:UpdateService).")
    assert [(r["class"], r["actions"]) for r in body["risk"]] == [("production-traffic", ["ecs:UpdateService"])]
    assert body["risk"][0]["sentence"].startswith("can change what is served")


def test_template_level_shows_placeholders_and_constraints(catalog, actions):
    radius = assess(catalog.get("logs-investigate"), actions=actions)
    assert not radius.concrete and radius.policy_size is None
    assert radius.parameters["log_group"] == "matches ^/aws/lambda/[a-z0-9-]{1,40}$"
    assert {a.access_level for a in radius.actions} == {AccessLevel.READ, AccessLevel.LIST}
    assert "log group {log_group}" in radius.to_text()


def test_wildcard_actions_are_expanded_and_ordered_by_danger(actions):
    template = template_from_mapping({
        "name": "w", "description": "d", "environment": "dev", "role": "arn:aws:iam::1:role/broker-target-w",
        "statements": [{"actions": ["s3:*Object"], "resources": ["arn:aws:s3:::b/p/*"]}],
        "requesters": ["agent:*"], "destructive": True, "approval": {"approvals": 1, "approvers": ["group:sre"]},
    }, source="w.yaml")
    radius = assess(template, actions=actions)
    names = [a.action for a in radius.actions]
    assert "s3:DeleteObject" in names and "s3:GetObject" in names
    assert names.index("s3:DeleteObject") < names.index("s3:PutObject") < names.index("s3:GetObject")
    assert "can delete object on objects under s3://b/p/ (s3:DeleteObject)" in radius.to_text()


@pytest.mark.parametrize(("arn", "words"), [
    ("*", "any resource (these actions have no resource-level permissions)"),
    ("arn:aws:s3:::ce-reports-prod/invoices/*", "objects under s3://ce-reports-prod/invoices/"),
    ("arn:aws:s3:::b/*", "every object in s3://b"),
    ("arn:aws:s3:::b", "bucket s3://b"),
    ("arn:aws:logs:us-east-1:1:log-group:/aws/lambda/x", "log group /aws/lambda/x"),
    ("arn:aws:lambda:us-east-1:1:function:api", "Lambda function api"),
    ("arn:aws:dynamodb:us-east-1:1:table/t", "arn:aws:dynamodb:us-east-1:1:table/t"),
])
def test_resources_in_plain_words(arn, words):
    assert describe_resource(arn) == words


def _template(actions_: list[str], resources: list[str], **extra):
    return template_from_mapping({
        "name": "h", "description": "d", "environment": extra.pop("environment", "dev"),
        "role": "arn:aws:iam::1:role/broker-target-h",
        "statements": [{"actions": actions_, "resources": resources}], "requesters": ["agent:*"],
        "approval": {"approvals": 1, "approvers": ["group:sre"]}, **extra}, source="h.yaml")


@pytest.mark.parametrize(("name", "params", "danger", "headline"), [
    ("prod-stack-recreate", {"stack_name": "cost-explorer-api"}, "destructive",
     "Can delete stack on CloudFormation stack cost-explorer-api in production, plus 2 other actions."),
    ("ecs-update-service-prod", {"cluster": "prod", "service": "api"}, "production-traffic",
     "Can update service on ECS service api in cluster prod in production, plus 1 other action."),
    ("s3-read-prefix", {"prefix": "invoices/2024"}, "read-only",
     "Can get object on objects under s3://broker-demo-bucket/invoices/2024/ in dev, plus 1 other action."),
])
def test_the_headline_names_the_most_dangerous_grant_and_its_target(catalog, actions, name, params, danger,
                                                                     headline):
    radius = concrete(catalog, actions, name, **params)
    assert radius.danger == danger
    assert radius.headline() == headline
    assert radius.to_dict()["headline"] == headline and radius.to_dict()["danger"] == danger


def test_the_headline_puts_a_permission_change_before_writes_and_counts_extra_targets(actions):
    roles = [f"arn:aws:iam::1:role/broker-target-r{i}" for i in range(4)]
    radius = assess(_template(["iam:PutRolePolicy", "s3:PutObject"], roles,
                              capabilities=["permissions-management"]), actions=actions)
    assert radius.danger == "permission-changing"
    assert radius.headline() == ("Can put role policy on IAM role broker-target-r0; IAM role broker-target-r1 "
                                 "and 2 more in dev, plus 1 other action.")


def test_the_headline_of_a_conditional_grant_says_when(catalog, actions):
    template = _template(["s3:ListBucket"], ["arn:aws:s3:::b"])
    conditional = template.model_copy(update={"statements": [template.statements[0].model_copy(
        update={"conditions": {"StringLike": {"s3:prefix": ["p/*"]}}})]})
    assert assess(conditional, actions=actions).headline() == \
        "Can list bucket on bucket s3://b in dev only when s3:prefix StringLike p/*."


def test_a_headline_with_nothing_known_says_so(actions):
    radius = assess(_template(["s3:NoSuchAction"], ["*"]), actions=actions)
    assert radius.danger == "none"
    assert radius.headline().startswith("These credentials grant no action the broker knows")
