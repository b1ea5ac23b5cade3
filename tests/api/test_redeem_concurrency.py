"""Redemption is exactly-once: 50 concurrent redeemers of one approved request on PostgreSQL.

Two broker replicas (separate containers and connection pools) share one database, and the
redeemers arrive both through the service and through real HTTP (uvicorn), released together.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from broker.errors import BrokerError
from tests.conftest import TEST_SCOPES, build_harness, moto_sts_sessions
from tests.live_server import serve

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

REDEEMERS = 50
PROD = {"template": "test-prod-ecs", "parameters": {"service": "billing"}, "reason": "hotfix billing"}


@pytest.fixture
def replicas(pg_url, moto_server, tmp_path):
    first = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                          state_dir=tmp_path / "state")
    second = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state")
    assert first.container.database.is_postgres
    yield first, second
    for harness in (first, second):
        harness.container.database.engine.dispose()


def approved_request(harness) -> str:
    rid = harness.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    for who in ("human:bob", "human:carol"):
        harness.post(f"/v1/requests/{rid}/approvals", who, json={"decision": "approve", "reason": "ok"})
    assert harness.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "approved"
    return rid


def test_fifty_concurrent_redemptions_issue_exactly_one_credential(replicas):
    first, second = replicas
    rid = approved_request(first)
    with first.container.database.transaction() as repo:
        agent = repo.get_principal("agent:demo")
    token = first.keys["agent:demo"]
    start = threading.Barrier(REDEEMERS)
    outcomes: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    with serve(second.client.app) as server:
        def through_service(harness) -> tuple[int, str]:
            try:
                outcome = harness.container.service.redeem(principal=agent, request_id=rid)
                return 201, outcome.credentials.access_key_id
            except BrokerError as exc:
                return exc.status, exc.code

        def through_http() -> tuple[int, str]:
            response = httpx.post(f"{server.url}/v1/requests/{rid}/credentials",
                                  headers={"Authorization": f"Bearer {token}"}, timeout=120)
            body = response.json()
            return response.status_code, (body["credentials"]["access_key_id"] if response.status_code == 201
                                          else body["error"]["code"])

        def redeemer(index: int) -> None:
            path = ("service-1", "service-2", "http")[index % 3]
            start.wait()
            status, detail = (through_service(first) if path == "service-1" else
                              through_service(second) if path == "service-2" else through_http())
            with lock:
                outcomes.append((path, status, detail))

        threads = [threading.Thread(target=redeemer, args=(i,)) for i in range(REDEEMERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)

    assert len(outcomes) == REDEEMERS
    statuses = Counter(status for _, status, _ in outcomes)
    assert statuses == {201: 1, 409: REDEEMERS - 1}, outcomes
    codes = {detail for _, status, detail in outcomes if status == 409}
    assert codes <= {"request_already_redeemed"}, codes
    # Some redeemers read "approved" and lost only at the conditional update: the race really happened.
    assert "request_already_redeemed" in codes, codes
    access_key_id = next(detail for _, status, detail in outcomes if status == 201)

    events = [e for e in first.events() if e["request_id"] == rid]
    kinds = Counter(e["type"] for e in events)
    assert kinds["issued"] == 1 and kinds["redeeming"] == 1
    # Every loser is accounted for: by its own refused entry, or counted by a replica's refusal budget
    # (per replica; written here as the shutdown of both replicas would).
    for harness in (first, second):
        harness.container.service.flush_suppressed_refusals(close_open=True)
    counted = sum(e["details"]["suppressed"] for e in first.events()
                  if e["type"] == "refusals_suppressed_summary" and e["actor"] == "agent:demo")
    assert kinds["refused"] + counted == REDEEMERS - 1
    assert next(e for e in events if e["type"] == "issued")["access_key_id"] == access_key_id
    with first.container.database.transaction() as repo:
        grants = repo.find_grants(agent="agent:demo")
    assert [g.access_key_id for g in grants if g.request_id == rid] == [access_key_id]
    view = first.get(f"/v1/requests/{rid}", "agent:demo").json()
    assert view["status"] == "issued"
    # AWS (moto) saw exactly one AssumeRole for this request's session.
    sessions = [s for s in moto_sts_sessions(first.aws_endpoint) if s["access_key_id"] == access_key_id]
    assert len(sessions) == 1
    assert sum(1 for s in moto_sts_sessions(first.aws_endpoint)
               if s["session_name"] == view["grant"]["session_name"]) == 1


def _deadlocks(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")).scalar())


def _lock_waiters(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar())


def test_redeem_and_cancel_at_once_wait_in_one_lock_order_and_never_deadlock(replicas):
    """Redeem holds the log head and is about to move the request; cancel wants that request's row.
    Both take the log head first, so cancel waits for redeem (no deadlock, no 503) and then sees
    the request already redeemed."""
    import time

    broker, _ = replicas
    rid = approved_request(broker)
    service = broker.container.service
    holds_head, go = threading.Event(), threading.Event()
    counted = service._counted  # noqa: SLF001 - a pause inside redeem's unit of work, after its gates

    def pause_then_count(*args):
        holds_head.set()
        assert go.wait(20)
        return counted(*args)

    service._counted = pause_then_count  # noqa: SLF001
    answers: dict = {}
    before = _deadlocks(broker.container.database.engine)
    redeemer = threading.Thread(target=lambda: answers.__setitem__(
        "redeem", broker.post(f"/v1/requests/{rid}/credentials", "agent:demo")))
    redeemer.start()
    try:
        assert holds_head.wait(20)
        canceller = threading.Thread(target=lambda: answers.__setitem__(
            "cancel", broker.post(f"/v1/requests/{rid}/cancel", "agent:demo")))
        canceller.start()
        deadline = time.monotonic() + 10
        while _lock_waiters(broker.container.database.engine) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _lock_waiters(broker.container.database.engine) == 1  # cancel waits, on the log head
    finally:
        go.set()
    redeemer.join(20)
    canceller.join(20)
    assert answers["redeem"].status_code == 201, answers["redeem"].json().get("error")
    assert answers["cancel"].status_code == 409, answers["cancel"].json()
    assert _deadlocks(broker.container.database.engine) == before
