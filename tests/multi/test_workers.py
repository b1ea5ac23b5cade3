"""``broker serve --workers 2`` on one PostgreSQL: two processes behind one port, each serving it, one
chain in the log, a graceful stop on SIGTERM.  (A worker's death stopping the others: tests/runtime/test_workers.py.)"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from broker.domain import log as issuance_log
from broker.runtime.devmode import DEV_PRINCIPALS, ensure_signing_key, seed_principals
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate
from tests.conftest import TEST_PRINCIPALS
from tests.multi.conftest import start_replica, stop, wait_ready

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}


def workers_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


@pytest.fixture
def two_workers(pg_url, moto_server, tmp_path):
    engine = build_engine(pg_url)
    migrate(engine)  # the keys need the schema; the supervisor migrates too (a no-op then)
    keys = seed_principals(Database(engine), tmp_path / "keys.json", {**DEV_PRINCIPALS, **TEST_PRINCIPALS})
    engine.dispose()
    (tmp_path / "state").mkdir()
    signing_key, _public = ensure_signing_key(tmp_path / "state")
    broker = start_replica("workers", database_url=pg_url, signing_key=signing_key,
                           aws_endpoint=moto_server.endpoint_url, log_dir=tmp_path, serve_args=("--workers", "2"))
    try:
        wait_ready(broker)
        yield broker, keys
    finally:
        stop(broker)


def issue(url: str, key: str) -> httpx.Response:
    # A connection of its own: the kernel hands it to whichever worker accepts it.
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post("/v1/requests", json=S3, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.slow
def test_two_workers_share_the_port_and_keep_one_chain(two_workers):
    broker, keys = two_workers
    workers = workers_of(broker.process.pid)
    assert len(workers) == 2, broker.output()
    agent = keys["agent:demo"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: issue(broker.url, agent), range(16)))
    assert [a.status_code for a in answers] == [201] * 16, [a.text for a in answers if a.status_code != 201]
    # Each worker serves the port alone while the other is stopped: both accept connections.
    for paused in workers:
        os.kill(paused, signal.SIGSTOP)
        try:
            assert issue(broker.url, agent).status_code == 201
        finally:
            os.kill(paused, signal.SIGCONT)
    with httpx.Client(base_url=broker.url, timeout=30) as client:
        exported = client.get("/v1/events/export", headers={"Authorization": f"Bearer {keys['human:rita']}"})
        public_key = client.get("/v1/events/public-key").text
    assert exported.status_code == 200, exported.text
    report = issuance_log.verify_export(exported.content.splitlines(), issuance_log.load_public_key(public_key.encode()),
                                        require_genesis=True)
    assert report.ok, report.message
    issued = [line for line in exported.content.splitlines() if b'"type":"issued"' in line]
    assert len(issued) == 18
    # SIGTERM: each worker drains and stops; the supervisor exits 0 with none left behind.
    broker.process.send_signal(signal.SIGTERM)
    assert broker.process.wait(timeout=30) == 0, broker.output()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # stopped and reaped

