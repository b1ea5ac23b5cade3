"""Table tests: template parsing, parameter validation, rendering, STS's own input rules."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from broker.domain.rendering import SESSION_POLICY_MAX_CHARS, render_policy, validate_parameters
from broker.domain.sts_rules import (check_session_tags, resolve_ttl, role_session_name, session_tags,
                                     source_identity_for)
from broker.domain.templates import parse_template, template_from_mapping
from broker.errors import InvalidInput, InvalidParameter, InvalidTtl, PolicyTooLarge, TemplateError


def make(**overrides):
    data = {
        "name": "t", "description": "d", "environment": "dev",
        "role": "arn:aws:iam::{account}:role/broker-target-x",
        "parameters": {"account": {"type": "aws_account_id", "enum": ["123456789012"], "default": "123456789012"},
                       "name": {"type": "string", "pattern": "^[a-z-]{1,20}$"},
                       "region": {"type": "aws_region", "default": "us-east-1"},
                       "count": {"type": "integer", "min": 1, "max": 3, "default": 1}},
        "statements": [{"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::bucket/{name}/*"]}],
        "requesters": ["agent:*"],
    }
    data.update(overrides)
    return template_from_mapping(data, source="test")


# ------------------------------------------------------------------ templates
BAD_TEMPLATES = [
    ({"statements": []}, "statements"),
    ({"statements": [{"actions": ["s3:GetObject"], "resources": ["*"], "NotAction": ["x"]}]}, "statements.0.NotAction"),
    ({"statements": [{"effect": "Deny", "actions": ["s3:GetObject"], "resources": ["*"]}]}, "statements.0.effect"),
    ({"statements": [{"actions": ["GetObject"], "resources": ["*"]}]}, "statements.0.actions"),
    ({"requesters": []}, "requesters"),
    ({"environment": "prod"}, "environment"),
    ({"ttl": {"default": 600, "max": 900}}, "ttl"),
    ({"ttl": {"default": 900, "max": 50000}}, "ttl"),
    ({"ttl": {"default": 900, "max": 7200}}, "(template)"),  # above role_max_session (3600)
    ({"approval": {"approvals": 2, "approvers": []}}, "approval"),
    ({"role": "arn:aws:iam::{acct}:role/x"}, "(template)"),  # undeclared placeholder
    ({"name": "Bad Name"}, "name"),
    ({"parameters": {"x": {"type": "string", "pattern": "("}}}, "parameters.x.pattern"),
    ({"parameters": {"x": {"type": "string", "min": 1}}}, "parameters.x"),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_TEMPLATES)
def test_bad_templates_name_the_field(overrides, field):
    with pytest.raises(TemplateError) as caught:
        make(**overrides)
    assert caught.value.field == field
    assert caught.value.message.startswith("test: ")


@pytest.mark.parametrize("text", ["", "- a list", "name: [unclosed", "just a string"])
def test_unreadable_yaml_is_a_template_error(text):
    with pytest.raises(TemplateError):
        parse_template(text, source="f.yaml")


def test_version_digest_is_stable_and_changes_with_content():
    assert make().version_digest == make().version_digest
    assert make().version_digest != make(description="other").version_digest


# ------------------------------------------------------------------ parameters
GOOD = [
    ({"name": "abc"}, {"name": "abc", "account": "123456789012", "region": "us-east-1", "count": "1"}),
    ({"name": "a-b", "region": "eu-west-2", "count": 3}, {"name": "a-b", "region": "eu-west-2", "count": "3"}),
    ({"name": "x", "count": "2"}, {"count": "2"}),
]


@pytest.mark.parametrize(("given", "expected_subset"), GOOD)
def test_valid_parameters(given, expected_subset):
    values = validate_parameters(make(), given)
    assert expected_subset.items() <= values.items()


BAD_PARAMETERS = [
    ({}, "missing_parameter", "parameters.name"),
    ({"name": "ABC"}, "invalid_parameter", "parameters.name"),
    ({"name": "a*"}, "invalid_parameter", "parameters.name"),
    ({"name": "a", "account": "210987654321"}, "invalid_parameter", "parameters.account"),
    ({"name": "a", "account": "12345"}, "invalid_parameter", "parameters.account"),
    ({"name": "a", "region": "mars-1"}, "invalid_parameter", "parameters.region"),
    ({"name": "a", "count": 4}, "invalid_parameter", "parameters.count"),
    ({"name": "a", "count": 0}, "invalid_parameter", "parameters.count"),
    ({"name": "a", "count": True}, "invalid_parameter", "parameters.count"),
    ({"name": "a", "count": "1e3"}, "invalid_parameter", "parameters.count"),
    ({"name": ["a"]}, "invalid_parameter", "parameters.name"),
    ({"name": "a", "other": "b"}, "invalid_parameter", "parameters.other"),
]


@pytest.mark.parametrize(("given", "code", "field"), BAD_PARAMETERS)
def test_invalid_parameters(given, code, field):
    with pytest.raises(InvalidParameter) as caught:
        validate_parameters(make(), given)
    assert (caught.value.code, caught.value.field) == (code, field)


def test_parameters_must_be_an_object():
    with pytest.raises(InvalidParameter):
        validate_parameters(make(), ["name", "x"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ rendering
def test_render_substitutes_as_data_and_is_minified():
    template = make(statements=[{"actions": ["s3:GetObject", "s3:GetObject"],
                                 "resources": ["arn:aws:s3:::bucket/{name}/*"],
                                 "conditions": {"StringEquals": {"aws:RequestedRegion": "{region}"}}}])
    rendered = render_policy(template, validate_parameters(template, {"name": "abc"}))
    assert rendered.role_arn == "arn:aws:iam::123456789012:role/broker-target-x"
    assert rendered.document["Statement"][0] == {
        "Sid": "S0", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::bucket/abc/*"],
        "Condition": {"StringEquals": {"aws:RequestedRegion": "us-east-1"}}}
    assert json.loads(rendered.json) == rendered.document
    assert " " not in rendered.json
    assert rendered.digest.startswith("sha256:") and rendered.size == len(rendered.json)


def test_policy_over_the_sts_limit_is_a_template_error():
    template = make(statements=[{"actions": ["s3:GetObject"],
                                 "resources": [f"arn:aws:s3:::bucket/{i:04d}/{{name}}/*" for i in range(80)]}])
    with pytest.raises(PolicyTooLarge) as caught:
        render_policy(template, validate_parameters(template, {"name": "abc"}))
    assert caught.value.details["limit"] == SESSION_POLICY_MAX_CHARS


# ------------------------------------------------------------------ STS rules
@pytest.mark.parametrize(("requested", "result", "code"), [
    (None, 900, None), (900, 900, None), (3600, 3600, None),
    (899, None, "ttl_too_short"), (3601, None, "ttl_too_long"), ("900", None, "invalid_ttl"),
    (True, None, "invalid_ttl"), (-5, None, "ttl_too_short"),
])
def test_ttl_bounds(requested, result, code):
    template = make(ttl={"default": 900, "max": 3600})
    if code is None:
        assert resolve_ttl(template, requested) == result
    else:
        with pytest.raises(InvalidTtl) as caught:
            resolve_ttl(template, requested)
        assert caught.value.code == code and caught.value.field == "ttl_seconds"


@pytest.mark.parametrize(("principal", "expected"), [("agent:demo", "agent.demo"), ("agent:ci-deployer", "agent.ci-deployer"),
                                                     ("agent:a.b@c", "agent.a.b@c")])
def test_source_identity_is_sts_valid(principal, expected):
    assert source_identity_for(principal) == expected


@pytest.mark.parametrize(("principal", "expected"), [
    ("agent:a/b", "agent.a=2Fb"),
    ("agent:has space", "agent.has=20space"),
    ("agent:ü", "agent.=C3=BC"),
    ("agent:a=b", "agent.a=3Db"),                                     # the escape character is escaped
    ("agent:repo:acme/app:ref:refs/heads/main", "agent.repo=3Aacme=2Fapp=3Aref=3Arefs=2Fheads=2Fmain"),
    ("agent:system:serviceaccount:ci:deployer", "agent.system=3Aserviceaccount=3Aci=3Adeployer"),
])
def test_source_identity_escapes_what_sts_would_refuse(principal, expected):
    assert source_identity_for(principal) == expected


def test_a_long_source_identity_is_cut_and_ends_in_a_digest_of_the_id():
    long_one, other = "agent:" + "x" * 70, "agent:" + "x" * 69 + "y"
    value = source_identity_for(long_one)
    assert len(value) == 64 and value.startswith("agent." + "x" * 40) and value[-17] == "="
    assert source_identity_for(other) != value


def test_source_identity_refuses_an_id_too_short_for_sts():
    with pytest.raises(InvalidInput):
        source_identity_for("a")


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_source_identities_of_different_ids_differ(first, second):
    assume(first != second)
    a, b = source_identity_for("agent:" + first), source_identity_for("agent:" + second)
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", a, re.ASCII) and a != b


@pytest.mark.parametrize("principal", ["agent:demo", "agent:" + "y" * 100, "agent:we/ird:chars here"])
def test_role_session_name_is_always_valid(principal):
    import re

    name = role_session_name(principal, "0f8fad5b-d9cb-469f-a165-70867728950e")
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", name, re.ASCII)
    assert name.endswith("0f8fad5bd9cb469fa1657086")


def test_session_tags_carry_the_request_and_refuse_reserved_overrides():
    template = make(session_tags={"team": "sre"})
    tags = session_tags(request_id="r1", template=template, agent="agent:demo", human="human:alice", grant_id="g1")
    as_dict = {t["Key"]: t["Value"] for t in tags}
    assert as_dict == {"broker-request-id": "r1", "broker-grant-id": "g1", "broker-template": "t",
                       "broker-agent": "agent:demo", "broker-on-behalf-of": "human:alice", "team": "sre"}
    with pytest.raises(InvalidInput):
        session_tags(request_id="r1", template=make(session_tags={"broker-agent": "x"}), agent="agent:demo",
                     human="human:alice", grant_id="g1")


@pytest.mark.parametrize("tags", [
    {f"k{i}": "v" for i in range(51)}, {"": "v"}, {"k" * 129: "v"}, {"k": "v" * 257}, {"k": "bad\u0000"},
    {"Team": "a", "team": "b"}, {"k!": "v"},
])
def test_session_tags_that_sts_refuses(tags):
    with pytest.raises(InvalidInput):
        check_session_tags(tags)
