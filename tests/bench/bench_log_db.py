"""Benchmark: issuance-log append throughput through the real storage (SQLite and PostgreSQL).

Run: ``python -m tests.bench.bench_log_db [--units 2000] [--pg-url URL]``.  Not a test: it prints
figures.  Each unit of work is ``Database.transaction()`` + ``Repository.append_event`` (the
same path as the use cases, without the request rows), committed once.  Writers are separate
processes (like broker replicas), started together; the chain is verified afterwards.

PostgreSQL: a throw-away database is created on the server at ``--pg-url`` (default
``BROKER_TEST_PG_URL`` or the local trust-auth server) and dropped at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime

from broker.domain import log as issuance_log
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate
from tests.bench.bench_log import realistic_body

PG_ADMIN_URL = os.environ.get("BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# (entries per unit of work, concurrent writers)
SHAPES = ((1, 1), (1, 2), (10, 1), (10, 2))


def _writer(url: str, units: int, per_unit: int, start: multiprocessing.Barrier, seed: int) -> None:
    database = Database(build_engine(url))
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    bodies = [realistic_body(seed * 100_000 + i, moment) for i in range(100)]
    start.wait()
    for unit in range(units):
        with database.transaction() as repo:
            for i in range(per_unit):
                body = dict(bodies[(unit * per_unit + i) % 100], event_id=str(uuid.uuid4()))
                repo.append_event(body)
    database.engine.dispose()


def _verify(database: Database, expected: int) -> str:
    with database.transaction() as repo:
        entries = repo.query_events(filters={}, limit=expected + 10)
    seqs = [e["seq"] for e in entries]
    if seqs != list(range(1, expected + 1)):
        return f"BROKEN: {len(seqs)} entries, expected seq 1..{expected}"
    signer = issuance_log.CheckpointSigner(issuance_log.generate_signing_key())
    checkpoint = signer.sign(expected, entries[-1]["hash"], issuance_log.log_time(datetime.now(UTC)))
    report = issuance_log.verify_chain(entries, checkpoint, signer.public_key)
    return "chain ok" if report.ok else f"BROKEN: {report.message}"


def run(label: str, make_url, drop_url, units: int) -> None:
    for per_unit, writers in SHAPES:
        url = make_url()
        try:
            database = Database(build_engine(url))
            migrate(database.engine)
            with database.transaction() as repo:  # the first append creates the log head: not timed
                repo.append_event(dict(realistic_body(0, datetime(2024, 5, 1, tzinfo=UTC))))
            each = units // writers // per_unit
            start = multiprocessing.Barrier(writers + 1)
            processes = [multiprocessing.Process(target=_writer, args=(url, each, per_unit, start, w))
                         for w in range(writers)]
            for process in processes:
                process.start()
            start.wait()
            began = time.perf_counter()
            for process in processes:
                process.join()
            elapsed = time.perf_counter() - began
            appended = each * per_unit * writers
            status = _verify(database, appended + 1)
            database.engine.dispose()
            print(f"{label:10} {per_unit:>3} entr/unit {writers} writer(s): {appended:>6,} entries in "
                  f"{elapsed:6.2f} s = {appended / elapsed:>8,.0f} entries/s, {appended / per_unit / elapsed:>7,.0f} "
                  f"units/s  [{status}]", flush=True)
        finally:
            drop_url(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=2000, help="entries appended per shape (default 2000)")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL)
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    print(f"append throughput, {args.units:,} entries per run, machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10_000))
        run("sqlite", lambda: f"sqlite:///{tmp}/bench-{next(counter)}.db", lambda _url: None, args.units)
    if not args.skip_pg:
        import sqlalchemy

        admin = sqlalchemy.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")

        def make_pg() -> str:
            name = f"broker_bench_{uuid.uuid4().hex[:10]}"
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            return sqlalchemy.engine.make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)

        def drop_pg(url: str) -> None:
            name = sqlalchemy.engine.make_url(url).database
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        run("postgresql", make_pg, drop_pg, args.units)
        admin.dispose()


if __name__ == "__main__":
    main()
