"""``BROKER_SERVER_TIMING``: each response says how long the app took, how much of it was STS, and how long it
held the log's lock."""

from __future__ import annotations

import re

from tests.conftest import TEST_SCOPES, build_harness

REQUEST = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "timing"}
TIMING = re.compile(r"^app;dur=(\d+\.\d{3}), sts;dur=(\d+\.\d{3}), lock;dur=(\d+\.\d{3})$")


def _harness(moto_server, tmp_path, **settings):
    return build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                         aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", **settings)


def test_off_by_default(sqlite_broker):
    response = sqlite_broker.post("/v1/requests", "agent:demo", json=REQUEST)
    assert response.status_code == 201
    assert "server-timing" not in response.headers


def test_issuance_reports_app_and_sts_time(moto_server, tmp_path):
    harness = _harness(moto_server, tmp_path, server_timing=True)
    response = harness.post("/v1/requests", "agent:demo", json=REQUEST)
    assert response.status_code == 201
    app_ms, sts_ms, lock_ms = map(float, TIMING.match(response.headers["server-timing"]).groups())
    # The AssumeRole call over HTTP to moto takes real time, and it is part of the app's time; so do the two
    # units of work around it, each holding the log's lock (never across the STS call).
    assert 0 < sts_ms < app_ms
    assert 0 < lock_ms < app_ms - sts_ms

    # No STS call: the STS part is zero (a refusal, a read).
    refused = harness.post("/v1/requests", "agent:demo", json={**REQUEST, "template": "nope"})
    assert refused.status_code == 404
    app_ms, sts_ms, _lock_ms = map(float, TIMING.match(refused.headers["server-timing"]).groups())
    assert app_ms > 0 and sts_ms == 0
    health = harness.client.get("/healthz")
    assert TIMING.match(health.headers["server-timing"]).group(2, 3) == ("0.000", "0.000")
    harness.container.database.engine.dispose()


def test_sts_and_lock_time_do_not_leak_between_requests(moto_server, tmp_path):
    harness = _harness(moto_server, tmp_path, server_timing=True)
    assert harness.post("/v1/requests", "agent:demo", json=REQUEST).status_code == 201
    after = harness.get("/v1/templates", "agent:demo")
    assert TIMING.match(after.headers["server-timing"]).group(2, 3) == ("0.000", "0.000")
    harness.container.database.engine.dispose()
