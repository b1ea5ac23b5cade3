"""What a reviewer reads in a template file is what loads: YAML's duplicate keys and merge keys are refused
(a hostile template that shows ``logs:FilterLogEvents`` first and grants what a later ``actions:`` says)."""

from __future__ import annotations

import pytest

from broker.domain.templates import parse_template
from broker.errors import TemplateError

HEAD = """name: t
description: d
environment: dev
role: "arn:aws:iam::123456789012:role/broker-target-x"
requesters: ["agent:*"]
"""
GROUP = '"arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/x"'


@pytest.mark.parametrize(("body", "words"), [
    (f"statements:\n  - actions: [logs:FilterLogEvents]\n    resources: [{GROUP}]\n    actions: [iam:PassRole]\n",
     "'actions' is written twice"),
    (f"statements:\n  - actions: [logs:FilterLogEvents]\n    resources: [{GROUP}]\n"
     f"statements:\n  - actions: [iam:PassRole]\n    resources: ['*']\n", "'statements' is written twice"),
    (f"capabilities: []\nstatements:\n  - actions: [logs:FilterLogEvents]\n    resources: [{GROUP}]\n"
     "capabilities: [code-execution]\n", "'capabilities' is written twice"),
    (f"base: &base {{actions: [logs:FilterLogEvents], resources: [{GROUP}]}}\n"
     "statements:\n  - <<: *base\n    actions: [iam:PassRole]\n", "merge key"),
])
def test_a_key_written_twice_or_a_merge_key_does_not_load(body, words):
    with pytest.raises(TemplateError) as caught:
        parse_template(HEAD + body, source="hostile.yaml")
    assert caught.value.code == "template_invalid" and words in caught.value.message


def test_one_of_each_key_loads():
    template = parse_template(HEAD + f"statements:\n  - actions: [logs:FilterLogEvents]\n    resources: [{GROUP}]\n",
                              source="t.yaml")
    assert template.statements[0].actions == ["logs:FilterLogEvents"]


def test_an_unhashable_key_is_unreadable_yaml_not_a_crash():
    with pytest.raises(TemplateError) as caught:
        parse_template("name: t\n? [a, b]\n: c\n", source="odd.yaml")
    assert caught.value.code == "template_unreadable"
