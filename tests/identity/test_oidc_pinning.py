"""Pinning an issuer to this deployment's workloads: required_claims, principal_pattern, the issuers file.

Every token here is validly signed by the trusted issuer: what is tested is which of the issuer's workloads
the broker accepts, table-style over hostile claims.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from broker.errors import InvalidInput, Unauthenticated
from broker.identity.oidc import (SHARED_ISSUERS, HttpxJwksFetcher, OidcIssuerConfig, OidcVerifier, issuer_config,
                                  issuer_warnings, load_issuer_configs)
from tests.identity.jwt_factory import AUDIENCE, ISSUER, make_verifier, standard_claims

GOOD_CONFIG = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp.example/jwks", "acts_for_claim": "act"}

# -- configuration -------------------------------------------------------------


@pytest.mark.parametrize(("override", "why"), [
    ({"required_claims": ["repository_owner", "acme"]}, "JSON object"),
    ({"required_claims": (["repository_owner", "acme"],)}, "JSON object"),  # a JSON list of pairs
    ({"required_claims": "repository_owner=acme"}, "JSON object"),
    ({"required_claims": None}, "JSON object"),
    ({"required_claims": {"": "acme"}}, "not a claim name"),
    ({"required_claims": {"repository owner": "acme"}}, "not a claim name"),
    ({"required_claims": {"repository_owner": 1234}}, "string"),
    ({"required_claims": {"repository_owner_id": 1234}}, "string"),
    ({"required_claims": {"email_verified": True}}, "string"),
    ({"required_claims": {"repository_owner": ["acme"]}}, "string"),
    ({"required_claims": {"repository_owner": None}}, "string"),
    ({"required_claims": {"repository_owner": {"eq": "acme"}}}, "string"),
    ({"required_claims": {"repository_owner": ""}}, "string"),
    ({"required_claims": {"repository_owner": " acme"}}, "string"),
    ({"required_claims": {"repository_owner": "acme\n"}}, "string"),
    ({"required_claims": {"repository_owner": "acme\x00"}}, "string"),
    ({"required_claims": {"repository_owner": "a" * 257}}, "string"),
    ({"principal_pattern": ""}, "non-empty"),
    ({"principal_pattern": 7}, "non-empty"),
    ({"principal_pattern": "repo:acme/("}, "not a valid regular expression"),
    ({"principal_pattern": "(a+)+$"}, "nest quantifiers"),
    ({"principal_pattern": "(?i)repo:acme/.*"}, "flags"),
    ({"require_registered": "true"}, "true or false"),
    ({"require_registered": "false"}, "true or false"),
    ({"require_registered": 1}, "true or false"),
    ({"require_registered": None}, "true or false"),
], ids=str)
def test_invalid_pins_are_rejected_at_construction(override, why):
    with pytest.raises(ValueError) as caught:
        OidcIssuerConfig(**{**GOOD_CONFIG, **override})
    assert why in str(caught.value)
    assert str(caught.value).startswith(f"OidcIssuerConfig.{next(iter(override))} ")


def test_pin_defaults_pin_nothing():
    config = OidcIssuerConfig(**GOOD_CONFIG)
    assert (config.required_claims, config.principal_pattern, config.require_registered) == ((), None, False)
    assert config.pins == () and not config.pinned
    # NOTE: an empty table is "nothing pinned" for these optional keys, not an error.
    assert OidcIssuerConfig(**GOOD_CONFIG, required_claims={}).pins == ()


def test_required_claims_become_pairs_and_survive_a_copy():
    config = OidcIssuerConfig(**GOOD_CONFIG, required_claims={"repository_owner": "acme", "environment": "prod"},
                              principal_pattern="repo:acme/.*")
    assert config.required_claims == (("repository_owner", "acme"), ("environment", "prod"))
    copy = dataclasses.replace(config, audience="other")
    assert copy.required_claims == config.required_claims and len(copy.pins) == 3
    assert hash(config) != hash(copy)  # frozen and hashable: no dict inside


# -- verification --------------------------------------------------------------

PINS = {"required_claims": {"repository_owner": "acme", "repository_owner_id": "1001", "environment": "prod"},
        "principal_pattern": "repo:acme/[a-z0-9-]+:environment:prod"}
PINNED_SUB = "repo:acme/api:environment:prod"
GOOD = {"sub": PINNED_SUB, "repository_owner": "acme", "repository_owner_id": "1001", "environment": "prod"}


@pytest.fixture()
def pinned(jwks_server, rsa_signer, clock):
    jwks_server.serve_jwks(rsa_signer)
    return make_verifier(jwks_server.jwks_url, clock=clock, **PINS)


def test_the_pinned_workload_is_accepted(pinned, rsa_signer):
    principal = pinned.verify(rsa_signer.sign(standard_claims(**GOOD)))
    assert principal.id == f"agent:{PINNED_SUB}"


MISSING = object()

HOSTILE_CLAIMS = [
    # a pinned claim absent, or not a string
    ("repository_owner", MISSING),
    ("repository_owner", ["acme"]),
    ("repository_owner", ["acme", "evil"]),
    ("repository_owner", {"login": "acme"}),
    ("repository_owner", None),
    ("repository_owner_id", 1001),  # the number a careless issuer might send: pinned as the string "1001"
    ("repository_owner_id", 1001.0),
    ("repository_owner_id", True),
    ("environment", True),
    ("environment", MISSING),
    # the same letters, not the same string
    ("repository_owner", "Acme"),
    ("repository_owner", "ACME"),
    ("repository_owner", "acme "),
    ("repository_owner", " acme"),
    ("repository_owner", "acme\n"),
    ("repository_owner", "\u0430cme"),  # Cyrillic a
    ("repository_owner", "acme-evil"),
    ("repository_owner", "evil-acme"),
    ("repository_owner", "acm"),
    ("repository_owner", ""),
    ("environment", "Prod"),
    ("environment", "production"),
    ("repository_owner_id", "01001"),
    # the principal claim matches the pattern only in part
    ("sub", "repo:acme/api:environment:prod:x"),  # prefix of the value matches
    ("sub", "xrepo:acme/api:environment:prod"),  # suffix of the value matches
    ("sub", "repo:evil/x:repo:acme/api:environment:prod"),  # substring
    ("sub", "repo:acme/api:environment:production"),
    ("sub", "repo:acme/api:environment:pro"),
    ("sub", "repo:acme/API:environment:prod"),
    ("sub", "repo:acme/a/b:environment:prod"),
    ("sub", "repo:acme.evil/api:environment:prod"),
    ("sub", "repo:evil/api:environment:prod"),
]


@pytest.mark.parametrize(("claim", "value"), HOSTILE_CLAIMS, ids=lambda v: "MISSING" if v is MISSING else repr(v)[:40])
def test_a_token_off_its_pins_is_refused_without_echoing_it(pinned, rsa_signer, claim, value):
    claims = {**GOOD, claim: value}
    if value is MISSING:
        del claims[claim]
    with pytest.raises(Unauthenticated) as caught:
        pinned.verify(rsa_signer.sign(standard_claims(**claims)))
    assert caught.value.code == "claim_mismatch"
    assert caught.value.status == 401
    assert repr(claim) in caught.value.message  # names the claim...
    if isinstance(value, str) and value:
        assert value.strip() not in caught.value.message  # ...never the value the token carried


def test_each_pin_alone_is_enough_to_refuse(jwks_server, rsa_signer, clock):
    jwks_server.serve_jwks(rsa_signer)
    only_claims = make_verifier(jwks_server.jwks_url, clock=clock, required_claims={"repository_owner": "acme"})
    only_pattern = make_verifier(jwks_server.jwks_url, clock=clock, principal_pattern="repo:acme/.*")
    stranger = rsa_signer.sign(standard_claims(sub="repo:evil/x:ref:refs/heads/main", repository_owner="evil"))
    for verifier in (only_claims, only_pattern):
        with pytest.raises(Unauthenticated) as caught:
            verifier.verify(stranger)
        assert caught.value.code == "claim_mismatch"


def test_the_pattern_applies_to_the_mapped_principal_claim(jwks_server, rsa_signer, clock):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, clock=clock, principal_claim="repository_id",
                             principal_pattern="[0-9]{1,12}")
    assert verifier.verify(rsa_signer.sign(standard_claims(repository_id="5678"))).id == "agent:5678"
    with pytest.raises(Unauthenticated):
        verifier.verify(rsa_signer.sign(standard_claims(sub="5678", repository_id="x5678")))


def test_an_issuer_with_nothing_pinned_still_accepts_any_subject(verifier, rsa_signer):
    """Compatibility: without pins an issuer behaves as before (and issuer_warnings names it)."""
    assert verifier.verify(rsa_signer.sign(standard_claims(sub="anyone-at-all"))).id == "agent:anyone-at-all"


# -- the issuers file ----------------------------------------------------------

def _file(tmp_path, entries):
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.mark.parametrize("issuer", sorted(SHARED_ISSUERS) + ["https://token.actions.githubusercontent.com/",
                                                              "https://GitLab.com"])
def test_a_shared_issuer_with_nothing_pinned_does_not_load(tmp_path, issuer):
    with pytest.raises(InvalidInput) as caught:
        load_issuer_configs(_file(tmp_path, [{**GOOD_CONFIG, "issuer": issuer}]))
    assert caught.value.code == "config_invalid"
    assert "required_claims" in caught.value.message and "require_registered" in caught.value.message


@pytest.mark.parametrize("pins", [{"required_claims": {"repository_owner_id": "1001"}},
                                  {"principal_pattern": "repo:acme/.*"},
                                  {"require_registered": True}], ids=str)
def test_a_shared_issuer_loads_once_pinned(tmp_path, pins):
    issuer = "https://token.actions.githubusercontent.com"
    [config] = load_issuer_configs(_file(tmp_path, [{**GOOD_CONFIG, "issuer": issuer, **pins}]))
    assert config.issuer == issuer and config.pinned


def test_a_shared_issuer_is_not_refused_to_approver_sign_in():
    """The approver pages verify Google ID tokens with an unpinned config of their own: only the issuers file
    is held to SHARED_ISSUERS (sign-in has its own claim rules and the directory)."""
    assert OidcIssuerConfig(**{**GOOD_CONFIG, "issuer": "https://accounts.google.com"}).pins == ()


@pytest.mark.parametrize(("content", "why"), [
    ({"issuer": ISSUER}, "JSON list"),
    (["not an object"], "invalid issuer"),
    ([{**GOOD_CONFIG, "principal_pattern": "(.*)*"}], "principal_pattern may not nest quantifiers"),
    ([{**GOOD_CONFIG, "required_claims": {"repository_owner_id": 1001}}], "required_claims pins"),
    ([{**GOOD_CONFIG, "require_registred": True}], "invalid issuer"),  # a misspelt key is not ignored
])
def test_an_unusable_issuers_file_stops_start_up(tmp_path, content, why):
    with pytest.raises(InvalidInput) as caught:
        load_issuer_configs(_file(tmp_path, content))
    assert caught.value.code == "config_invalid" and why in caught.value.message


def test_no_issuers_file_no_issuers():
    assert load_issuer_configs(None) == []


# -- start-up warnings ---------------------------------------------------------

@pytest.mark.parametrize(("pins", "warned"), [
    ({}, True),
    ({"required_claims": {}}, True),
    ({"require_registered": False}, True),
    ({"required_claims": {"repository_owner_id": "1001"}}, False),
    ({"principal_pattern": "repo:acme/.*"}, False),
    ({"require_registered": True}, False),
], ids=str)
def test_issuer_warnings_name_issuers_that_accept_any_unregistered_principal(pins, warned):
    warnings = issuer_warnings([issuer_config({**GOOD_CONFIG, **pins, "roles": ["agent"]})])
    assert bool(warnings) is warned
    if warned:
        [sentence] = warnings
        assert repr(ISSUER) in sentence and "roles agent" in sentence
        assert "required_claims" in sentence and "principal_pattern" in sentence and "require_registered" in sentence


def test_issuer_warnings_one_sentence_per_unpinned_issuer():
    configs = [issuer_config({**GOOD_CONFIG, "issuer": f"https://idp{i}.example"}) for i in range(3)]
    configs.append(issuer_config({**GOOD_CONFIG, "issuer": "https://pinned.example", "require_registered": True}))
    assert [w.split("'")[1] for w in issuer_warnings(configs)] == [f"https://idp{i}.example" for i in range(3)]


# -- the README's example ------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
GITHUB = "https://token.actions.githubusercontent.com"


def _readme_github_issuer() -> dict:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    [block] = [b for b in blocks if GITHUB in b]
    return json.loads(block)


def test_the_readme_github_actions_example_admits_its_workloads_only(jwks_server, rsa_signer, clock):
    entry = _readme_github_issuer()
    assert issuer_config(entry).pinned  # it loads, pinned
    jwks_server.serve_jwks(rsa_signer)
    verifier = OidcVerifier(issuer_config({**entry, "jwks_url": jwks_server.jwks_url}),
                            fetcher=HttpxJwksFetcher(timeout_seconds=2.0), clock=clock)
    owner, owner_id = entry["required_claims"]["repository_owner"], entry["required_claims"]["repository_owner_id"]
    workload = {"iss": GITHUB, "aud": entry["audience"], "sub": f"repo:{owner}/api:ref:refs/heads/main",
                "repository": f"{owner}/api", "repository_id": "694383762", "repository_owner": owner,
                "repository_owner_id": owner_id, "ref": "refs/heads/main", "actor": "alice"}
    assert verifier.verify(rsa_signer.sign(standard_claims(**workload))).id == "agent:694383762"
    for stranger in ({"repository_owner": "evil", "repository_owner_id": "666"},
                     {"repository_owner_id": "666"},  # the organisation's name, registered again by someone else
                     {"ref": "refs/heads/feature"},
                     {"ref": "refs/pull/7/merge"}):
        with pytest.raises(Unauthenticated) as caught:
            verifier.verify(rsa_signer.sign(standard_claims(**{**workload, **stranger})))
        assert caught.value.code == "claim_mismatch"


@pytest.mark.parametrize(("pins", "warnings"), [
    ({}, 2),                                                    # unpinned, and broad roles for strangers
    ({"required_claims": {"repository_owner_id": "1001"}}, 1),  # pinned: the broad roles still warn
    ({"require_registered": True}, 0),                          # the directory decides every principal
], ids=str)
def test_an_issuer_granting_more_than_agent_to_unregistered_principals_is_named(pins, warnings):
    found = issuer_warnings([issuer_config({**GOOD_CONFIG, **pins, "roles": ["agent", "approver"]})])
    assert len(found) == warnings
    if warnings:
        assert "approver" in found[0] and "require_registered" in found[0]


@pytest.mark.parametrize(("extra", "warned"), [
    ({"acts_for_claim": None}, True),                              # its unknown agents act for nobody
    ({"acts_for_claim": None, "require_registered": True}, False),  # the directory names each agent's human
    ({}, False),                                                   # the token names the human
], ids=str)
def test_an_issuer_whose_agents_act_for_no_human_is_named(extra, warned):
    config = {**GOOD_CONFIG, "required_claims": {"repository_owner_id": "1001"}, **extra}
    found = issuer_warnings([issuer_config({k: v for k, v in config.items() if v is not None})])
    assert bool(found) is warned
    if warned:
        assert "acts_for_claim" in found[0] and "act for no human" in found[0]


@pytest.mark.parametrize("pins", [
    {"principal_pattern": ".*"},
    {"principal_pattern": "repo:.*"},                          # any owner's repository
    {"principal_pattern": "[a-z0-9:/._-]+"},
    {"required_claims": {"iss": ISSUER}},                      # checked by the verifier anyway
    {"required_claims": {"aud": AUDIENCE}},
], ids=str)
def test_a_pin_that_constrains_nothing_does_not_count(pins):
    config = issuer_config({**GOOD_CONFIG, **pins})
    assert not config.pinned
    assert any("accepts every principal" in warning for warning in issuer_warnings([config]))
    with pytest.raises(ValueError):  # a shared issuer "pinned" so is refused at load like an unpinned one
        issuer_config({**GOOD_CONFIG, **pins, "issuer": "https://token.actions.githubusercontent.com"})
