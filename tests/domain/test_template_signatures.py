"""Template signatures, against hostile inputs: wrong key, one owner twice, another digest, a renamed template."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.domain.template_signatures import (
    SigningRule, TemplateOwner, TemplateSignature, owners_from_config, parse_signature, sign_template,
)
from broker.domain.templates import parse_template
from broker.errors import InvalidInput

PROD = """
name: ecs-prod
description: one ECS service
environment: production
role: "arn:aws:iam::123456789012:role/broker-target-ecs"
statements:
  - actions: ["ecs:UpdateService"]
    resources: ["arn:aws:ecs:us-east-1:123456789012:service/c/s"]
requesters: ["agent:*"]
approval: {approvals: 2, approvers: ["group:sre"]}
"""
DEV = PROD.replace("environment: production", "environment: dev").replace("name: ecs-prod", "name: ecs-dev")


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def keys():
    return {name: Ed25519PrivateKey.generate() for name in ("alice", "bob", "carol", "mallory")}


@pytest.fixture
def rule(keys):
    owners = tuple(TemplateOwner(name, (keys[name].public_key(),)) for name in ("alice", "bob", "carol"))
    return SigningRule(owners=owners, required=2)


def template(text=PROD):
    return parse_template(text, source="t.yaml")


def test_two_distinct_owners_satisfy_the_rule(rule, keys):
    t = template()
    verdict = rule.verdict(t, [sign_template(t, owner=n, key=keys[n]) for n in ("alice", "bob")])
    assert verdict.satisfied and verdict.owners == ("alice", "bob") and not verdict.problems


def test_one_owner_is_not_enough(rule, keys):
    t = template()
    verdict = rule.verdict(t, [sign_template(t, owner="alice", key=keys["alice"])])
    assert not verdict.satisfied and "valid: 1 (alice)" in verdict.message()


def test_one_owner_signing_twice_counts_once(rule, keys):
    t = template()
    once = sign_template(t, owner="alice", key=keys["alice"])
    again = sign_template(t, owner="bob", key=keys["alice"])   # claims to be bob, made with alice's key
    verdict = rule.verdict(t, [once, once, again])
    assert not verdict.satisfied and verdict.owners == ("alice",)
    assert sum("already counted" in p for p in verdict.problems) == 2


def test_one_owner_with_two_keys_still_counts_once(keys):
    second = Ed25519PrivateKey.generate()
    rule = SigningRule(owners=(TemplateOwner("alice", (keys["alice"].public_key(), second.public_key())),
                               TemplateOwner("bob", (keys["bob"].public_key(),))), required=2)
    t = template()
    verdict = rule.verdict(t, [sign_template(t, owner="alice", key=keys["alice"]),
                               sign_template(t, owner="alice", key=second)])
    assert not verdict.satisfied and verdict.owners == ("alice",)


def test_a_key_that_is_no_owners_does_not_count(rule, keys):
    t = template()
    forged = sign_template(t, owner="bob", key=keys["mallory"])
    verdict = rule.verdict(t, [sign_template(t, owner="alice", key=keys["alice"]), forged])
    assert not verdict.satisfied and any("not made by the key of any configured" in p for p in verdict.problems)


def test_a_signature_over_a_different_digest_does_not_count(rule, keys):
    old = template()
    changed = template(PROD.replace("ecs:UpdateService", "ecs:UpdateService\", \"ecs:DeleteService"))
    signatures = [sign_template(old, owner=n, key=keys[n]) for n in ("alice", "bob")]
    verdict = rule.verdict(changed, signatures)
    assert not verdict.satisfied and all("another version" in p for p in verdict.problems)
    # The digest field rewritten to the new one: the signature no longer verifies.
    relabelled = [dataclasses.replace(s, digest=changed.version_digest) for s in signatures]
    verdict = rule.verdict(changed, relabelled)
    assert not verdict.satisfied and all("not made by the key" in p for p in verdict.problems)


def test_a_renamed_template_needs_new_signatures(rule, keys):
    original = template()
    renamed = template(PROD.replace("name: ecs-prod", "name: ecs-prod-2"))
    signatures = [sign_template(original, owner=n, key=keys[n]) for n in ("alice", "bob")]
    assert not rule.verdict(renamed, signatures).satisfied
    moved = [dataclasses.replace(s, template="ecs-prod-2", digest=renamed.version_digest) for s in signatures]
    assert not rule.verdict(renamed, moved).satisfied


def test_a_signature_for_another_template_does_not_count(rule, keys):
    prod, dev = template(), template(DEV)
    verdict = rule.verdict(prod, [sign_template(dev, owner=n, key=keys[n]) for n in ("alice", "bob")])
    assert not verdict.satisfied and all("signs template 'ecs-dev'" in p for p in verdict.problems)


def test_bad_base64_and_truncated_signatures_do_not_count(rule, keys):
    t = template()
    good = sign_template(t, owner="alice", key=keys["alice"])
    broken = [dataclasses.replace(good, signature="!!!"), dataclasses.replace(good, signature=good.signature[:20])]
    assert rule.verdict(t, broken).owners == ()


def test_dev_templates_need_no_signatures_unless_risky(rule):
    assert rule.verdict(template(DEV), []).satisfied
    risky = rule.verdict(template(DEV), [], risky=True)
    assert not risky.satisfied and risky.required == 2 and "risk" in risky.reason


def test_with_no_owners_configured_nothing_is_required():
    assert SigningRule().verdict(template(), []).satisfied


def test_signature_files_round_trip_and_reject_other_json(keys):
    t = template()
    signature = sign_template(t, owner="alice", key=keys["alice"])
    assert parse_signature(signature.to_json(), source="a.sig") == dataclasses.replace(signature, source="a.sig")
    for text in ("", "[]", '{"format": "other"}', signature.to_json().replace('"owner"', '"who"')):
        with pytest.raises(InvalidInput):
            parse_signature(text, source="a.sig")


@pytest.mark.parametrize("owners, required, problem", [
    ((("alice", "k1"),), 2, "no template could ever load"),
    ((("alice", "k1"), ("bob", "k2")), 0, "no template could ever load"),
    ((("alice", "k1"), ("alice", "k2")), 1, "listed twice"),
    ((("alice", "k1"), ("bob", "k1")), 1, "two template owners"),
])
def test_unsatisfiable_or_ambiguous_owner_configuration_is_refused(keys, owners, required, problem):
    shared = {"k1": keys["alice"].public_key(), "k2": keys["bob"].public_key()}
    with pytest.raises(InvalidInput) as exc:
        SigningRule(owners=tuple(TemplateOwner(n, (shared[k],)) for n, k in owners), required=required)
    assert problem in str(exc.value)


def test_owners_file_parsing(keys, tmp_path):
    data = {"owners": [{"name": "alice", "public_key": _pem(keys["alice"]).decode()},
                       {"name": "bob", "public_key_file": "bob.pem"}], "required_signatures": 2}
    owners, required = owners_from_config(data, read_key_file=lambda path: _pem(keys["bob"]))
    assert [o.name for o in owners] == ["alice", "bob"] and required == 2
    for bad in ({}, {"owners": []}, {"owners": [{"name": "x"}]}, {"owners": [{"public_key": "x"}]},
                {"owners": [{"name": "x", "public_key": "not a key"}]},
                {"owners": [{"name": "x", "public_key": _pem(keys["alice"]).decode()}], "required_signatures": "2"}):
        with pytest.raises(InvalidInput):
            owners_from_config(bad, read_key_file=lambda path: b"")


def test_signatures_bind_the_domain_prefix(keys):
    """A raw signature over the bare canonical JSON (no prefix) is not a template signature."""
    import base64
    import json
    rule = SigningRule(owners=(TemplateOwner("alice", (keys["alice"].public_key(),)),), required=1)
    t = template()
    bare = json.dumps({"digest": t.version_digest, "template": t.name}, sort_keys=True, separators=(",", ":"))
    raw = base64.b64encode(keys["alice"].sign(bare.encode())).decode()
    signature = TemplateSignature(template=t.name, digest=t.version_digest, key_id="", owner="alice", signature=raw)
    assert not rule.verdict(t, [signature]).satisfied
