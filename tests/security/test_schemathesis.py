"""API fuzzing: schemathesis over the broker's own OpenAPI spec, in-process (ASGI).

Every operation is called with generated inputs, authenticated as ``agent:demo`` (as the
reviewer ``human:rita`` for /v1/events, as the approver ``human:bob`` for co-signing).
Checks: no 5xx, status codes, content types, headers and bodies as documented.  Known
request ids are substituted into about half of the id-taking calls so the fuzzer reaches
the real lifecycle code rather than only 404s.  Bounded: ``MAX_EXAMPLES`` per operation.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from tests.conftest import TEST_SCOPES, build_harness
from tests.security.attack_tally import record

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_broker(moto_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    harness = build_harness(db_url=f"sqlite:///{root / 'broker.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=root / "state")
    issued = harness.post("/v1/requests", "agent:demo", json={
        "template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "fuzz seed"})
    pending = harness.post("/v1/requests", "agent:demo", json={
        "template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "fuzz seed"})
    assert issued.status_code == 201 and pending.status_code == 202
    harness.known_ids = [issued.json()["id"], pending.json()["id"]]
    yield harness
    harness.container.database.engine.dispose()


def _caller(operation) -> str:
    if operation.path.startswith("/v1/events"):
        return "human:rita"
    if operation.path.endswith("/approvals"):
        return "human:bob"
    return "agent:demo"


def _fuzz(operation, harness) -> tuple[int, str | None]:
    """Run MAX_EXAMPLES generated calls of one operation; return (calls, failure text or None)."""
    calls = 0

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case) -> None:
        nonlocal calls
        request_id = (case.path_parameters or {}).get("request_id")
        if isinstance(request_id, str) and len(request_id) % 2 == 0:
            case.path_parameters["request_id"] = harness.known_ids[len(request_id) % 4 // 2]
        response = case.call_and_validate(headers=harness.auth(_caller(operation)), checks=CHECKS)
        calls += 1
        record("API fuzzing (schemathesis)", refused=response.status_code >= 400)

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - schemathesis reports a group of check failures
        return calls, f"{operation.label}: {exc}"[:4000]
    return calls, None


@pytest.mark.slow
def test_api_conforms_to_its_schema_and_never_fails(fuzz_broker):
    """Every operation in the spec, fuzzed; zero 5xx and zero schema violations."""
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_broker.client.app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]   # the spec really was read
    failures, calls = [], 0
    for operation in operations:
        made, failure = _fuzz(operation, fuzz_broker)
        calls += made
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)
    assert calls >= len(operations) * 3


# ----------------------------------------------------------------------------- regressions found by fuzzing
@pytest.mark.parametrize("after_seq", [2**31, 2**63, 10**30])
def test_huge_after_seq_is_refused_as_input_not_a_server_error(security_broker, after_seq):
    """Found by schemathesis: an after_seq beyond the 32-bit column overflowed the driver (500)."""
    response = security_broker.get(f"/v1/events?after_seq={after_seq}", "human:rita")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "after_seq"
    assert security_broker.get(f"/v1/events?after_seq={2**31 - 1}", "human:rita").status_code == 200


@pytest.mark.parametrize(("path", "media_type"), [("/v1/events/export", "application/x-ndjson"),
                                                   ("/v1/events/public-key", "application/x-pem-file")])
def test_non_json_responses_are_documented(security_broker, path, media_type):
    """Found by schemathesis: these responses' content types were missing from the spec."""
    spec = security_broker.client.get("/openapi.json").json()
    assert media_type in spec["paths"][path]["get"]["responses"]["200"]["content"]
    response = security_broker.get(path, "human:rita")
    assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
