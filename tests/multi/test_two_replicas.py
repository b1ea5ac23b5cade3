"""Two broker replicas on one PostgreSQL: interleaved issuance, co-signing across replicas, one winner per
redemption, and the issuance log still one chain (seq 1..N, no gaps, no forks) that verifies offline."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy

from broker.domain import log as issuance_log
from broker.errors import BrokerError
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}
PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out checkout 1.2.3"}
REFUSED = {"template": "test-s3-read", "parameters": {"prefix": "../private"}, "reason": "try to escape"}


def post(client: httpx.Client, cluster, principal: str, path: str, json: dict | None = None) -> httpx.Response:
    return client.post(path, headers=cluster.auth(principal), json=json)


def export_and_verify(cluster, replica) -> issuance_log.VerificationReport:
    """Export the whole log from ``replica`` and verify it offline with the key another replica serves."""
    a, b = cluster.replicas
    with a.client() as ca, b.client() as cb:
        keys = {ca.get("/v1/events/public-key").text, cb.get("/v1/events/public-key").text}
        assert len(keys) == 1, "the replicas sign checkpoints with different keys"
        with replica.client() as client:
            exported = client.get("/v1/events/export", headers=cluster.auth("human:rita"))
    assert exported.status_code == 200, exported.text
    lines = exported.content.splitlines()
    report = issuance_log.verify_export(lines, issuance_log.load_public_key(keys.pop().encode()),
                                        require_genesis=True)
    assert report.ok, report.message
    return report


def stored_seqs(cluster) -> list[int]:
    engine = sqlalchemy.create_engine(cluster.database_url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.exec_driver_sql("SELECT seq FROM events ORDER BY seq")]
    finally:
        engine.dispose()


def test_two_replicas_serve_interleaved_traffic_and_keep_one_chain(cluster):
    a, b = cluster.replicas
    with a.client() as ca, b.client() as cb:
        # A production request opened on A, co-signed by bob on A and by carol on B.
        pending = post(ca, cluster, "agent:demo", "/v1/requests", PROD)
        assert pending.status_code == 202, pending.text
        request_id = pending.json()["id"]

        def issue_many(client: httpx.Client, agent: str, count: int) -> list[int]:
            return [post(client, cluster, agent, "/v1/requests", S3).status_code for _ in range(count)]

        def refuse_many(client: httpx.Client, count: int) -> list[int]:
            return [post(client, cluster, "agent:demo", "/v1/requests", REFUSED).status_code for _ in range(count)]

        def cosign(client: httpx.Client, who: str) -> int:
            return post(client, cluster, who, f"/v1/requests/{request_id}/approvals",
                        {"decision": "approve", "reason": "diff reviewed"}).status_code

        def checkpoint(client: httpx.Client) -> int:
            return client.post("/v1/events/checkpoints", headers=cluster.auth("human:rita")).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            jobs = [pool.submit(issue_many, ca, "agent:demo", 15), pool.submit(issue_many, cb, "agent:other", 15),
                    pool.submit(refuse_many, cb, 10), pool.submit(refuse_many, ca, 10),
                    pool.submit(cosign, ca, "human:bob"), pool.submit(checkpoint, cb)]
            statuses = [job.result() for job in jobs]
        assert statuses[0] == statuses[1] == [201] * 15
        assert statuses[2] == statuses[3] == [422] * 10
        assert statuses[4] == 200 and statuses[5] == 200
        assert cosign(cb, "human:carol") == 200
        seen = cb.get(f"/v1/requests/{request_id}", headers=cluster.auth("human:bob")).json()
        assert seen["status"] == "approved"
        assert sorted(x["approver"] for x in seen["approvals"]) == ["human:bob", "human:carol"]

        # Redeemed on both replicas at once: exactly one wins.
        start = threading.Barrier(2)

        def redeem(client: httpx.Client) -> httpx.Response:
            start.wait()
            return post(client, cluster, "agent:demo", f"/v1/requests/{request_id}/credentials")

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(redeem, [ca, cb]))
        codes = sorted(r.status_code for r in outcomes)
        assert codes == [201, 409], [r.text for r in outcomes]
        loser = next(r for r in outcomes if r.status_code == 409)
        assert loser.json()["error"]["code"] in {"request_already_redeemed"}
        winner = next(r for r in outcomes if r.status_code == 201).json()

        events = ca.get("/v1/events", headers=cluster.auth("human:rita"),
                        params={"request_id": request_id, "limit": 1000}).json()["events"]
    steps = Counter(e["type"] for e in events)
    assert steps["issued"] == 1 and steps["redeeming"] == 1 and steps["approved"] == 1 and steps["cosigned"] == 2
    issued = next(e for e in events if e["type"] == "issued")
    assert issued["access_key_id"] == winner["credentials"]["access_key_id"]

    for replica in (a, b):
        report = export_and_verify(cluster, replica)
        assert report.first_seq == 1
    seqs = stored_seqs(cluster)
    assert seqs == list(range(1, len(seqs) + 1))
    assert report.entries == len(seqs)
    # 31 issuances (requested + issued), 20 refusals, and the production request's own entries.
    assert len(seqs) >= 2 * 30 + 20 + len(events)


@pytest.mark.slow
def test_concurrent_appends_from_two_processes_make_one_gapless_chain(cluster):
    per_replica = 200
    a, b = cluster.replicas

    def drive(replica, agent: str) -> Counter:
        outcomes: Counter = Counter()
        with replica.client() as client:
            for i in range(per_replica):
                # Alternate issuances (STS + two log entries) and refusals (one entry, no STS).
                payload = S3 if i % 2 == 0 else REFUSED
                response = post(client, cluster, agent, "/v1/requests", payload)
                outcomes[response.status_code] += 1
                if response.status_code not in (201, 422):
                    unexpected.append(response.text)
        return outcomes

    unexpected: list[str] = []

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: drive(*job), [(a, "agent:demo"), (b, "agent:other"),
                                                          (a, "agent:other"), (b, "agent:demo")]))
    total = sum(results, Counter())
    assert total == Counter({201: 2 * per_replica, 422: 2 * per_replica}), unexpected
    seqs = stored_seqs(cluster)
    # Each issuance appends requested + issued; each refusal appends refused; each replica's start-up one
    # templates_loaded.
    assert seqs == list(range(1, 3 * 2 * per_replica + len(cluster.replicas) + 1))
    report = export_and_verify(cluster, b)
    assert report.entries == len(seqs)
    with a.client() as client:
        metrics = client.get("/metrics").text
    assert "broker_credentials_issued_total" in metrics


def test_the_first_appends_of_two_writers_on_a_fresh_database_do_not_collide(pg_url):
    """Deterministic: writer 2 appends while writer 1's first append is uncommitted."""
    engine = build_engine(pg_url)
    migrate(engine)
    database = Database(engine)
    first_appended, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first_writer() -> None:
        with database.transaction() as repo:
            repo.append_event(_body("first"))
            first_appended.set()
            release.wait(30)

    def second_writer() -> None:
        first_appended.wait(30)
        try:
            with database.transaction() as repo:
                outcome["entry"] = repo.append_event(_body("second"))
        except BrokerError as exc:
            outcome["error"] = exc.code

    threads = [threading.Thread(target=first_writer), threading.Thread(target=second_writer)]
    for thread in threads:
        thread.start()
    try:
        _wait_for_a_lock_wait(engine)
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    engine.dispose()
    assert outcome.get("error") is None, outcome
    assert outcome["entry"]["seq"] == 2


def _body(name: str) -> dict:
    return {"event_id": name, "time": "2025-01-01T00:00:00.000000Z", "type": "test", "details": {}}


def _wait_for_a_lock_wait(engine, timeout: float = 20.0) -> None:
    """Until a session of this database waits on a lock (writer 2 behind writer 1)."""
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'").scalar()
            connection.rollback()
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("writer 2 never waited for writer 1")


def _entries_of(cluster, actor: str) -> list[dict]:
    engine = build_engine(cluster.database_url)
    try:
        with Database(engine).transaction() as repo:
            return [e for e in repo.query_events(filters={}, limit=10_000) if e["actor"] == actor]
    finally:
        engine.dispose()


@pytest.mark.parametrize("cluster", [{"refusals_per_minute": "3"}], indirect=True)
def test_the_refusal_budget_holds_per_replica_and_a_stopping_replica_writes_its_count(cluster):
    """Each replica keeps its own budget (at most replicas x (N + 1) entries a window); SIGTERM, as an
    orchestrator stops a replica, writes the count of what it suppressed before the process ends."""
    refusals = 10
    for replica in cluster.replicas:
        with replica.client() as client:
            for _ in range(refusals):
                assert post(client, cluster, "agent:demo", "/v1/requests", REFUSED).status_code == 422
    kinds = Counter(e["type"] for e in _entries_of(cluster, "agent:demo"))
    assert kinds == {"refused": 2 * 3, "refusals_suppressed": 2}
    export_and_verify(cluster, cluster.replicas[0])
    for replica in cluster.replicas:
        replica.process.terminate()
        assert replica.process.wait(timeout=30) == 0, replica.output()
    entries = _entries_of(cluster, "agent:demo")
    summaries = [e["details"]["suppressed"] for e in entries if e["type"] == "refusals_suppressed_summary"]
    assert summaries == [refusals - 3, refusals - 3]
    assert sum(e["type"] == "refused" for e in entries) + sum(summaries) == 2 * refusals
    assert stored_seqs(cluster) == list(range(1, len(stored_seqs(cluster)) + 1))
