"""Benchmark: the reviewers' tools on a large PostgreSQL log.

Seeds a fresh PostgreSQL database with ``--entries`` realistic entries (default 1,000,000) spread over
the last 30 days: a valid chain sealed by the broker's own code, a chained checkpoint every 100
entries, written with COPY.  Then, as the API runs them (``AuditLog``, the use case behind
``GET /v1/events``, ``/v1/events/correlate``, ``/v1/events/report`` and ``/v1/events/export``):

* p50/p99 of ``GET /v1/events`` filtered by agent, template, type, time window and access key id (the
  first page and a page deep in the log), and of ``correlate`` by access key id;
* ``report`` over 7 and 30 days (p50/p99, the closed blocks cached for it as ``broker serve`` keeps them,
  against the walk over every body of the window it was before);
* the streaming ``export`` of the whole log (in a child process: its peak RSS) and ``broker audit verify``
  of that export (``verify_export`` in one pass, and ``verify_export_file`` on every CPU).

The seed drops the events table's secondary indexes (the models' and migration 0012's body indexes) and
builds them after the COPY: one sorted build per index instead of ten million random inserts.

With ``--without-body-indexes`` the queries are first timed without migration 0012's indexes (a few
samples: each reads every body), then the indexes are built (timed) and the queries timed again.

With ``--database NAME`` the seeded database is kept under that name (its signing key and seed time in
the database's comment) and a later run with the same name and ``--entries`` measures it again without
seeding (ten million entries take a while to seed); ``--drop`` removes it.  ``--parts`` picks what to
measure (``queries,report,export``; export includes verify).

    .venv/bin/python -m tests.bench.bench_reviewer [--entries 1000000] [--samples 40] [--without-body-indexes]
        [--database bench10m] [--parts queries,report,export] [--walks 3] [--drop]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.domain import log
from broker.domain.principals import Principal, Role
from broker.ports import SystemClock
from broker.storage.engine import Database, build_engine
from broker.storage.export_files import available_cpus, verify_export_file
from broker.storage.migrations import migrate
from broker.usecases.audit import AuditLog
from tests.bench.bench_log import _cpu_with_children
from tests.conftest import PG_ADMIN_URL, _fresh_pg_database

AGENTS, HUMANS, TEMPLATES = 500, 200, 40
# Entry types and how often each occurs in a busy log (a request usually ends issued; refusals are common).
TYPES = (("requested", 30), ("issued", 28), ("refused", 20), ("pending", 6), ("approved", 5), ("revoked", 3),
         ("expired", 4), ("failed", 2), ("denied", 2))
CHECKPOINT_EVERY = 100
REVIEWER = Principal(id="human:rita", roles=frozenset({Role.REVIEWER}), acts_for=None, groups=frozenset())
EVENT_COLUMNS = ("seq", "event_id", "time", "type", "request_id", "grant_id", "actor", "acts_for", "template",
                 "access_key_id", "body", "prev_hash", "hash")
CHECKPOINT_COLUMNS = ("position", "seq", "head_hash", "time", "key_id", "signature", "prev_checkpoint", "hash")


def body_of(seq: int, moment: datetime, kind: str, rng: random.Random) -> dict:
    agent = rng.randrange(AGENTS)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "time": log.log_time(moment), "type": kind,
        "request_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "grant_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "actor": f"agent:worker-{agent}", "acts_for": f"human:user{agent % HUMANS}",
        "template": f"template-{agent % TEMPLATES}", "template_digest": "9f" * 32,
        "parameters": {"bucket": f"team-{agent % 30}-logs", "prefix": f"runs/{seq}/"}, "policy_digest": "3c" * 32,
        "access_key_id": f"ASIA{seq:016X}" if kind == "issued" else None,
        "expiration": log.log_time(moment + timedelta(minutes=15)) if kind == "issued" else None,
        "source_ip": "10.1.2.3", "approvals": None,
        "reason_code": "guardrail_violation" if kind == "refused" else None,
        "details": {"requester": f"agent:worker-{agent}", "ttl_seconds": 900},
    }


def seed(database: Database, count: int, signer: log.CheckpointSigner, now: datetime, *,
         body_indexes: bool = True) -> dict:
    """``count`` sealed entries over the 30 days before ``now``, with their checkpoints, by COPY.

    The events table's secondary indexes are dropped first and built after the load (timed); migration
    0012's body indexes too unless ``body_indexes`` is False (then ``span["body_indexes"]`` builds them)."""
    rng = random.Random(21)
    kinds = [kind for kind, weight in TYPES for _ in range(weight)]
    start = now - timedelta(days=30)
    step = timedelta(days=30) / count
    prev_hash, checkpoint, position = log.GENESIS_HASH, None, 0
    raw = database.engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()
        cursor.execute("SET statement_timeout = 0")  # a bulk load, not a request
        indexes = _secondary_indexes(cursor, "events")
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        began = time.perf_counter()
        with cursor.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as events_copy:
            checkpoints = []
            for seq in range(1, count + 1):
                moment = start + step * seq
                entry = log.seal_entry(body_of(seq, moment, rng.choice(kinds), rng), seq=seq, prev_hash=prev_hash)
                prev_hash = entry["hash"]
                events_copy.write_row((seq, entry["event_id"], moment, entry["type"], entry["request_id"],
                                       entry["grant_id"], entry["actor"], entry["acts_for"], entry["template"],
                                       entry["access_key_id"], log.entry_line(entry).decode(), entry["prev_hash"],
                                       entry["hash"]))
                if seq % CHECKPOINT_EVERY == 0 or seq == count:
                    checkpoint = signer.sign(seq, prev_hash, log.log_time(moment),
                                             prev_checkpoint=checkpoint.hash() if checkpoint else log.GENESIS_HASH)
                    position += 1
                    checkpoints.append((position, seq, checkpoint.head_hash, checkpoint.time, checkpoint.key_id,
                                        checkpoint.signature, checkpoint.prev_checkpoint, checkpoint.hash()))
        with cursor.copy(f"COPY checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) FROM STDIN") as checkpoints_copy:
            for row in checkpoints:
                checkpoints_copy.write_row(row)
        cursor.execute("UPDATE log_head SET seq = %s, hash = %s WHERE id = 1", (count, prev_hash))
        raw.driver_connection.commit()
        print(f"  COPY of the entries and checkpoints (sealed and signed here): {time.perf_counter() - began:.0f} s")
        body = [(name, sql) for name, sql in indexes if name.startswith("ix_events_body_")]
        _build_indexes(cursor, [(name, sql) for name, sql in indexes if (name, sql) not in body], "the models' indexes")
        if body_indexes:
            _build_indexes(cursor, body, "the body indexes of migration 0012")
        raw.driver_connection.commit()
        raw.driver_connection.autocommit = True
        began = time.perf_counter()
        cursor.execute("VACUUM ANALYZE events")
        cursor.execute("VACUUM ANALYZE checkpoints")
        print(f"  VACUUM ANALYZE: {time.perf_counter() - began:.0f} s")
        raw.driver_connection.autocommit = False
    finally:
        raw.close()
    return {"start": start, "now": now, "body_indexes": body}


def _secondary_indexes(cursor, table: str) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of ``table``'s indexes that back no constraint."""
    cursor.execute("SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                   "WHERE i.indrelid = %s::regclass AND NOT EXISTS "
                   "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1", (table,))
    return [(name.strip('"'), sql) for name, sql in cursor.fetchall()]


def _build_indexes(cursor, indexes: list[tuple[str, str]], what: str) -> float:
    began = time.perf_counter()
    cursor.execute("SET maintenance_work_mem = '1GB'")
    for _, sql in indexes:
        cursor.execute(sql)
    cursor.connection.commit()
    seconds = time.perf_counter() - began
    print(f"  {what} ({len(indexes)}) built in {seconds:.0f} s")
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed(samples: int, call) -> list[float]:
    times = []
    for n in range(samples):
        began = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - began) * 1000)
    return times


def query_figures(audit: AuditLog, count: int, samples: int, span: dict) -> None:
    rng = random.Random(16)
    now, start = span["now"], span["start"]

    def query(filters=None, after_seq=0, since=None, until=None):
        return audit.query(principal=REVIEWER, filters=filters or {}, after_seq=after_seq, limit=100, since=since,
                           until=until)

    def window(hours: float):
        def run(_n):
            begin = start + (now - start - timedelta(hours=hours)) * rng.random()
            query(since=begin, until=begin + timedelta(hours=hours))
        return run

    def issued_key(_n):
        seq = rng.randrange(1, count + 1)
        return f"ASIA{seq:016X}"

    cases = {
        "agent, first page": lambda n: query({"agent": f"agent:worker-{rng.randrange(AGENTS)}"}),
        "agent, deep page": lambda n: query({"agent": f"agent:worker-{rng.randrange(AGENTS)}"},
                                            after_seq=rng.randrange(count)),
        "template": lambda n: query({"template": f"template-{rng.randrange(TEMPLATES)}"},
                                    after_seq=rng.randrange(count)),
        "type (revoked)": lambda n: query({"type": "revoked"}, after_seq=rng.randrange(count)),
        "human": lambda n: query({"human": f"human:user{rng.randrange(HUMANS)}"}, after_seq=rng.randrange(count)),
        "time window 1 h": window(1),
        "time window 24 h": window(24),
        "agent + 24 h": lambda n: query({"agent": f"agent:worker-{rng.randrange(AGENTS)}"},
                                        since=now - timedelta(hours=24)),
        "access key id": lambda n: query({"access_key_id": issued_key(n)}),
        "correlate (access key id)": lambda n: _correlate(audit, issued_key(n)),
    }
    print(f"  {'query (limit 100)':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}   ({samples} samples each)")
    for name, call in cases.items():
        times = timed(samples, call)
        print(f"  {name:28s} {percentile(times, .5):8.1f} {percentile(times, .99):8.1f} {max(times):8.1f}")


def _correlate(audit: AuditLog, access_key_id: str) -> None:
    from broker.errors import NotFound

    try:
        audit.correlate(principal=REVIEWER, access_key_id=access_key_id)
    except NotFound:
        pass  # a seq that was not an issued entry


def report_figures(audit: AuditLog, span: dict, samples: int, walks: int) -> None:
    """The report over 7 and 30 days: first the closed blocks cached for it as ``broker serve`` keeps them (the
    dashboard's and the report's, broker.runtime.container's fill; timed when they were not yet), then ``samples``
    reports per window, interleaved with ``walks`` runs of the walk over every body of the window as the report
    was before the cache (tests/storage/test_report_blocks.py's reference, the same JSON checked byte for byte)."""
    from broker.storage.log_aggregates import fill_log_aggregates
    from tests.storage.test_report_blocks import reference_report

    began, cpu = time.perf_counter(), time.process_time()
    filled = fill_log_aggregates(audit.database), audit.fill_report_blocks()
    if any(filled):
        print(f"  filled {filled[0]} dashboard and {filled[1]} report blocks in {time.perf_counter() - began:.0f} s "
              f"({time.process_time() - cpu:.0f} s CPU here); load average {os.getloadavg()[0]:.1f}")
        with audit.database.engine.connect() as connection:  # what autovacuum does after the fill's inserts
            connection.exec_driver_sql("ANALYZE log_report_blocks, log_report_counts, log_aggregates")
            connection.commit()
    print(f"  {'report':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'CPU ms':>8s}   "
          f"(p50; {samples} samples each, the walk {walks})")
    for days in (7, 30):
        since = span["now"] - timedelta(days=days)
        times: dict[str, list[float]] = {"cached": [], "walk": []}
        cpus: dict[str, list[float]] = {"cached": [], "walk": []}
        outputs = {}
        every = max(1, samples // max(walks, 1))
        for n in range(samples):
            runs = [("cached", lambda: audit.report(principal=REVIEWER, since=since))]
            if walks and n % every == 0 and len(times["walk"]) < walks:
                runs.append(("walk", lambda: reference_report(audit.database, since)))
            for name, call in runs:
                began, cpu = time.perf_counter(), time.process_time()
                outputs[name] = call()
                times[name].append((time.perf_counter() - began) * 1000)
                cpus[name].append((time.process_time() - cpu) * 1000)
        for name in ("cached", "walk"):
            if times[name]:
                print(f"  {f'{days} days, {name}':28s} {percentile(times[name], .5):8.0f} "
                      f"{percentile(times[name], .99):8.0f} {max(times[name]):8.0f} "
                      f"{percentile(cpus[name], .5):8.0f}")
        if "walk" in outputs:
            assert json.dumps(outputs["cached"]) == json.dumps(outputs["walk"]), "the report is not the walk's"
        report = outputs["cached"]
        print(f"    ({len(report['refusals']):,} refusals listed, {len(report['by_agent_and_template']):,} rows; "
              f"load average {os.getloadavg()[0]:.1f})")


EXPORT_CHILD = r"""
import resource, sys, time
from broker.domain import log
from broker.ports import SystemClock
from broker.storage.engine import Database, build_engine
from broker.usecases.audit import AuditLog
from tests.bench.bench_reviewer import REVIEWER
url, key_file, out = sys.argv[1:4]
signer = log.CheckpointSigner(log.load_signing_key(open(key_file, "rb").read()))
audit = AuditLog(database=Database(build_engine(url)), signer=signer, clock=SystemClock())
began = time.perf_counter()
with open(out, "wb", buffering=1 << 20) as sink:
    for line in audit.export(principal=REVIEWER):
        sink.write(line)
print(time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def export_and_verify(url: str, key, signer: log.CheckpointSigner, count: int, folder: Path) -> None:
    key_file, out = folder / "signing.pem", folder / "export.jsonl"
    key_file.write_bytes(log.private_key_pem(key))
    done = subprocess.run([sys.executable, "-c", EXPORT_CHILD, url, str(key_file), str(out)], capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    seconds, peak_kib = done.stdout.split()
    size = out.stat().st_size
    print(f"  export (streamed, whole log): {count / float(seconds):9,.0f} entries/s ({float(seconds):.1f} s, "
          f"{size / 1e6:,.0f} MB); peak RSS of the exporting process {int(peak_kib) / 1024:,.0f} MiB")
    with open(out, "rb") as export:
        began, cpu = time.perf_counter(), time.process_time()
        report = log.verify_export(export, signer.public_key)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert report.ok and report.entries == count, report.message
    print(f"  verify the export, one pass: {count / seconds:9,.0f} entries/s wall ({seconds:.1f} s; {count / cpu:,.0f} "
          f"entries/s of CPU), load average {os.getloadavg()[0]:.1f}")
    began, cpu = time.perf_counter(), _cpu_with_children()
    again = verify_export_file(out, signer.public_key)
    seconds, cpu = time.perf_counter() - began, _cpu_with_children() - cpu
    assert again == report, again.message
    print(f"  verify the export, {available_cpus()} CPU(s) (broker audit verify): {count / seconds:9,.0f} entries/s wall "
          f"({seconds:.1f} s, {report.checkpoints:,} checkpoints); {cpu:.1f} s CPU in all its processes, so "
          f"{count / cpu * available_cpus():,.0f} entries/s on {available_cpus()} idle CPUs; load average "
          f"{os.getloadavg()[0]:.1f}")


def build_body_indexes(database: Database, indexes: list[tuple[str, str]]) -> None:
    raw = database.engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()
        cursor.execute("SET statement_timeout = 0")
        _build_indexes(cursor, indexes, "the body indexes of migration 0012")
        raw.driver_connection.autocommit = True
        cursor.execute("ANALYZE events")
    finally:
        raw.close()


def kept_database(name: str, entries: int) -> tuple[str, dict | None]:
    """The URL of the database ``name`` (created when missing) and what its comment says was seeded in it,
    or None when it holds no seeded log of ``entries`` entries (then it is emptied)."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            comment = connection.exec_driver_sql(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)).first()
            seeded = json.loads(comment[0]) if comment and comment[0] else None
            if seeded is None or seeded["entries"] != entries:
                if comment:
                    print(f"-- database {name} holds no seeded log of {entries:,} entries: made again")
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
                seeded = None
    finally:
        admin.dispose()
    return sqlalchemy.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), seeded


def drop_database(name: str) -> None:
    import sqlalchemy

    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--walks", type=int, default=3,
                        help="runs of the report's walk over every body (as before its cache), among the samples")
    parser.add_argument("--without-body-indexes", action="store_true",
                        help="time the queries without migration 0012's indexes first (a fresh seed only)")
    parser.add_argument("--database", help="keep the seeded database under this name, and reuse it when it "
                                           "holds --entries entries")
    parser.add_argument("--parts", default="queries,report,export",
                        help="what to measure, of queries, report and export (export includes verify)")
    parser.add_argument("--drop", action="store_true", help="drop the --database named and stop")
    parser.add_argument("--report-only", action="store_true", help="time only the report (7 and 30 days): --parts report")
    args = parser.parse_args()
    parts = {"report"} if args.report_only else set(filter(None, args.parts.split(",")))
    if not parts <= {"queries", "report", "export"}:
        parser.error(f"--parts: unknown {sorted(parts - {'queries', 'report', 'export'})}")
    if args.drop:
        if args.database:
            drop_database(args.database)
        return
    if args.database:
        url, seeded = kept_database(args.database, args.entries)

        def drop() -> None:
            """Kept for the next run."""
    else:
        (url, drop), seeded = _fresh_pg_database(PG_ADMIN_URL), None
    database = Database(build_engine(url))
    try:
        print(f"== {args.entries:,} entries over 30 days in PostgreSQL, a checkpoint every {CHECKPOINT_EVERY}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if seeded is None:
            migrate(database.engine)
            key = log.generate_signing_key()
            began, cpu = time.perf_counter(), time.process_time()
            span = seed(database, args.entries, log.CheckpointSigner(key), datetime.now(UTC),
                        body_indexes=not args.without_body_indexes)
            seeded_in = time.perf_counter() - began
            print(f"  seeded (sealed by the broker's code, COPY, indexes built after it, VACUUM ANALYZE) in "
                  f"{seeded_in:.0f} s ({args.entries / seeded_in:,.0f} entries/s; {time.process_time() - cpu:.0f} s "
                  f"CPU here); load average {os.getloadavg()[0]:.1f}")
            if args.database:
                with database.engine.connect() as connection:
                    note = json.dumps({"entries": args.entries, "now": span["now"].isoformat(),
                                       "key": log.private_key_pem(key).decode()})
                    connection.exec_driver_sql(f'COMMENT ON DATABASE "{args.database}" IS '
                                               f"'{note}'")  # JSON of known characters, no quote in it
                    connection.commit()
        else:
            began = time.perf_counter()
            migrate(database.engine)  # what the branch adds since the seed (a summary table is built here)
            print(f"  migrations to the head: {time.perf_counter() - began:.0f} s")
            key = log.load_signing_key(seeded["key"].encode())
            now = datetime.fromisoformat(seeded["now"])
            span = {"start": now - timedelta(days=30), "now": now, "body_indexes": []}
            print(f"  (seeded earlier, at {seeded['now']}: database {args.database} reused)")
        signer = log.CheckpointSigner(key)
        audit = AuditLog(database=database, signer=signer, clock=SystemClock())
        if args.without_body_indexes and span["body_indexes"]:
            print("-- without the body indexes (migration 0012)")
            query_figures(audit, args.entries, min(args.samples, 3), span)
            build_body_indexes(database, span["body_indexes"])
        with database.engine.connect() as connection:
            size = connection.exec_driver_sql("SELECT pg_total_relation_size('events')").scalar_one()
            whole = connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        print(f"  events table with all its indexes: {size / 1e9:.2f} GB (the database: {whole / 1e9:.2f} GB)")
        if "queries" in parts:
            query_figures(audit, args.entries, args.samples, span)
        print(f"  load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
        if "report" in parts:
            report_figures(audit, span, args.samples, args.walks)
        if "export" in parts:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_EXPORT_DIR")) as folder:
                export_and_verify(url, key, signer, args.entries, Path(folder))
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; peak RSS of this process "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    finally:
        database.engine.dispose()
        drop()


if __name__ == "__main__":
    main()
