"""End to end over the real HTTP API and a real moto server: an agent key gets least-privilege STS credentials."""

from __future__ import annotations

import json
from datetime import datetime

import boto3
import pytest

from tests.conftest import moto_sts_sessions

REQUEST = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "investigate bug 42"}


def test_issued_credentials_are_the_rendered_session(broker):
    response = broker.post("/v1/requests", "agent:demo", json={**REQUEST, "ttl_seconds": 1200})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "issued"
    creds = body["credentials"]
    assert set(creds) == {"access_key_id", "secret_access_key", "session_token", "expiration"}
    assert response.headers["cache-control"] == "no-store"

    # The credentials work against the (fake) AWS endpoint and are the assumed role's session.
    sts = boto3.client("sts", endpoint_url=broker.aws_endpoint, region_name="us-east-1",
                       aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                       aws_session_token=creds["session_token"])
    identity = sts.get_caller_identity()
    assert identity["Arn"] == (f"arn:aws:sts::123456789012:assumed-role/broker-target-s3-read/"
                               f"{body['grant']['session_name']}")
    assert body["grant"]["session_name"].startswith("demo-")

    # What reached STS is exactly the rendered policy, for the requested duration.
    session = next(s for s in moto_sts_sessions(broker.aws_endpoint) if s["access_key_id"] == creds["access_key_id"])
    assert session["policy"] == json.dumps(body["policy"], separators=(",", ":"))
    assert session["role_arn"] == "arn:aws:iam::123456789012:role/broker-target-s3-read"
    assert body["policy"]["Statement"][0]["Resource"] == ["arn:aws:s3:::broker-demo-bucket/reports/*"]
    expiration = datetime.fromisoformat(creds["expiration"].replace("Z", "+00:00"))
    issued_at = datetime.fromisoformat(body["issued_at"].replace("Z", "+00:00"))
    # moto computes expiry from its own clock: allow for the gap between the frozen test clock and real time.
    assert abs((expiration - issued_at).total_seconds() - 1200) < 120
    assert body["ttl_seconds"] == 1200


def test_default_ttl_and_grant_recorded_in_log_without_secrets(broker):
    response = broker.post("/v1/requests", "agent:demo", json=REQUEST)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["ttl_seconds"] == 900
    events = broker.events()
    assert [e["type"] for e in events] == ["requested", "issued"]
    issued = events[-1]
    assert issued["access_key_id"] == body["credentials"]["access_key_id"]
    assert issued["policy_digest"] == body["policy_digest"]
    assert issued["expiration"] == body["grant"]["expiration"]
    dump = json.dumps(events)
    assert body["credentials"]["secret_access_key"] not in dump
    assert body["credentials"]["session_token"] not in dump


def test_request_is_readable_by_its_agent_and_not_by_another(broker):
    created = broker.post("/v1/requests", "agent:demo", json=REQUEST).json()
    seen = broker.get(f"/v1/requests/{created['id']}", "agent:demo")
    assert seen.status_code == 200
    assert seen.json()["status"] == "issued"
    assert "credentials" not in seen.json()
    assert "secret_access_key" not in seen.text
    other = broker.get(f"/v1/requests/{created['id']}", "agent:other")
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "request_not_found"


def test_templates_are_listed(broker):
    listed = broker.get("/v1/templates", "agent:demo")
    assert listed.status_code == 200
    names = {t["name"] for t in listed.json()["templates"]}
    assert {"test-s3-read", "test-logs", "test-prod-ecs"} <= names
    one = broker.get("/v1/templates/test-logs", "agent:demo").json()
    assert one["version_digest"].startswith("sha256:")
    assert broker.get("/v1/templates/nope", "agent:demo").json()["error"]["code"] == "template_not_found"


def test_health_and_openapi(broker):
    assert broker.client.get("/healthz").json() == {"status": "ok"}
    assert broker.client.get("/readyz").status_code == 200
    spec = broker.client.get("/openapi.json").json()
    assert "/v1/requests" in spec["paths"] and "/v1/requests/{request_id}/credentials" in spec["paths"]


# --------------------------------------------------------------------------- refusals: code, and no state written
BAD_REQUESTS = [
    pytest.param({"template": "no-such", "parameters": {}, "reason": "x"}, 404, "template_not_found", id="unknown-template"),
    pytest.param({"template": "test-logs", "parameters": {}, "reason": "x"}, 422, "missing_parameter", id="param-missing"),
    pytest.param({"template": "test-logs", "parameters": {"log_group": 7}, "reason": "x"}, 422, "invalid_parameter",
                 id="param-wrong-type"),
    pytest.param({"template": "test-logs", "parameters": {"log_group": "/aws/lambda/a", "limit": "many"},
                  "reason": "x"}, 422, "invalid_parameter", id="integer-wrong-type"),
    pytest.param({"template": "test-logs", "parameters": {"log_group": "/var/log/x"}, "reason": "x"}, 422,
                 "invalid_parameter", id="param-pattern-miss"),
    pytest.param({"template": "test-logs", "parameters": {"log_group": "/aws/lambda/*"}, "reason": "x"}, 422,
                 "invalid_parameter", id="param-wildcard"),
    pytest.param({"template": "test-s3-read", "parameters": {"prefix": "reports\"],\"Resource\":[\"*"},
                  "reason": "x"}, 422, "invalid_parameter", id="param-json-injection"),
    pytest.param({"template": "test-s3-read", "parameters": {"prefix": "../private"}, "reason": "x"}, 422,
                 "invalid_parameter", id="param-traversal"),
    pytest.param({"template": "test-logs", "parameters": {"log_group": "/aws/lambda/a", "evil": "1"},
                  "reason": "x"}, 422, "invalid_parameter", id="param-unknown"),
    pytest.param({**REQUEST, "ttl_seconds": 3600}, 422, "ttl_too_long", id="ttl-above-max"),
    pytest.param({**REQUEST, "ttl_seconds": 899}, 422, "ttl_too_short", id="ttl-below-floor"),
    pytest.param({**REQUEST, "ttl_seconds": "900"}, 422, "invalid_ttl", id="ttl-string"),
    pytest.param({"template": "test-s3-read", "parameters": {}}, 422, "missing_reason", id="no-reason"),
    pytest.param({**REQUEST, "extra": 1}, 422, "unknown_field", id="unknown-field"),
    pytest.param({"template": "test-logs", "parameters": {"log_group": "/aws/lambda/a"}, "reason": "x"}, 403,
                 "requester_not_allowed", id="agent-not-in-requesters"),
]


@pytest.mark.parametrize(("payload", "status", "code"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_a_code_and_write_no_state(broker, payload, status, code):
    principal = "agent:other" if code == "requester_not_allowed" else "agent:demo"
    before = broker.request_count()
    response = broker.post("/v1/requests", principal, json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert broker.request_count() == before
    assert all(e["type"] == "refused" for e in broker.events())


def test_malformed_json_and_oversized_body(broker):
    bad = broker.client.post("/v1/requests", content=b"{not json", headers={**broker.auth("agent:demo"),
                                                                             "content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"
    huge = broker.client.post("/v1/requests", content=b"{" + b" " * 200_000 + b"}",
                              headers={**broker.auth("agent:demo"), "content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    assert broker.request_count() == 0


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer brk_nope_nope", "Bearer not-a-token",
                                    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."])
def test_missing_or_bad_credentials_are_401(broker, header):
    headers = {} if header is None else {"Authorization": header}
    response = broker.client.post("/v1/requests", json=REQUEST, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"missing_credentials", "invalid_credentials", "invalid_token",
                                                "unauthenticated"}
    assert broker.request_count() == 0


def test_a_human_cannot_request_agent_credentials(broker):
    response = broker.post("/v1/requests", "human:alice", json=REQUEST)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "requester_not_allowed"
