"""Benchmark: the reviewers' dashboard (/ui/review) on a large issuance log.

Run: ``python -m tests.bench.bench_dashboard [--entries 1000000] [--pg-url URL] [--sqlite-only]``.
Not a test: it prints figures.  The log is written straight into the ``events`` table in bulk
(realistic bodies over 30 days, every entry type the dashboard counts, suppressed-refusal counts
and risky grants among them) with live grants beside it; the entries are not chained, which the
dashboard never reads.  Then each dashboard part is timed for each range, and the whole page's
figures and one chart's SVG.  PostgreSQL: a throw-away database on ``--pg-url`` (default
``BROKER_TEST_PG_URL``), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.storage.engine import Database, build_engine
from broker.storage.log_aggregates import BLOCK, LogAggregates
from broker.storage.migrations import migrate
from broker.storage.models import EventRow, GrantRow
from broker.usecases.review import PARTS, RANGES, ReviewDashboard

PG_ADMIN_URL = os.environ.get("BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SPAN = timedelta(days=30)
# One request's life, and what else a busy log holds: the mix of entry types written.
MIX = ("requested", "issued", "requested", "issued", "requested", "pending", "cosigned", "cosigned", "approved",
       "redeeming", "issued", "refused", "refused", "denied", "expired", "revoked", "refused", "requested",
       "issued", "refusals_suppressed")
REASONS = ("rate_limited", "guardrail_violation", "requester_not_allowed", "invalid_parameter", "lockdown_active")


class FixedClock:
    def now(self) -> datetime:
        return NOW


def body(seq: int, entries: int) -> dict:
    kind = MIX[seq % len(MIX)]
    moment = NOW - SPAN + timedelta(seconds=SPAN.total_seconds() * seq / entries)
    request = f"req-{seq // len(MIX)}"
    details: dict = {"requester": f"agent:worker-{seq % 40}", "on_behalf_of": f"human:user{seq % 90}",
                     "ttl_seconds": 900}
    if kind == "issued":
        details.update(environment="production" if seq % 7 == 0 else "dev",
                       risks=["destructive"] if seq % 21 == 0 else [])
    if kind == "refused" and seq % 50 == 11:
        details.update(suppressed=30, suppressed_by_reason={"rate_limited": 30})
    return {"event_id": str(uuid.uuid4()), "time": issuance_log.log_time(moment), "type": kind,
            "request_id": None if kind in ("refused", "refusals_suppressed") else request,
            "grant_id": str(uuid.uuid4()), "actor": f"agent:worker-{seq % 40}" if kind not in (
                "cosigned", "approved", "denied") else f"human:approver{seq % 6}",
            "acts_for": f"human:user{seq % 90}", "template": ("s3-read-prefix", "logs-investigate",
                                                              "prod-stack-recreate")[seq % 3],
            "template_digest": "9f" * 32, "parameters": {"bucket": f"team-{seq % 30}", "prefix": f"runs/{seq}/"},
            "policy_digest": "3c" * 32, "access_key_id": f"ASIA{seq:016X}" if kind == "issued" else None,
            "expiration": None, "source_ip": "10.1.2.3", "approvals": None,
            "reason_code": REASONS[seq % len(REASONS)] if kind in ("refused", "refusals_suppressed") else None,
            "details": details, "seq": seq}


def fill(database: Database, entries: int) -> float:
    began = time.perf_counter()
    events = EventRow.__table__
    chunk = 20_000
    with database.engine.begin() as connection:
        for start in range(1, entries + 1, chunk):
            rows = []
            for seq in range(start, min(entries, start + chunk - 1) + 1):
                entry = body(seq, entries)
                rows.append({"seq": seq, "event_id": entry["event_id"],
                             "time": datetime.fromisoformat(entry["time"].replace("Z", "+00:00")),
                             "type": entry["type"], "request_id": entry["request_id"], "grant_id": entry["grant_id"],
                             "actor": entry["actor"], "acts_for": entry["acts_for"], "template": entry["template"],
                             "access_key_id": entry["access_key_id"], "body": issuance_log.canonical_json(entry).decode(),
                             "prev_hash": "0" * 64, "hash": "0" * 64})
            connection.execute(events.insert(), rows)
        grants = [{"id": str(uuid.uuid4()), "request_id": str(uuid.uuid4()), "template": ("s3-read-prefix",
                   "logs-investigate")[i % 2], "agent": f"agent:worker-{i % 40}", "acts_for": None,
                   "role_arn": "arn:aws:iam::1:role/broker-target-x", "access_key_id": f"ASIAG{i:015X}",
                   "source_identity": "agent.x", "session_name": "s", "policy_digest": "3c" * 32,
                   "environment": "dev", "issued_at": NOW - timedelta(minutes=5),
                   "expiration": NOW + timedelta(minutes=10 if i % 3 else -10)} for i in range(5000)]
        connection.execute(GrantRow.__table__.insert(), grants)
    return time.perf_counter() - began


def measure(label: str, url: str, entries: int, *, fill_it: bool = True, live: bool = False) -> None:
    database = Database(build_engine(url))
    migrate(database.engine)
    if fill_it:
        filled = fill(database, entries)
        print(f"{label}: {entries:,} entries written in {filled:.1f} s")
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE" if database.is_postgres else "ANALYZE")
    print(f"{label}: load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min); "
          + ("every figure from every entry (--live)" if live else "figures from the cache of closed blocks"))
    if not live:
        began = time.perf_counter()
        with database.read() as repo:
            filled = LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=True).fill()
        print(f"  cache: {filled} blocks of {BLOCK} seqs filled in {time.perf_counter() - began:.1f} s "
              "(once, on the first read after the upgrade; 0: filled by an earlier run)")

    def dashboard() -> ReviewDashboard:  # a fresh one each time: its few seconds' cache would hide the work
        return ReviewDashboard(database=database, clock=FixedClock(), live=live)

    reviewer = Principal(id="human:rita", roles=frozenset({Role.REVIEWER}))
    for range_name in RANGES:
        timings = []
        for part in PARTS:
            began = time.perf_counter()
            dashboard().figures(principal=reviewer, range_name=range_name, parts=[part])
            timings.append(f"{part} {1000 * (time.perf_counter() - began):6.0f} ms")
        began = time.perf_counter()
        figures = dashboard().figures(principal=reviewer, range_name=range_name)
        whole = time.perf_counter() - began
        from broker.api.ui.charts import over_time

        began = time.perf_counter()
        over_time(figures)
        drawn = time.perf_counter() - began
        print(f"  {range_name:>4}: whole page's figures {1000 * whole:6.0f} ms (issued {figures.totals['issued']:,}, "
              f"refused {sum(figures.refusals_by_reason.values()):,}); over-time chart drawn in "
              f"{1000 * drawn:.0f} ms")
        print("        " + "; ".join(timings))
    database.engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default=PG_ADMIN_URL)
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--postgres-only", action="store_true")
    parser.add_argument("--live", action="store_true",
                        help="compute every figure from every entry (as before the cache), for comparison")
    parser.add_argument("--pg-database", default=None,
                        help="keep the PostgreSQL log in this database and reuse it when it exists")
    parser.add_argument("--sqlite-file", default=None,
                        help="keep the SQLite log in this file and reuse it when it exists (filling takes minutes)")
    args = parser.parse_args(argv)
    if args.postgres_only:
        pass
    elif args.sqlite_file:
        exists = os.path.exists(args.sqlite_file)
        measure("sqlite", f"sqlite:///{args.sqlite_file}", args.entries, fill_it=not exists, live=args.live)
    else:
        with tempfile.TemporaryDirectory() as folder:
            measure("sqlite", f"sqlite:///{folder}/dashboard.db", args.entries, live=args.live)
    if args.sqlite_only:
        return
    import sqlalchemy

    name = args.pg_database or f"broker_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(name)s",
                                            {"name": name}).first() is not None
        if not exists:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        measure("postgres", sqlalchemy.engine.make_url(args.pg_url).set(database=name).render_as_string(
            hide_password=False), args.entries, fill_it=not exists, live=args.live)
    finally:
        if not args.pg_database:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
