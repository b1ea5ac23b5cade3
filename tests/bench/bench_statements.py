"""Benchmark: the SQL statements of one issuance (POST /v1/requests, no-approval template), per database.

An in-process broker (the test harness: FastAPI's TestClient, moto's server for STS) on SQLite and on
PostgreSQL; after a warm-up it counts every statement the broker sends to the database for one issuance
(authentication, both units of work, BEGIN and COMMIT included) and prints them in order, marking those
sent while the unit of work held the log's lock (from ``lock_log_head`` to the end of its COMMIT).

    .venv/bin/python -m tests.bench.bench_statements [--db sqlite|postgres|both] [--limits off|default]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from sqlalchemy import event

from tests.bench.bench_issue import LIMIT_SETTINGS
from tests.conftest import PG_ADMIN_URL, TEST_SCOPES, _fresh_pg_database, build_harness

REQUEST = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "benchmark"}


def run(db: str, limits: str, aws_endpoint: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = (_fresh_pg_database(PG_ADMIN_URL) if db == "postgres"
                     else (f"sqlite:///{Path(tmp) / 'bench.db'}", None))
        overrides = {} if limits == "default" else {name.removeprefix("BROKER_").lower(): 0 for name in LIMIT_SETTINGS}
        broker = build_harness(db_url=url, scopes=TEST_SCOPES, aws_endpoint=aws_endpoint,
                               state_dir=Path(tmp) / "state", server_timing=True, **overrides)
        engine = broker.container.database.engine
        sent: list[str] = []
        try:
            for _ in range(3):  # warm-up: caches, pooled connections
                assert broker.post("/v1/requests", "agent:demo", json=REQUEST).status_code == 201

            @event.listens_for(engine, "before_cursor_execute")
            def _count(_conn, _cursor, statement, _params, _context, _many):  # pragma: no cover - bench hook
                sent.append(statement)

            @event.listens_for(engine, "commit")
            def _commit(_conn):  # pragma: no cover - bench hook
                sent.append("COMMIT")

            response = broker.post("/v1/requests", "agent:demo", json=REQUEST)
            assert response.status_code == 201, response.text
            timing = response.headers.get("server-timing", "")
        finally:
            broker.container.database.engine.dispose()
            if drop:
                drop()
    print(f"== {db}, rate limits {limits}: {len(sent)} statements per issuance (COMMITs included)")
    locked = False
    for number, statement in enumerate(sent, 1):
        locked = locked or statement.startswith("SELECT log_head.seq") or "broker_lock_log_head(" in statement
        print(f"  {number:2d} {'*' if locked else ' '} {' '.join(statement.split())[:150]}")
        locked = locked and statement != "COMMIT"
    print("  (* sent while the unit of work held the log's lock)")
    if timing:
        print(f"  Server-Timing: {timing}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--limits", choices=["off", "default"], default="off")
    args = parser.parse_args()
    from broker.runtime.devmode import start_fake_aws
    from broker.runtime.devmode import seed_aws
    from broker.storage.template_files import load_catalog

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-broker-secret")
    aws = start_fake_aws(0)
    try:
        seed_aws(aws.endpoint_url, load_catalog(TEST_SCOPES))
        for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
            run(db, args.limits, aws.endpoint_url)
    finally:
        aws.stop()


if __name__ == "__main__":
    main()
