"""Review: Python's ``\\d`` matches every Unicode digit, so account ids and regions written with Arabic-Indic
or full-width digits passed validation and went into the ARNs of the session policy (as \\uXXXX escapes)."""

from __future__ import annotations

import pytest

from broker.domain.rendering import validate_parameters
from broker.domain.templates import template_from_mapping
from broker.errors import InvalidParameter


def template(kind: str):
    return template_from_mapping({
        "name": "t", "description": "review", "environment": "dev",
        "role": "arn:aws:iam::123456789012:role/broker-target-t",
        "parameters": {"p": {"type": kind}},
        "statements": [{"actions": ["logs:FilterLogEvents"],
                        "resources": ["arn:aws:logs:us-east-1:123456789012:log-group:g-{p}"]}],
        "requesters": ["agent:*"],
    }, source="review")


@pytest.mark.parametrize(("kind", "value"), [
    ("aws_account_id", "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662"),
    ("aws_account_id", "12345678901\uff12"),            # full-width 2
    ("aws_region", "us-east-\u0661"),
    ("aws_region", "eu-west-\u09e8"),                   # Bengali 2
    ("integer", "\u0661\u0662"),
])
def test_non_ascii_digits_are_refused(kind, value):
    with pytest.raises(InvalidParameter):
        validate_parameters(template(kind), {"p": value})


@pytest.mark.parametrize(("kind", "value"), [("aws_account_id", "123456789012"), ("aws_region", "us-east-1"),
                                              ("integer", "12")])
def test_ascii_digits_still_pass(kind, value):
    assert validate_parameters(template(kind), {"p": value}) == {"p": value}
