"""POST /v1/requests: how each shape of body is answered, and that authentication comes first.

Pinned as a table so the route's body handling cannot drift: content types FastAPI would parse
as JSON, empty and malformed bodies, wrong shapes, unknown fields, and an unauthenticated caller
with a bad body, malformed JSON included (401: nothing of the body is judged before the caller is
known).
"""

from __future__ import annotations

import json

import pytest

from tests.event_loops import run_coroutine

GOOD = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "contract"}
JSON = {"content-type": "application/json"}

CASES = [
    pytest.param({}, json.dumps(GOOD), 422, "invalid_request", None, id="no-content-type"),
    pytest.param({"content-type": "text/plain"}, json.dumps(GOOD), 422, "invalid_request", None, id="text-plain"),
    pytest.param(JSON, json.dumps(GOOD), 201, None, None, id="application-json"),
    pytest.param({"content-type": "application/json; charset=utf-8"}, json.dumps(GOOD), 201, None, None,
                 id="json-with-charset"),
    pytest.param({"content-type": "application/vnd.broker+json"}, json.dumps(GOOD), 201, None, None, id="plus-json"),
    pytest.param(JSON, "", 422, "invalid_request", None, id="empty"),
    pytest.param(JSON, "{bad", 400, "malformed_json", None, id="malformed"),
    pytest.param(JSON, "[" * 3000 + "]" * 3000, 400, "malformed_json", None, id="nested-too-deep"),
    pytest.param(JSON, '{"ttl_seconds": ' + "1" * 5000 + "}", 400, "malformed_json", None, id="integer-too-long"),
    pytest.param(JSON, "[1]", 422, "invalid_request", None, id="array"),
    pytest.param(JSON, "null", 422, "invalid_request", None, id="null"),
    pytest.param(JSON, json.dumps({**GOOD, "x": 1}), 422, "unknown_field", "x", id="unknown-field"),
    pytest.param(JSON, json.dumps({**GOOD, "ttl_seconds": "900"}), 422, "invalid_ttl", "ttl_seconds", id="ttl-string"),
    pytest.param(JSON, json.dumps({**GOOD, "ttl_seconds": True}), 422, "invalid_ttl", "ttl_seconds", id="ttl-bool"),
    pytest.param(JSON, json.dumps({k: v for k, v in GOOD.items() if k != "reason"}), 422, "missing_reason", "reason",
                 id="no-reason"),
    pytest.param(JSON, json.dumps({**GOOD, "template": ""}), 422, "invalid_template_name", "template",
                 id="empty-template"),
    pytest.param(JSON, json.dumps({**GOOD, "parameters": []}), 422, "invalid_request", "parameters",
                 id="parameters-not-object"),
]


@pytest.mark.parametrize(("headers", "content", "status", "code", "field"), CASES)
def test_body_shapes(sqlite_broker, headers, content, status, code, field):
    response = sqlite_broker.client.post("/v1/requests", content=content.encode(),
                                         headers={**sqlite_broker.auth("agent:demo"), **headers})
    assert response.status_code == status, response.text
    if code is not None:
        error = response.json()["error"]
        assert error["code"] == code and error["message"]
        assert error.get("field") == field


@pytest.mark.parametrize("content", ["[1]", "{bad", json.dumps({**GOOD, "x": 1}), ""])
def test_authentication_is_judged_before_the_body(sqlite_broker, content):
    anonymous = sqlite_broker.client.post("/v1/requests", content=content.encode(), headers=JSON)
    forged = sqlite_broker.client.post("/v1/requests", content=content.encode(),
                                       headers={**JSON, "Authorization": "Bearer brk_nope_nope"})
    assert anonymous.status_code == forged.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_credentials"
    assert sqlite_broker.request_count() == 0


def test_the_body_schema_is_documented(sqlite_broker):
    operation = sqlite_broker.client.get("/openapi.json").json()["paths"]["/v1/requests"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = sqlite_broker.client.get("/openapi.json").json()["components"]["schemas"][name]
    assert set(schema["properties"]) == {"template", "parameters", "ttl_seconds", "reason"}
    assert set(schema["required"]) == {"template", "reason"}
    assert operation["requestBody"]["required"] is True


def test_a_caller_that_disconnects_mid_body_is_not_an_error(sqlite_broker, caplog):
    """Found in review: the body read outside FastAPI's handling let ClientDisconnect become a 500."""
    from broker.api.app import create_app

    app = create_app(sqlite_broker.container)
    statuses: list[int] = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    headers = {**sqlite_broker.auth("agent:demo"), **JSON, "content-length": "10"}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/requests", "raw_path": b"/v1/requests", "query_string": b"",
             "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    run_coroutine(app, scope, receive, send)
    assert statuses == [400]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert sqlite_broker.request_count() == 0
