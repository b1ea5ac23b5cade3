"""Guardrails: every rule and every escalation shape, table-style over hostile templates."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.storage.template_files import load_catalog, template_files
from broker.domain import guardrails
from broker.domain.actions import AccessLevel, ActionInfo, ResourceType, Risk, StaticActionKnowledge
from broker.domain.risk import classify
from broker.domain.guardrails import Finding, RenderedChecks, check_rendered, check_template
from broker.domain.rendering import RenderedPolicy, render_policy, validate_parameters
from broker.domain.templates import template_from_mapping
from broker.errors import TemplateError

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
ACCOUNT = {"type": "aws_account_id", "enum": ["123456789012"], "default": "123456789012"}


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


def base(**overrides: Any) -> dict[str, Any]:
    """A clean dev template (logs read on one group); tests mutate a copy."""
    data: dict[str, Any] = {
        "name": "t", "description": "test", "environment": "dev",
        "role": "arn:aws:iam::{account}:role/broker-target-t",
        "parameters": {"account": dict(ACCOUNT),
                       "group": {"type": "string", "pattern": "^/aws/lambda/[a-z-]{1,20}$"}},
        "statements": [{"sid": "Logs", "actions": ["logs:FilterLogEvents"],
                        "resources": ["arn:aws:logs:us-east-1:{account}:log-group:{group}"]}],
        "requesters": ["agent:*"],
    }
    data.update(copy.deepcopy(overrides))
    return data


def statement(actions_: list[str], resources: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [{"actions": actions_, "resources": resources, **extra}]


PROD_APPROVAL = {"approvals": 2, "approvers": ["group:sre"]}
ONE_APPROVAL = {"approvals": 1, "approvers": ["group:sre"]}
ROLE_ARN = "arn:aws:iam::123456789012:role/broker-target-x"
BUCKET_OBJECTS = "arn:aws:s3:::b/p/*"

# (id, template overrides, expected finding code)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("star action", {"statements": statement(["*"], ["*"])}, "action_star"),
    ("service star", {"statements": statement(["s3:*"], [BUCKET_OBJECTS])}, "service_star"),
    ("service star-question", {"statements": statement(["s3:*?"], [BUCKET_OBJECTS])}, "service_star"),
    ("unknown service", {"statements": statement(["nosuchsvc:GetThing"], [BUCKET_OBJECTS])}, "unknown_service"),
    ("unknown action", {"statements": statement(["s3:GetObjectt"], [BUCKET_OBJECTS])}, "unknown_action"),
    ("pattern matching nothing", {"statements": statement(["s3:Zzz*"], [BUCKET_OBJECTS])}, "unknown_action"),
    ("resource star on scoped action", {"statements": statement(["s3:GetObject"], ["*"])}, "resource_star"),
    ("resource star on logs", {"statements": statement(["logs:FilterLogEvents"], ["*"])}, "resource_star"),
    ("every bucket", {"statements": statement(["s3:GetObject"], ["arn:aws:s3:::*"])}, "resource_all_of_type"),
    ("every log group", {"statements": statement(["logs:FilterLogEvents"],
                                                 ["arn:aws:logs:us-east-1:{account}:log-group:*"])},
     "resource_all_of_type"),
    ("every ecs service", {"statements": statement(["ecs:DescribeServices"],
                                                   ["arn:aws:ecs:us-east-1:{account}:service/*/*"])},
     "resource_all_of_type"),
    ("any account", {"statements": statement(["logs:FilterLogEvents"],
                                             ["arn:aws:logs:us-east-1:*:log-group:{group}"])},
     "resource_any_account"),
    ("wildcard service in arn", {"statements": statement(["logs:FilterLogEvents"],
                                                         ["arn:aws:*:us-east-1:1:log-group:{group}"])},
     "resource_wildcard_service"),
    ("not an arn", {"statements": statement(["logs:FilterLogEvents"], ["log-group/x"])}, "resource_not_arn"),
    ("unknown operator", {"statements": statement(["s3:GetObject"], [BUCKET_OBJECTS],
                                                  conditions={"StringSortOf": {"s3:prefix": "x"}})},
     "condition_operator_unknown"),
    ("unknown qualifier", {"statements": statement(["s3:GetObject"], [BUCKET_OBJECTS],
                                                   conditions={"ForSomeValues:StringLike": {"aws:TagKeys": "x"}})},
     "condition_operator_unknown"),
    # destructive / permission-changing must be declared and co-signed
    ("undeclared destructive", {"statements": statement(["s3:DeleteObject"], [BUCKET_OBJECTS]),
                                "approval": ONE_APPROVAL}, "undeclared_destructive"),
    ("wildcard hides a delete", {"statements": statement(["s3:*Object"], [BUCKET_OBJECTS]),
                                 "approval": ONE_APPROVAL}, "undeclared_destructive"),
    ("destructive without co-signing", {"statements": statement(["s3:DeleteObject"], [BUCKET_OBJECTS]),
                                        "destructive": True}, "risk_without_cosigning"),
    ("capability without co-signing", {"statements": statement(["s3:DeleteObject"], [BUCKET_OBJECTS]),
                                       "capabilities": ["destructive"]}, "risk_without_cosigning"),
    ("undeclared permission change", {"statements": statement(["s3:PutBucketPolicy"], ["arn:aws:s3:::b"]),
                                      "approval": ONE_APPROVAL}, "undeclared_permission_changing"),
    ("permission change without co-signing", {"statements": statement(["s3:PutBucketPolicy"], ["arn:aws:s3:::b"]),
                                              "capabilities": ["permissions-management"]},
     "risk_without_cosigning"),
    ("key deletion undeclared", {"statements": statement(["kms:ScheduleKeyDeletion"],
                                                         ["arn:aws:kms:us-east-1:{account}:key/abc"]),
                                 "approval": ONE_APPROVAL}, "undeclared_destructive"),
    ("unknown capability", {"capabilities": ["delete-everything"]}, "unknown_capability"),
    ("production with zero approvals", {"environment": "production"}, "production_approvals"),
    ("production with one approval", {"environment": "production", "approval": ONE_APPROVAL},
     "production_approvals"),
    ("read-only claim on a writer", {"environment": "production",
                                     "statements": statement(["lambda:UpdateFunctionCode"],
                                                             ["arn:aws:lambda:us-east-1:{account}:function:f"]),
                                     "approval": {**ONE_APPROVAL, "read_only_single_approver": True}},
     "read_only_claim_false"),
    # A secret value is a read that outlives the session: one co-signer in production is not enough.
    ("read-only single approver on a production secret read",
     {"environment": "production", "capabilities": ["credential-exposure"],
      "statements": statement(["secretsmanager:GetSecretValue"],
                              ["arn:aws:secretsmanager:us-east-1:{account}:secret:db-AbCdEf"]),
      "approval": {**ONE_APPROVAL, "read_only_single_approver": True}}, "production_approvals"),
    # privilege-escalation shapes
    ("passrole on every role", {"statements": statement(["iam:PassRole"], ["*"],
                                                        conditions={"StringEquals": {"iam:PassedToService":
                                                                                     "lambda.amazonaws.com"}}),
                                "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "passrole_any_role"),
    ("passrole on role/*", {"statements": statement(["iam:PassRole"], ["arn:aws:iam::{account}:role/*"],
                                                    conditions={"StringEquals": {"iam:PassedToService":
                                                                                 "lambda.amazonaws.com"}}),
                            "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "passrole_any_role"),
    ("passrole without PassedToService", {"statements": statement(["iam:PassRole"], [ROLE_ARN]),
                                          "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "passrole_without_service"),
    ("passrole plus lambda create", {"statements": statement(["iam:PassRole"], [ROLE_ARN],
                                                             conditions={"StringEquals": {"iam:PassedToService":
                                                                                          "lambda.amazonaws.com"}})
                                     + statement(["lambda:CreateFunction"],
                                                 ["arn:aws:lambda:us-east-1:{account}:function:f"]),
                                     "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "passrole_and_run_code"),
    ("passrole plus ec2 run", {"statements": statement(["iam:PassRole"], [ROLE_ARN],
                                                       conditions={"StringEquals": {"iam:PassedToService":
                                                                                    "ec2.amazonaws.com"}})
                               + statement(["ec2:RunInstances"], ["arn:aws:ec2:us-east-1:{account}:instance/*"]),
                               "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "passrole_and_run_code"),
    ("create policy version", {"statements": statement(["iam:CreatePolicyVersion"],
                                                       ["arn:aws:iam::{account}:policy/p"]),
                               "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "iam_policy_write"),
    ("attach role policy", {"statements": statement(["iam:AttachRolePolicy"], [ROLE_ARN]),
                            "capabilities": ["permissions-management"], "approval": ONE_APPROVAL}, "iam_policy_write"),
    ("put role policy", {"statements": statement(["iam:PutRolePolicy"], [ROLE_ARN]),
                         "capabilities": ["permissions-management"], "approval": ONE_APPROVAL}, "iam_policy_write"),
    ("put role policy via wildcard", {"statements": statement(["iam:Put*Policy"], [ROLE_ARN]),
                                      "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "iam_policy_write"),
    ("assume another role", {"statements": statement(["sts:AssumeRole"], [ROLE_ARN]),
                             "capabilities": ["permissions-management"], "approval": ONE_APPROVAL},
     "assume_other_role"),
    # role and parameters
    ("agent picks the account", {"parameters": {"account": {"type": "aws_account_id"},
                                                "group": {"type": "string", "pattern": "^/aws/lambda/[a-z]+$"}}},
     "role_parameter_not_fixed"),
    ("agent picks the role", {"role": "arn:aws:iam::123456789012:role/{role}",
                              "parameters": {"role": {"type": "string", "pattern": "^broker-target-[a-z]+$"},
                                             "account": dict(ACCOUNT),
                                             "group": {"type": "string", "pattern": "^/aws/lambda/[a-z]+$"}}},
     "role_parameter_not_fixed"),
    ("role outside broker-target", {"role": "arn:aws:iam::{account}:role/admin"}, "role_not_target"),
    ("role wildcard", {"role": "arn:aws:iam::{account}:role/broker-target-*"}, "role_wildcard"),
    ("not a role arn", {"role": "arn:aws:iam::{account}:user/broker-target-x"}, "role_not_role_arn"),
    ("policy too large", {"statements": [{"actions": ["logs:FilterLogEvents"],
                                          "resources": [f"arn:aws:logs:us-east-1:{{account}}:log-group:/g{i:04d}-"
                                                        + "x" * 60 for i in range(30)]}]},
     "policy_too_large"),
]


@pytest.mark.parametrize(("overrides", "code"), [pytest.param(o, c, id=i) for i, o, c in HOSTILE])
def test_hostile_template_is_refused(actions, overrides, code):
    template = template_from_mapping(base(**overrides), source="hostile.yaml")
    findings = check_template(template, actions=actions)
    codes = {f.code for f in findings}
    assert code in codes, findings
    hit = next(f for f in findings if f.code == code)
    assert hit.blocking and hit.severity == "error" and hit.field and hit.template == "t"


def test_clean_base_template_has_no_findings(actions):
    assert check_template(template_from_mapping(base(), source="t.yaml"), actions=actions) == []


@pytest.mark.parametrize("overrides", [
    pytest.param({"statements": statement(["ce:GetCostAndUsage", "ce:GetCostForecast"], ["*"])}, id="ce-star"),
    pytest.param({"environment": "production", "approval": {**ONE_APPROVAL, "read_only_single_approver": True}},
                 id="prod-read-only-one-approver"),
    pytest.param({"environment": "production", "approval": PROD_APPROVAL}, id="prod-two-approvers"),
    pytest.param({"statements": statement(["s3:DeleteObject"], [BUCKET_OBJECTS]), "destructive": True,
                  "approval": ONE_APPROVAL}, id="declared-destructive-co-signed"),
    pytest.param({"statements": statement(["s3:getobject"], [BUCKET_OBJECTS])}, id="action-case-insensitive"),
    pytest.param({"statements": statement(["logs:Get*"], ["arn:aws:logs:us-east-1:{account}:log-group:{group}"])},
                 id="read-wildcard-expanded"),
])
def test_acceptable_templates_pass(actions, overrides):
    findings = check_template(template_from_mapping(base(**overrides), source="t.yaml"), actions=actions)
    assert [f for f in findings if f.blocking] == []


def test_declared_but_unused_risk_is_a_warning(actions):
    findings = check_template(template_from_mapping(base(destructive=True, approval=ONE_APPROVAL), source="t"),
                              actions=actions)
    assert [(f.code, f.severity) for f in findings] == [("declared_risk_unused", "warning")]
    assert not findings[0].blocking


def test_near_size_limit_is_reported_with_the_figure(actions):
    # 17 resources of ~107 characters (with quotes): about 94% of 2048.
    resources = [f"arn:aws:logs:us-east-1:{{account}}:log-group:/g{i:04d}-" + "x" * 50 for i in range(17)]
    template = template_from_mapping(base(statements=statement(["logs:FilterLogEvents"], resources)), source="t")
    findings = check_template(template, actions=actions)
    assert [f.code for f in findings] == ["policy_near_limit"]
    assert "of 2048 characters" in findings[0].message


@pytest.mark.parametrize("key", ["NotAction", "NotResource", "Deny"])
def test_schema_rejects_not_elements_and_deny(key):
    statement_ = {"actions": ["s3:GetObject"], "resources": [BUCKET_OBJECTS]}
    if key == "Deny":
        statement_["effect"] = "Deny"
    else:
        statement_[key] = ["s3:DeleteObject"]
    with pytest.raises(TemplateError) as caught:
        template_from_mapping(base(statements=[statement_]), source="bad.yaml")
    findings = guardrails.template_error_findings(caught.value, source="bad.yaml")
    assert findings and all(f.blocking and f.source == "bad.yaml" for f in findings)
    assert any(f.field.startswith("statements[0]") for f in findings)


# ----------------------------------------------------------------------------- rendered policies
def _rendered(template, document, role="arn:aws:iam::123456789012:role/broker-target-t"):
    import json
    text = json.dumps(document, separators=(",", ":"))
    return RenderedPolicy(role_arn=role, document=document, json=text, digest="sha256:x")


@pytest.fixture(scope="module")
def clean():
    return template_from_mapping(base(), source="t.yaml")


def test_rendered_clean_policy_passes(actions, clean):
    rendered = render_policy(clean, validate_parameters(clean, {"group": "/aws/lambda/api"}))
    assert check_rendered(clean, rendered, actions=actions) == []


RESOURCE = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/api"
TAMPERED: list[tuple[str, dict[str, Any], str]] = [
    ("deny statement", {"Effect": "Deny", "Action": ["logs:FilterLogEvents"], "Resource": [RESOURCE]},
     "effect_not_allow"),
    ("not action", {"Effect": "Allow", "NotAction": ["logs:FilterLogEvents"], "Resource": [RESOURCE]}, "not_element"),
    ("not resource", {"Effect": "Allow", "Action": ["logs:FilterLogEvents"], "NotResource": [RESOURCE]},
     "not_element"),
    ("star action", {"Effect": "Allow", "Action": ["*"], "Resource": [RESOURCE]}, "action_star"),
    ("extra action", {"Effect": "Allow", "Action": ["logs:FilterLogEvents", "logs:GetLogEvents"],
                      "Resource": [RESOURCE]}, "policy_widened"),
    ("wildcard in value", {"Effect": "Allow", "Action": ["logs:FilterLogEvents"],
                           "Resource": ["arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/*"]},
     "policy_widened"),
    ("policy variable in value", {"Effect": "Allow", "Action": ["logs:FilterLogEvents"],
                                  "Resource": ["arn:aws:logs:us-east-1:123456789012:log-group:${aws:username}"]},
     "policy_widened"),
    ("resource star", {"Effect": "Allow", "Action": ["logs:FilterLogEvents"], "Resource": ["*"]}, "resource_star"),
]


@pytest.mark.parametrize(("statement_", "code"), [pytest.param(s, c, id=i) for i, s, c in TAMPERED])
def test_rendered_policy_is_rechecked(actions, clean, statement_, code):
    rendered = _rendered(clean, {"Version": "2012-10-17", "Statement": [statement_]})
    assert code in {f.code for f in check_rendered(clean, rendered, actions=actions)}


def test_rendered_role_is_rechecked(actions, clean):
    rendered = render_policy(clean, validate_parameters(clean, {"group": "/aws/lambda/api"}))
    tampered = RenderedPolicy("arn:aws:iam::123456789012:role/admin", rendered.document, rendered.json, rendered.digest)
    assert "role_not_target" in {f.code for f in check_rendered(clean, tampered, actions=actions)}


def test_remembered_rendered_checks_key_on_template_role_and_policy(actions, clean):
    checks = RenderedChecks(actions, maxsize=2)
    rendered = render_policy(clean, validate_parameters(clean, {"group": "/aws/lambda/api"}))
    assert checks(clean, rendered) == [] and checks(clean, rendered) == []
    # Same policy digest, another role: not the remembered answer.
    other_role = RenderedPolicy("arn:aws:iam::123456789012:role/admin", rendered.document, rendered.json,
                                rendered.digest)
    assert "role_not_target" in {f.code for f in checks(clean, other_role)}
    # Another policy (its own digest): checked, and refused.
    widened = _rendered(clean, {"Version": "2012-10-17", "Statement": [TAMPERED[4][1]]})
    widened = RenderedPolicy(widened.role_arn, widened.document, widened.json, "sha256:other")
    assert "policy_widened" in {f.code for f in checks(clean, widened)}
    # A changed template (another version digest) is checked again, not answered from memory.
    stricter = template_from_mapping({**base(), "description": "changed"}, source="t.yaml")
    assert stricter.version_digest != clean.version_digest
    assert checks(stricter, other_role) == check_rendered(stricter, other_role, actions=actions)
    # Bounded: the oldest entries go.
    assert len(checks._seen) == 2


# ----------------------------------------------------------------------------- shipped templates
SHIPPED = sorted(p.stem for p in template_files([REPO_SCOPES]))


def test_the_shipped_set_is_the_agreed_one():
    assert SHIPPED == sorted(["logs-investigate", "cost-explorer-read", "s3-read-prefix", "lambda-deploy-dev",
                              "ecs-update-service-prod", "prod-stack-recreate", "workspace-reset"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_template_lints_clean(actions, name):
    catalog = load_catalog(REPO_SCOPES)
    assert check_template(catalog.get(name), actions=actions) == []


def test_catalog_refuses_a_folder_with_a_hostile_template(actions, tmp_path):
    import yaml
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(base(statements=statement(["s3:*"], [BUCKET_OBJECTS]))))
    with pytest.raises(TemplateError) as caught:
        load_catalog(tmp_path, checks=[lambda t: check_template(t, actions=actions)])
    assert "service_star" in str(caught.value)


def test_finding_is_readable_and_serialisable():
    finding = Finding("resource_star", "error", "statements[0].resources[0]", "too wide", template="t", source="t.yaml")
    assert str(finding) == "t.yaml: template 't': statements[0].resources[0]: error [resource_star] too wide"
    assert finding.to_dict()["field"] == "statements[0].resources[0]"


# ----------------------------------------------------------------------------- action knowledge
def test_action_database_loads_once_per_process():
    assert default_action_knowledge() is default_action_knowledge()


@pytest.mark.parametrize(("action", "level", "risks"), [
    ("s3:GetObject", AccessLevel.READ, set()),
    ("S3:DELETEOBJECT", AccessLevel.WRITE, {Risk.DESTRUCTIVE}),
    ("cloudformation:DeleteStack", AccessLevel.WRITE, {Risk.DESTRUCTIVE}),
    ("ec2:TerminateInstances", AccessLevel.WRITE, {Risk.DESTRUCTIVE}),
    ("kms:ScheduleKeyDeletion", AccessLevel.WRITE, {Risk.DESTRUCTIVE}),
    ("iam:PassRole", AccessLevel.PERMISSIONS_MANAGEMENT, {Risk.PERMISSION_CHANGING}),
    ("iam:PutRolePolicy", AccessLevel.PERMISSIONS_MANAGEMENT, {Risk.PERMISSION_CHANGING}),
    ("iam:DeleteRolePolicy", AccessLevel.PERMISSIONS_MANAGEMENT, {Risk.PERMISSION_CHANGING, Risk.DESTRUCTIVE}),
    ("s3:DeleteObjectTagging", AccessLevel.TAGGING, set()),
    ("logs:DescribeLogStreams", AccessLevel.LIST, set()),
])
def test_action_classification(actions, action, level, risks):
    info = actions.lookup(action)
    assert info is not None and info.access_level is level and set(classify(info)) == risks


def test_unknown_action_is_none_and_wildcards_expand(actions):
    assert actions.lookup("s3:NoSuchThing") is None
    expanded = {i.key for i in actions.expand("s3:Get*")}
    assert "s3:GetObject" in expanded and all(k.startswith("s3:Get") for k in expanded)
    assert actions.expand("*:GetObject") == ()


def test_ce_queries_have_no_resource_level_permissions(actions):
    assert not actions.lookup("ce:GetCostAndUsage").supports_resource_level_permissions
    assert actions.lookup("s3:GetObject").supports_resource_level_permissions


def test_guardrails_work_with_any_action_knowledge():
    fake = StaticActionKnowledge((ActionInfo("svc", "DeleteThing", AccessLevel.WRITE,
                                             (ResourceType("thing", "arn:${Partition}:svc:${Region}:${Account}:"
                                                                    "thing/${Name}"),)),))
    assert classify(fake.lookup("svc:deletething")) == {Risk.DESTRUCTIVE}
    template = template_from_mapping(base(statements=statement(["svc:DeleteThing"],
                                                               ["arn:aws:svc:us-east-1:{account}:thing/*"])),
                                     source="t")
    codes = {f.code for f in check_template(template, actions=fake)}
    assert {"undeclared_destructive", "risk_without_cosigning", "resource_all_of_type"} <= codes
