"""Workload identity over the real API: OIDC JWTs verified against the issuer's JWKS (served over HTTP)."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import TEST_SCOPES, build_harness
from tests.identity.jwt_factory import AUDIENCE, ISSUER, b64url, rsa_key, standard_claims, unsigned_token

REQUEST = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "ci job 77"}


@pytest.fixture
def oidc_broker(jwks_server, moto_server, tmp_path):  # noqa: F811
    signer = rsa_key("ci-key")
    jwks_server.serve_jwks(signer)
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_server.jwks_url, "algorithms": ["RS256"],
        "principal_claim": "sub", "principal_prefix": "agent:", "acts_for_claim": "act_for"}]))
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                            oidc_issuers_file=issuers)
    yield harness, signer
    harness.container.database.engine.dispose()


def _post(harness, token):
    return harness.client.post("/v1/requests", json=REQUEST, headers={"Authorization": f"Bearer {token}"})


def test_a_valid_workload_token_gets_credentials_and_is_logged_as_its_agent(oidc_broker):
    harness, signer = oidc_broker
    token = signer.sign(standard_claims(sub="ci-deployer", act_for="alice"))
    response = _post(harness, token)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["requester"] == "agent:ci-deployer"
    assert body["acts_for"] == "human:alice"
    assert body["grant"]["source_identity"] == "agent.ci-deployer"
    issued = [e for e in harness.events() if e["type"] == "issued"][0]
    assert issued["actor"] == "agent:ci-deployer" and issued["acts_for"] == "human:alice"


def _hs256_with_public_pem(signer):
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = signer.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    payload = b64url(json.dumps(standard_claims(sub="ci-deployer")).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


BAD_TOKENS = {
    "expired": lambda s: s.sign(standard_claims(sub="ci-deployer", iat=int(time.time()) - 7200,
                                                exp=int(time.time()) - 3600)),
    "wrong-audience": lambda s: s.sign(standard_claims(sub="ci-deployer", aud="someone-else")),
    "wrong-issuer": lambda s: s.sign(standard_claims(sub="ci-deployer", iss=ISSUER + ".evil")),
    "alg-none": lambda s: unsigned_token({"alg": "none", "typ": "JWT", "kid": s.kid}, standard_claims(sub="x")),
    "hs256-with-public-key": _hs256_with_public_pem,
    "other-key-same-kid": lambda s: rsa_key(s.kid).sign(standard_claims(sub="ci-deployer")),
    "not-yet-valid": lambda s: s.sign(standard_claims(sub="ci-deployer", nbf=int(time.time()) + 3600)),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_workload_tokens_are_401_and_write_nothing(oidc_broker, kind):
    harness, signer = oidc_broker
    response = _post(harness, BAD_TOKENS[kind](signer))
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] in {"invalid_token", "token_expired", "untrusted_issuer",
                                                "invalid_credentials"}
    assert harness.request_count() == 0
    assert harness.events() == []



def test_an_unpinned_issuer_makes_any_workload_it_signs_for_an_agent(oidc_broker):
    """What an issuer with nothing pinned accepts: a workload the directory has never heard of, acting for no
    human, gets credentials from an ``agent:*`` template (Google-style numeric subject).  Nothing downstream
    stops it: not the missing acts_for, not the missing registration."""
    harness, signer = oidc_broker
    response = _post(harness, signer.sign(standard_claims(sub="104857600123456789012")))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["requester"] == "agent:104857600123456789012"
    assert body["acts_for"] is None
    assert body["credentials"]["access_key_id"]
    with harness.container.database.transaction() as repo:
        assert repo.get_principal(body["requester"]) is None


def test_a_subject_with_colons_or_slashes_gets_an_escaped_source_identity(oidc_broker):
    """GitHub/GitLab/Kubernetes-shaped subjects are not stopped by any accident of naming (only pins stop a
    stranger): the SourceIdentity escapes what STS refuses, and the exact id is in the session tags."""
    harness, signer = oidc_broker
    response = _post(harness, signer.sign(standard_claims(sub="repo:stranger/fork:ref:refs/heads/main")))
    assert response.status_code == 201, response.json().get("error")
    assert response.json()["grant"]["source_identity"] == "agent.repo=3Astranger=2Ffork=3Aref=3Arefs=2Fheads=2Fmain"
    assert response.json()["requester"] == "agent:repo:stranger/fork:ref:refs/heads/main"


# -- an issuer pinned to this deployment's workloads ---------------------------------------------------------

PINNED_ISSUER = {"required_claims": {"repository_owner": "acme", "repository_owner_id": "1001"},
                 "principal_pattern": "acme-[a-z0-9-]{1,40}"}
WORKLOAD = {"sub": "acme-deployer", "repository_owner": "acme", "repository_owner_id": "1001"}


def _pinned_broker(jwks_server, moto_server, tmp_path, **pins):
    signer = rsa_key("ci-key")
    jwks_server.serve_jwks(signer)
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_server.jwks_url, "algorithms": ["RS256"],
        "acts_for_claim": "act_for", **pins}]))
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                            oidc_issuers_file=issuers)
    return harness, signer


@pytest.fixture
def pinned_broker(jwks_server, moto_server, tmp_path):
    harness, signer = _pinned_broker(jwks_server, moto_server, tmp_path, **PINNED_ISSUER)
    yield harness, signer
    harness.container.database.engine.dispose()


STRANGERS = {
    "another-owner": {**WORKLOAD, "repository_owner": "evil", "repository_owner_id": "666"},
    "owner-name-reused": {**WORKLOAD, "repository_owner_id": "666"},  # a renamed org's name, re-registered
    "owner-case": {**WORKLOAD, "repository_owner": "Acme"},
    "owner-as-list": {**WORKLOAD, "repository_owner": ["acme"]},
    "owner-id-as-number": {**WORKLOAD, "repository_owner_id": 1001},
    "owner-missing": {k: v for k, v in WORKLOAD.items() if k != "repository_owner"},
    "subject-off-pattern": {**WORKLOAD, "sub": "evil-deployer"},
    "subject-pattern-as-substring": {**WORKLOAD, "sub": "x-acme-deployer"},
}


@pytest.mark.parametrize("kind", sorted(STRANGERS))
def test_a_strangers_token_from_the_pinned_issuer_is_401_and_writes_nothing(pinned_broker, kind):
    harness, signer = pinned_broker
    response = _post(harness, signer.sign(standard_claims(**STRANGERS[kind])))
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "claim_mismatch"
    assert harness.request_count() == 0
    assert harness.events() == []


def test_the_pinned_workload_gets_credentials(pinned_broker):
    harness, signer = pinned_broker
    response = _post(harness, signer.sign(standard_claims(**WORKLOAD, act_for="alice")))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["requester"], body["acts_for"]) == ("agent:acme-deployer", "human:alice")
    assert body["credentials"]["access_key_id"]


@pytest.fixture
def registered_only_broker(jwks_server, moto_server, tmp_path):
    harness, signer = _pinned_broker(jwks_server, moto_server, tmp_path, require_registered=True)
    with harness.container.database.transaction() as repo:
        for name in ("agent:acme-deployer", "agent:acme-retired"):
            repo.upsert_principal(principal_id=name, roles=["agent"], acts_for="human:alice", now=harness.clock.now())
        repo.disable_principal("agent:acme-retired")
    yield harness, signer
    harness.container.database.engine.dispose()


@pytest.mark.parametrize(("subject", "status", "code"), [
    ("acme-stranger", 401, "principal_unknown"),
    ("acme-retired", 401, "principal_disabled"),
    ("acme-deployer", 201, None),
])
def test_require_registered_over_the_api(registered_only_broker, subject, status, code):
    harness, signer = registered_only_broker
    events_before = harness.events()
    response = _post(harness, signer.sign(standard_claims(sub=subject)))
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code
        assert harness.request_count() == 0 and harness.events() == events_before
    else:
        assert response.json()["acts_for"] == "human:alice"  # the directory's accountable human
