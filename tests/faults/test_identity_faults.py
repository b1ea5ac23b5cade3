"""The OIDC issuer's JWKS unreachable: cached keys keep working until their lifetime ends, then 503."""

from __future__ import annotations

import json
import time

from tests.conftest import TEST_SCOPES, build_harness
from tests.identity.jwt_factory import AUDIENCE, ISSUER, _start_server, rsa_key, standard_claims
from tests.revocation.conftest import S3_REQUEST

CACHE_SECONDS = 2


def test_jwks_unreachable_uses_cached_keys_until_their_lifetime_then_refuses(moto_server, tmp_path):
    jwks = _start_server()
    signer = rsa_key("fault-1")
    jwks.serve_jwks(signer)
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.jwks_url,
                                    "algorithms": ["RS256"], "jwks_cache_seconds": CACHE_SECONDS}]))
    broker = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                           aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                           oidc_issuers_file=issuers)
    token = signer.sign(standard_claims(sub="demo"))         # -> agent:demo, acting for human:alice
    headers = {"Authorization": f"Bearer {token}"}

    first = broker.client.post("/v1/requests", headers=headers, json=S3_REQUEST)
    assert first.status_code == 201, first.text
    fetched_at = time.monotonic()
    # The identity provider goes away (connection refused from now on).
    jwks.server.shutdown()
    jwks.server.server_close()

    cached = broker.client.post("/v1/requests", headers=headers, json=S3_REQUEST)
    assert time.monotonic() - fetched_at < CACHE_SECONDS, "the machine was too slow to test the cache window"
    assert cached.status_code == 201, cached.text
    events_before = broker.events()

    time.sleep(max(0.0, CACHE_SECONDS - (time.monotonic() - fetched_at)) + 0.2)
    refused = broker.client.post("/v1/requests", headers=headers, json=S3_REQUEST)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "identity_provider_unavailable"
    assert "credentials" not in refused.json()
    assert broker.events() == events_before                 # unauthenticated: nothing requested, nothing logged
    # API keys do not depend on the identity provider.
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    broker.container.database.engine.dispose()
