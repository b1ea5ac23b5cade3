"""API key lifecycle over the admin API: expiry, revocation, rotation, disabling a principal; each change logged."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.domain.log import log_time

WHOAMI = "/v1/whoami"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _whoami(broker, token: str):
    return broker.client.get(WHOAMI, headers=_auth(token))


def _create(broker, **body):
    body = {"principal": "agent:ci", "roles": ["agent"], "acts_for": "human:alice", **body}
    return broker.post("/v1/keys", "human:root", json=body)


def _events(broker, kind: str) -> list[dict]:
    return [e for e in broker.events() if e["type"] == kind]


def _refused(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_a_key_with_an_expiry_works_until_then_and_is_refused_with_its_own_code(broker):
    expires = broker.clock.now() + timedelta(hours=1)
    created = _create(broker, expires_at=log_time(expires), reason="CI for the cost report")
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    assert body["token"].startswith("brk_" + body["key_id"]) and body["status"] == "active"
    assert body["expires_at"] == log_time(expires)
    assert _whoami(broker, body["token"]).json()["id"] == "agent:ci"
    broker.clock.advance(3600)
    _refused(_whoami(broker, body["token"]), 401, "api_key_expired")
    [entry] = _events(broker, "api_key_created")
    assert entry["actor"] == "human:root" and entry["details"]["key_id"] == body["key_id"]
    assert entry["details"]["expires_at"] == log_time(expires) and body["token"] not in str(entry)
    listed = broker.get("/v1/keys?principal_id=agent:ci", "human:root").json()["keys"]
    assert [(k["key_id"], k["status"]) for k in listed] == [(body["key_id"], "expired")]


def test_an_expiry_in_the_past_is_refused_and_writes_nothing(broker):
    _refused(_create(broker, expires_at=log_time(broker.clock.now() - timedelta(seconds=1))), 422, "invalid_expiry")
    assert _events(broker, "api_key_created") == []


def test_a_revoked_key_is_refused_and_the_revocation_is_logged(broker):
    token = _create(broker).json()["token"]
    key_id = token[4:16]
    revoked = broker.post(f"/v1/keys/{key_id}/revoke", "human:root", json={"reason": "leaked in a CI log"})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    _refused(_whoami(broker, token), 401, "revoked_credentials")
    _refused(broker.post(f"/v1/keys/{key_id}/revoke", "human:root", json={"reason": "again"}), 409,
             "api_key_revoked")
    [entry] = _events(broker, "api_key_revoked")
    assert entry["details"] == {"key_id": key_id, "principal": "agent:ci", "reason": "leaked in a CI log"}


def test_the_leaked_dev_key_itself_can_be_revoked(broker):
    key_id = broker.keys["agent:demo"][4:16]
    assert broker.post(f"/v1/keys/{key_id}/revoke", "human:root", json={"reason": "leak"}).status_code == 200
    _refused(broker.post("/v1/requests", "agent:demo", json={"template": "test-s3-read", "reason": "x",
                                                               "parameters": {"prefix": "reports"}}),
             401, "revoked_credentials")


def test_rotation_ends_the_old_key_now_or_after_the_grace_period(broker):
    old = _create(broker).json()["token"]
    rotated = broker.post(f"/v1/keys/{old[4:16]}/rotate", "human:root", json={"reason": "quarterly"})
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["token"]
    _refused(_whoami(broker, old), 401, "revoked_credentials")
    assert _whoami(broker, new).json()["id"] == "agent:ci"

    graced = broker.post(f"/v1/keys/{new[4:16]}/rotate", "human:root",
                         json={"reason": "move to the vault", "grace_seconds": 60}).json()
    assert _whoami(broker, new).status_code == 200   # still, for 60 s
    assert _whoami(broker, graced["token"]).status_code == 200
    broker.clock.advance(60)
    _refused(_whoami(broker, new), 401, "api_key_expired")
    assert _whoami(broker, graced["token"]).status_code == 200
    entries = _events(broker, "api_key_rotated")
    assert [e["details"]["replaces"] for e in entries] == [old[4:16], new[4:16]]


def test_disabling_a_principal_refuses_it_and_creating_a_key_does_not_bring_it_back(broker):
    old = broker.keys["agent:demo"]
    disabled = broker.post("/v1/principals/agent:demo/disable", "human:root", json={"reason": "incident 77"})
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["revoked_keys"] == [old[4:16]]
    _refused(_whoami(broker, old), 401, "principal_disabled")
    # A new key for a disabled principal is refused, and nothing is written.
    _refused(_create(broker, principal="agent:demo"), 409, "principal_disabled")
    assert _events(broker, "api_key_created") == []
    _refused(_whoami(broker, old), 401, "principal_disabled")
    # Enabling it brings back none of its old keys; a new key works.
    assert broker.post("/v1/principals/agent:demo/enable", "human:root", json={"reason": "cleaned up"}
                       ).status_code == 200
    _refused(_whoami(broker, old), 401, "revoked_credentials")
    new = _create(broker, principal="agent:demo").json()["token"]
    assert _whoami(broker, new).json() == {"id": "agent:demo", "roles": ["agent"], "acts_for": "human:alice",
                                           "groups": [], "auth_method": "api_key",
                                           "attributes": {"workspace": "demo"}}
    assert [e["type"] for e in broker.events() if e["type"].startswith(("principal_", "api_key_"))] == [
        "principal_disabled", "principal_enabled", "api_key_created"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("get", "/v1/keys", None),
    ("post", "/v1/keys", {"principal": "human:mallory", "roles": ["admin"]}),
    ("post", "/v1/keys/000000000000/revoke", {"reason": "x"}),
    ("post", "/v1/keys/000000000000/rotate", {"reason": "x"}),
    ("post", "/v1/principals/human:root/disable", {"reason": "x"}),
])
@pytest.mark.parametrize("who", ["agent:demo", "human:bob", "human:rita"])
def test_only_admins_manage_keys_and_the_refusal_is_logged(broker, method, path, body, who):
    response = getattr(broker.client, method)(path, headers=broker.auth(who), **({"json": body} if body else {}))
    _refused(response, 403, "admin_required")
    [entry] = _events(broker, "refused")
    assert entry["actor"] == who and entry["reason_code"] == "admin_required"


@pytest.mark.parametrize(("token", "words"), [
    ("hello", "neither a broker API key"),
    ("brk_nope", "malformed"),
    ("brk_0123456789ab_" + "A" * 43, "not known"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig", "trusts no OIDC issuer"),
])
def test_a_garbage_token_an_unknown_key_and_a_jwt_without_issuers_are_told_apart(broker, token, words):
    response = _whoami(broker, token)
    _refused(response, 401, "invalid_credentials")
    assert words in response.json()["error"]["message"]
