"""Review: when one action is granted by two statements, one with a condition and one without, the blast
radius merged both into one line with one condition list, so an unconditional grant read as conditional
(or a conditional one as unconditional) to the co-signer."""

from __future__ import annotations

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.domain.blast_radius import assess
from broker.domain.templates import template_from_mapping

OPEN = "arn:aws:s3:::open-bucket/*"
TAGGED = "arn:aws:s3:::tagged-bucket/*"
CONDITION = {"StringEquals": {"s3:ExistingObjectTag/public": "yes"}}


@pytest.fixture(scope="module")
def actions():
    return default_action_knowledge()


def template(conditional_first: bool):
    plain = {"sid": "Open", "actions": ["s3:GetObject"], "resources": [OPEN]}
    tagged = {"sid": "Tagged", "actions": ["s3:GetObject"], "resources": [TAGGED], "conditions": CONDITION}
    return template_from_mapping({
        "name": "t", "description": "review", "environment": "dev",
        "role": "arn:aws:iam::123456789012:role/broker-target-t",
        "statements": [tagged, plain] if conditional_first else [plain, tagged],
        "requesters": ["agent:*"],
    }, source="review")


@pytest.mark.parametrize("conditional_first", [False, True])
def test_each_resource_keeps_its_own_conditions(actions, conditional_first):
    radius = assess(template(conditional_first), actions=actions)
    grants = [a for a in radius.actions if a.action == "s3:GetObject"]
    by_resource = {r: g.conditions for g in grants for r in g.resources}
    assert set(by_resource) == {OPEN, TAGGED}
    assert by_resource[OPEN] == ()
    assert by_resource[TAGGED] == ("s3:ExistingObjectTag/public StringEquals yes",)
    unconditional = [s for s in radius.sentences() if "open-bucket" in s]
    assert unconditional and all("only when" not in s for s in unconditional)


@pytest.mark.parametrize("conditional_first", [False, True])
def test_action_lists_name_each_action_once(actions, conditional_first):
    body = assess(template(conditional_first), actions=actions).to_dict()
    assert body["by_access_level"]["Read"].count("s3:GetObject") == 1
