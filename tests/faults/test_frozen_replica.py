"""A replica frozen (SIGSTOP) while it holds the log's row lock must not stop the fleet (issue 22, 4).

The frozen replica is a real process: it opens its session through ``build_engine`` with the broker's
PostgreSQL session limits, takes the log head's lock as every append does, and stops itself.  The other
replica's request gets a clean 503 after the lock timeout, and the server cuts the frozen session off
after the idle-in-transaction timeout, after which issuance goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import LOCK_LOG_HEAD, TEST_SCOPES, build_harness
from tests.revocation.conftest import S3_REQUEST

LIMITS = {"db_lock_timeout_ms": 500, "db_idle_in_transaction_timeout_ms": 1500}

# NOTE: how long the server lets the frozen session sit before it cuts it off.  The request under test must reach the
# lock before then to be refused (it waits 500 ms at most): with 1.5 s a loaded machine can bring the request after
# the cut, and it is issued (201 for the expected 503).
FROZEN_IDLE_MS = 6000

FROZEN_REPLICA = f"""
import os, signal, sys
from broker.storage.engine import PostgresSessionLimits, build_engine
engine = build_engine(sys.argv[1], postgres_limits=PostgresSessionLimits(lock_timeout_ms=500,
                                                                      idle_in_transaction_ms={FROZEN_IDLE_MS}))
connection = engine.connect()
connection.begin()
connection.exec_driver_sql("{LOCK_LOG_HEAD}")
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_frozen_replica_holding_the_log_lock_gives_503_then_is_cut_off(pg_migrated_url, moto_server, tmp_path,
                                                                        caplog):
    broker = build_harness(db_url=pg_migrated_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state", **LIMITS)
    frozen = subprocess.Popen([sys.executable, "-c", FROZEN_REPLICA, pg_migrated_url], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    answers: list = []
    try:
        assert frozen.stdout.readline().strip() == "holding"
        waiter = threading.Thread(target=lambda: answers.append(
            broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)), daemon=True)
        waiter.start()
        waiter.join(5)
        assert not waiter.is_alive(), "a request waited on the frozen replica's lock for more than 5 s"
        assert answers[0].status_code == 503, answers[0].text
        assert answers[0].json()["error"]["code"] == "storage_unavailable"
        assert "cause: LockNotAvailable: canceling statement due to lock timeout" in caplog.text
        # The server ends the frozen session (idle in transaction): the lock is free again.
        deadline = time.monotonic() + FROZEN_IDLE_MS / 1000 + 10
        while True:
            response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
            if response.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.status_code == 201, response.text
    finally:
        frozen.send_signal(signal.SIGKILL)
        frozen.wait(5)
        broker.container.database.engine.dispose()
    assert [e["type"] for e in broker.events()] == ["requested", "issued"]   # the refused one left nothing


def test_postgres_sessions_carry_the_configured_limits(pg_migrated_url, moto_server, tmp_path):
    broker = build_harness(db_url=pg_migrated_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state", db_statement_timeout_ms=7000, db_keepalive_seconds=20,
                           **LIMITS)
    try:
        with broker.container.database.engine.connect() as connection:
            shown = {name: connection.exec_driver_sql(f"SHOW {name}").scalar() for name in (
                "lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout", "tcp_keepalives_idle")}
    finally:
        broker.container.database.engine.dispose()
    assert shown == {"lock_timeout": "500ms", "statement_timeout": "7s",
                     "idle_in_transaction_session_timeout": "1500ms", "tcp_keepalives_idle": "20"}
