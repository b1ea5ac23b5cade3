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


def test_a_subject_with_colons_or_slashes_is_stopped_only_by_the_sts_source_identity_rule(oidc_broker):
    """GitHub/GitLab/Kubernetes-shaped subjects authenticate, and are refused only because the principal id is
    not a valid STS SourceIdentity (422, before anything is written): an accident of naming, not a pin."""
    harness, signer = oidc_broker
    response = _post(harness, signer.sign(standard_claims(sub="repo:stranger/fork:ref:refs/heads/main")))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_principal_id"
    assert harness.request_count() == 0
    templates = harness.client.get("/v1/templates", headers={
        "Authorization": f"Bearer {signer.sign(standard_claims(sub='repo:stranger/fork:ref:refs/heads/main'))}"})
    assert templates.status_code == 200
