"""The approvers' pending list pages with totals, and an agent's waiting requests are capped (issue 15.6):
no agent can bury another's request under a flood of its own.  SQLite and PostgreSQL, against moto."""

from __future__ import annotations

import pytest

from tests.conftest import TEST_SCOPES, build_harness

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out 1.2.3"}
S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}
CAP = 3


@pytest.fixture
def broker(db_url, moto_server, tmp_path):
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state", agent_max_pending_requests=CAP)
    yield harness
    harness.container.database.engine.dispose()


def test_an_agents_waiting_requests_are_capped_with_a_clear_429(broker):
    ids = []
    for _ in range(CAP):
        created = broker.post("/v1/requests", "agent:demo", json=PROD)
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
        broker.clock.advance(10)
    refused = broker.post("/v1/requests", "agent:demo", json=PROD)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "too_many_pending_requests"
    assert f"{CAP} requests waiting for co-signers (limit {CAP})" in error["message"]
    # Until the oldest waiting request expires (30 min after it was made, 30 s ago).
    assert refused.headers["retry-after"] == str(30 * 60 - 30)
    assert broker.request_count() == CAP                                  # nothing of the refused one stored
    (entry,) = broker.get("/v1/events", "human:rita", params={"type": "refused"}).json()["events"]
    assert entry["reason_code"] == "too_many_pending_requests"
    # Other agents, and scopes that need no co-signers, are not held back.
    assert broker.post("/v1/requests", "agent:other", json=PROD).status_code == 202
    assert broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201
    # A decided (or cancelled) request frees its slot.
    assert broker.post(f"/v1/requests/{ids[0]}/cancel", "agent:demo").status_code == 200
    assert broker.post("/v1/requests", "agent:demo", json=PROD).status_code == 202


def test_the_cap_can_be_switched_off(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                            agent_max_pending_requests=0)
    try:
        for _ in range(CAP + 2):
            assert harness.post("/v1/requests", "agent:demo", json=PROD).status_code == 202
    finally:
        harness.container.database.engine.dispose()


def test_the_pending_list_pages_newest_first_with_totals(broker):
    made = []
    for agent in ("agent:demo", "agent:demo", "agent:demo", "agent:other", "agent:other"):
        made.append(broker.post("/v1/requests", agent, json=PROD).json()["id"])
        broker.clock.advance(1)
    first = broker.get("/v1/requests", "human:carol", params={"limit": 2})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["total"] == 5 and body["by_agent"] == {"agent:demo": 3, "agent:other": 2}
    assert (body["offset"], body["limit"], body["next_offset"]) == (0, 2, 2)
    seen = [r["id"] for r in body["requests"]]
    while body["next_offset"] is not None:
        body = broker.get("/v1/requests", "human:carol", params={"limit": 2, "offset": body["next_offset"]}).json()
        seen += [r["id"] for r in body["requests"]]
    assert seen == made[::-1]                                           # every one once, newest first
    # The default page is the old answer's shape (``requests``), now with the totals beside it.
    assert [r["id"] for r in broker.get("/v1/requests", "human:carol").json()["requests"]] == made[::-1]
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}):
        assert broker.get("/v1/requests", "human:carol", params=params).status_code == 422
