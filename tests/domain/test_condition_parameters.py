"""A parameter in a condition value is checked by what the condition operator compares (issue 15, also seen).

The widening rules were written for ARNs: ``0.0.0.0/0`` passes them, so a template that lets the agent
name the network in ``IpAddress: {aws:SourceIp: "{cidr}"}`` let it lift the restriction altogether.
Decided: IP operators take an address or network no wider than /16 (IPv4) or /48 (IPv6); numeric, date
and boolean operators take values of their type; an agent-chosen value in a negated operator
(``NotIpAddress``, ``StringNotEquals``, ...) can only widen the statement, so a template may put only a
fixed-list (``enum``) parameter there, checked when it loads.
"""

from __future__ import annotations

import pytest

from broker.domain.rendering import render_policy, validate_parameters
from broker.domain.templates import template_from_mapping
from broker.errors import InvalidParameter, TemplateError


def template_with(operator: str, key: str, value: str, spec: dict | None = None):
    return template_from_mapping({
        "name": "t", "description": "d", "environment": "dev", "role": "arn:aws:iam::123456789012:role/x",
        "parameters": {"v": spec or {"type": "string"}},
        "statements": [{"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::bucket/*"],
                        "conditions": {operator: {key: value}}}],
        "requesters": ["agent:*"],
    }, source="test")


@pytest.mark.parametrize(("operator", "key", "value", "given"), [
    ("IpAddress", "aws:SourceIp", "{v}", "0.0.0.0/0"),
    ("IpAddress", "aws:SourceIp", "{v}", "10.0.0.0/8"),
    ("IpAddress", "aws:SourceIp", "{v}", "not-an-address"),
    ("IpAddress", "aws:SourceIp", "{v}/0", "0.0.0.0"),
    ("IpAddress", "aws:SourceIp", "10.{v}", "0.0.0/1"),
    ("ForAnyValue:IpAddressIfExists", "aws:SourceIp", "{v}", "0.0.0.0/1"),
    ("NumericLessThanEquals", "s3:max-keys", "{v}", "lots"),
    ("DateGreaterThan", "aws:CurrentTime", "{v}", "yesterday"),
    ("Bool", "aws:SecureTransport", "{v}", "maybe"),
])
def test_a_condition_value_of_the_wrong_kind_or_too_wide_is_refused(operator, key, value, given):
    template = template_with(operator, key, value)
    with pytest.raises(InvalidParameter) as caught:
        validate_parameters(template, {"v": given})
    assert caught.value.field == "parameters.v"


@pytest.mark.parametrize(("operator", "key", "value", "given", "rendered"), [
    ("IpAddress", "aws:SourceIp", "{v}", "203.0.113.7", "203.0.113.7"),
    ("IpAddress", "aws:SourceIp", "{v}", "192.168.0.0/16", "192.168.0.0/16"),
    ("IpAddress", "aws:SourceIp", "{v}/24", "192.168.4.0", "192.168.4.0/24"),
    ("NumericLessThanEquals", "s3:max-keys", "{v}", "100", "100"),
    ("DateLessThan", "aws:CurrentTime", "{v}", "2026-12-31", "2026-12-31"),  # no ":" in any parameter
    ("StringEquals", "aws:RequestedRegion", "{v}", "eu-west-1", "eu-west-1"),
])
def test_a_condition_value_of_the_right_kind_renders(operator, key, value, given, rendered):
    template = template_with(operator, key, value)
    policy = render_policy(template, validate_parameters(template, {"v": given}))
    assert policy.document["Statement"][0]["Condition"] == {operator: {key: rendered}}


@pytest.mark.parametrize("operator", ["NotIpAddress", "StringNotEquals", "StringNotLike", "ArnNotLike",
                                      "ForAllValues:StringNotEqualsIfExists"])
def test_a_free_parameter_in_a_negated_condition_does_not_load(operator):
    with pytest.raises(TemplateError) as caught:
        template_with(operator, "aws:SourceIp", "{v}")
    assert "negated" in caught.value.message


def test_a_fixed_list_parameter_in_a_negated_condition_loads():
    template = template_with("NotIpAddress", "aws:SourceIp", "{v}",
                             {"type": "string", "enum": ["198.51.100.0/24"], "default": "198.51.100.0/24"})
    assert validate_parameters(template, {}) == {"v": "198.51.100.0/24"}
