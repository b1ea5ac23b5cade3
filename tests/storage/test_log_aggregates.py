"""The cache of the log's aggregates (broker.storage.log_aggregates) answers exactly what the live queries
(broker.storage.log_figures) compute from every entry: random logs whose times do not follow their seqs,
windows whose edges fall mid-hour, some blocks cached and some not, an open tail; on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
import json
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, text

from broker.domain import log as issuance_log
from broker.domain.events import CARRYING_TYPES, REFUSAL_TYPES
from broker.domain.times import Bucketing, log_time, parse_time
from broker.storage import log_aggregates
from broker.storage.body_fields import BODY_FIELDS
from broker.storage.engine import Database, build_engine
from broker.storage.log_aggregates import AGGREGATES, BLOCKS, LogAggregates
from broker.storage.migrations import migrate
from broker.storage.models import EventRow
from broker.storage.repository import EVENT_FILTER_FIELDS
from broker.usecases.review import OUTCOME_TYPES, REVOCATION_TYPES
from tests.conftest import _fresh_pg_database

EVENTS = EventRow.__table__
BASE = datetime(2026, 11, 1, tzinfo=UTC)
SPAN_SECONDS = 60 * 3600  # windows longer than two days too: the figures then read counts by day
TYPES = ("requested", "pending", "approved", "cosigned", "issued", "refused", "refusals_suppressed",
         "refusals_suppressed_summary", "denied", "expired", "revoked", "lockdown", "templates_loaded")
REASONS = (None, "rate_limited", "guardrail_violation", "lockdown_active")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(request, tmp_path_factory):
    yield from throwaway_log(request, tmp_path_factory)


def throwaway_log(request, tmp_path_factory):
    """A migrated database on SQLite or PostgreSQL (``request.param``) whose log may be emptied and edited."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('aggregates') / 'a.db'}"
    else:
        url, drop = _fresh_pg_database(request.getfixturevalue("pg_admin_url"),
                                       template=request.getfixturevalue("pg_migrated_template"))
    engine = build_engine(url)
    migrate(engine)
    with engine.begin() as connection:  # a throw-away log: emptied between examples
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("DROP TRIGGER events_insert_only ON events")
        else:
            connection.exec_driver_sql("DROP TRIGGER events_no_delete")
    yield Database(engine)
    engine.dispose()
    if drop is not None:
        drop()


HOUR_US = 3600 * 1_000_000


def moments(low: int, high: int) -> st.SearchStrategy[int]:
    """Microseconds in [low, high], often on an hour's bound or next to one (where a window's edges cut)."""
    near_bounds = st.builds(lambda hour, step: hour * HOUR_US + step, st.integers(low // HOUR_US, high // HOUR_US),
                            st.sampled_from([-1, 0, 1]))
    return st.one_of(st.integers(low, high), near_bounds.filter(lambda value: low <= value <= high))


entry_strategy = st.fixed_dictionaries({
    "type": st.sampled_from(TYPES),
    "offset": moments(0, SPAN_SECONDS * 1_000_000),
    "request": st.integers(0, 5),
    "reason": st.sampled_from(REASONS),
    "risks": st.sampled_from([None, [], ["destructive"], ["permission_changing"], ["destructive", "x"], "absent"]),
    "environment": st.sampled_from(["dev", "production", None]),
    "suppressed": st.sampled_from([None, None, None, 3, 0]),
})


def _body(seq: int, spec: dict) -> dict:
    kind = spec["type"]
    details: dict = {"requester": "agent:a"}
    if spec["risks"] != "absent":
        details["risks"] = spec["risks"]
    if spec["environment"] is not None:
        details["environment"] = spec["environment"]
    if spec["suppressed"] is not None:
        details["suppressed"] = spec["suppressed"]
        details["suppressed_by_reason"] = {"rate_limited": spec["suppressed"]}
    return {"event_id": str(uuid.uuid4()), "seq": seq, "type": kind,
            "time": log_time(BASE + timedelta(microseconds=spec["offset"])),
            "request_id": f"req-{spec['request']}" if spec["request"] else None, "actor": "agent:a",
            "acts_for": None, "template": "t", "grant_id": None, "access_key_id": None,
            "reason_code": spec["reason"], "details": details}


def append(database: Database, specs: list[dict]) -> None:
    with database.engine.begin() as connection:
        head = connection.execute(select(func.max(EVENTS.c.seq))).scalar_one_or_none() or 0
        rows = []
        for seq, spec in enumerate(specs, start=head + 1):
            entry = _body(seq, spec)
            rows.append({"seq": seq, "event_id": entry["event_id"], "time": parse_time(entry["time"]),
                         "type": entry["type"], "request_id": entry["request_id"], "grant_id": None,
                         "actor": entry["actor"], "acts_for": None, "template": entry["template"],
                         "access_key_id": None, "body": issuance_log.canonical_json(entry).decode(),
                         "prev_hash": "0" * 64, "hash": "0" * 64})
        if rows:
            connection.execute(EVENTS.insert(), rows)


def empty(database: Database) -> None:
    with database.engine.begin() as connection:
        for table in (AGGREGATES, BLOCKS, EVENTS):
            connection.execute(delete(table))


def figures(queries, since: datetime, until: datetime) -> dict:
    refusals = {unit: queries.refusal_figures(refusal_types=REFUSAL_TYPES, carrying_types=CARRYING_TYPES,
                                              since=since, until=until, bucketing=Bucketing(unit))
                for unit in ("hour", "day")}
    return {
        "by_hour": sorted(queries.counts_over_time(types=OUTCOME_TYPES, since=since, until=until,
                                                   bucketing=Bucketing("hour"))),
        "by_day": sorted(queries.counts_over_time(types=OUTCOME_TYPES, since=since, until=until,
                                                  bucketing=Bucketing("day"))),
        "by_type": queries.counts_by_type(types=REVOCATION_TYPES, since=since, until=until),
        "refusals": refusals,
        "waits": queries.time_to_approve(since=since, until=until),
        "risky": queries.risky_grants(since=since, until=until, limit=3),
    }


@contextmanager
def blocks_of(size: int):
    with patch.object(log_aggregates, "BLOCK", size):
        yield


def compare(database: Database, since: datetime, until: datetime) -> dict:
    with database.read() as repo:
        live = figures(repo.log_figures(live=True), since, until)
    with database.read() as repo:
        cached = figures(repo.log_figures(), since, until)
    assert cached == live
    return live


window = st.tuples(moments(-HOUR_US, SPAN_SECONDS * 1_000_000 + HOUR_US), moments(0, SPAN_SECONDS * 1_000_000 + 2 * HOUR_US))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(first=st.lists(entry_strategy, min_size=5, max_size=80), more=st.lists(entry_strategy, max_size=30),
       block=st.sampled_from([1, 4, 7, 16]), cached_first=st.integers(0, 20), windows=st.lists(window, min_size=1,
                                                                                                max_size=3))
def test_cached_figures_are_the_live_ones(database, first, more, block, cached_first, windows):
    empty(database)
    with blocks_of(block):
        append(database, first)
        with database.read() as repo:  # some blocks cached beforehand, the others on the first read
            LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=True).fill(
                limit=cached_first)
        everything = (-HOUR_US - 1, SPAN_SECONDS * 1_000_000 + 2 * HOUR_US + 3)
        for start, length in [*windows, everything]:
            since = BASE + timedelta(microseconds=start)
            compare(database, since, since + timedelta(microseconds=length))
        append(database, more)  # blocks close after some were cached: the cache stays right
        for start, length in [*windows, everything]:
            since = BASE + timedelta(microseconds=start)
            compare(database, since, since + timedelta(microseconds=length))
        note(f"figures over the whole log: {compare(database, BASE - timedelta(hours=1), BASE + timedelta(days=2))}")


def test_a_block_filled_twice_is_counted_once(database):
    empty(database)
    specs = [{"type": "issued", "offset": i * 60_000_000, "request": 1, "reason": None, "risks": ["destructive"],
              "environment": "production", "suppressed": None} for i in range(10)]
    with blocks_of(4):
        append(database, specs)
        since, until = BASE - timedelta(hours=1), BASE + timedelta(hours=2)
        with database.read() as repo:
            aggregates = LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=True)
            tallies = [aggregates.block_tally(block) for block in range(2)]
            assert aggregates.fill() == 2
            for block, figures_of_block in enumerate(tallies):  # a second filler, as another replica would
                aggregates._save(block, figures_of_block)
            assert aggregates.fill() == 0
        with database.engine.connect() as connection:
            assert connection.execute(select(func.sum(AGGREGATES.c.n)).where(
                AGGREGATES.c.facet == "count")).scalar_one() == 8
        live = compare(database, since, until)
        assert live["risky"][0] == 10 and live["by_day"] == [("2026-11-01", "issued", 10)]


def test_a_missing_block_is_computed_not_assumed_empty(database):
    empty(database)
    specs = [{"type": "refused", "offset": i * 1_000_000, "request": 0, "reason": "rate_limited", "risks": None,
              "environment": None, "suppressed": None} for i in range(9)]
    with blocks_of(4):
        append(database, specs)
        with database.read() as repo:  # as a replica that cannot write would read it: nothing cached
            aggregates = LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=False)
            counted = aggregates.window(since=BASE - timedelta(hours=2), until=BASE + timedelta(hours=2))
        assert sum(n for key, n in counted.items() if key[1] == "count") == 9
        with database.engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(BLOCKS)).scalar_one() == 0


def test_the_body_fields_are_the_reviewers_filters_and_time():
    assert BODY_FIELDS == {*EVENT_FILTER_FIELDS.values(), "time"}


def test_stored_rows_are_json_free_figures(database):
    """What the cache holds is counts and values, never an entry's text beyond its type and reason code."""
    empty(database)
    with blocks_of(2):
        append(database, [{"type": "refused", "offset": 0, "request": 0, "reason": "rate_limited", "risks": None,
                           "environment": None, "suppressed": 3}] * 2)
        compare(database, BASE - timedelta(hours=1), BASE + timedelta(hours=1))
    with database.engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(select(AGGREGATES))]
    assert {(row["facet"], row["type"], row["key"]) for row in rows} == {
        ("count", "refused", "rate_limited"), ("carried", "refused", "rate_limited")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(log=st.lists(entry_strategy, min_size=1, max_size=60), start=moments(-HOUR_US, SPAN_SECONDS * 1_000_000))
def test_the_report_starts_at_the_windows_first_entry_and_misses_none(database, log, start):
    """``broker audit report`` walks the log from the first seq in its window (the time index), not from seq 1:
    the same report as every entry with a time in the window, read in seq order, whatever the times' order."""
    from broker.domain.principals import Principal, Role
    from broker.ports import SystemClock
    from broker.usecases.audit import AuditLog, ReportTally

    empty(database)
    append(database, log)
    since = BASE + timedelta(microseconds=start)
    expected = ReportTally()
    with database.engine.connect() as connection:
        for (body,) in connection.execute(select(EVENTS.c.body).order_by(EVENTS.c.seq)):
            entry = json.loads(body)
            if entry["time"] >= log_time(since):
                expected.add(entry)
    audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
    report = audit.report(principal=Principal(id="human:rita", roles=frozenset({Role.REVIEWER})), since=since)
    assert report == {"since": log_time(since), **expected.view()}


def _fill_blocks(database: Database, blocks: set[int]) -> None:
    """Cache exactly these closed blocks (any of them, not only a prefix), as a fill would."""
    with database.read() as repo:
        aggregates = LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=True)
        for block in sorted(blocks):
            if block < aggregates.closed_blocks():
                aggregates._save(block, aggregates.block_tally(block))


def _plain_window(database: Database, *, kind: str | None, after: int, limit: int, since: datetime | None,
                  until: datetime | None) -> list[int]:
    """The seqs of the window's page from every entry, in seq order (what the reviewers' query must answer)."""
    seqs = []
    with database.engine.connect() as connection:
        for seq, body in connection.execute(select(EVENTS.c.seq, EVENTS.c.body).order_by(EVENTS.c.seq)):
            entry = json.loads(body)
            if (seq > after and (kind is None or entry["type"] == kind)
                    and (since is None or entry["time"] >= log_time(since))
                    and (until is None or entry["time"] < log_time(until))):
                seqs.append(seq)
    return seqs[:limit]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(log=st.lists(entry_strategy, min_size=1, max_size=70), block=st.sampled_from([1, 3, 4, 16]),
       cached=st.one_of(st.sampled_from(["all", "even", "odd"]), st.lists(st.booleans(), max_size=70)), start=moments(-HOUR_US, SPAN_SECONDS * 1_000_000 + HOUR_US),
       length=st.one_of(st.none(), moments(0, SPAN_SECONDS * 1_000_000)), open_start=st.booleans(),
       kind=st.sampled_from([None, None, "issued", "refused"]), after=st.integers(0, 75),
       limit=st.sampled_from([1, 2, 5, 100]))
def test_time_windows_skip_cached_blocks_exactly(database, log, block, cached, start, length, open_start, kind, after,
                                                 limit):
    """GET /v1/events' time windows skip the cached blocks whose time bounds keep the window out: the same page
    as every entry read in seq order, and as the query without the cache, whatever order the times are in,
    whichever blocks are cached (not only a prefix), windows cut mid-hour, open on either side, filtered or not,
    paged; and the report's first seq is the window's first."""
    empty(database)
    since = None if open_start and length is not None else BASE + timedelta(microseconds=start)
    until = None if length is None else BASE + timedelta(microseconds=start + length)
    filters = {"type": kind}
    with blocks_of(block):
        append(database, log)
        pattern = {"all": [True] * 71, "even": [True, False] * 36, "odd": [False, True] * 36}
        flags = pattern[cached] if isinstance(cached, str) else cached
        _fill_blocks(database, {n for n, filled in enumerate(flags) if filled})
        expected = _plain_window(database, kind=kind, after=after, limit=limit, since=since, until=until)
        with database.read() as repo:
            runs = repo._window_runs(after, since, until)
            note(f"runs {runs}")
            found = [e["seq"] for e in repo.query_events(filters=filters, after_seq=after, limit=limit, since=since,
                                                          until=until)]
            uncached = repo.events_statement(filters=filters, after_seq=after, limit=limit, since=since, until=until)
            assert found == expected == [json.loads(row.body)["seq"]
                                         for row in repo.session.connection().execute(uncached)]
            if since is not None:
                firsts = _plain_window(database, kind=None, after=0, limit=1, since=since, until=None)
                assert repo.first_seq_since(since) == (firsts[0] if firsts else None)


def test_a_window_reads_only_the_blocks_its_times_may_be_in(database):
    """The cache is what bounds the window: with every closed block cached, a window inside one block's times
    keeps that block and the open tail only (a block not cached is always kept)."""
    empty(database)
    specs = [{"type": "issued", "offset": i * 600_000_000, "request": 0, "reason": None, "risks": None,
              "environment": None, "suppressed": None} for i in range(14)]  # every 10 minutes, in seq order
    with blocks_of(4):
        append(database, specs)  # blocks 0, 1, 2 closed; seqs 13, 14 the tail
        since, until = BASE + timedelta(minutes=45), BASE + timedelta(minutes=65)  # seqs 6 and 7: block 1
        with database.read() as repo:
            assert repo._window_runs(0, since, until) == [(0, None, False, None)]  # nothing cached: everything
        _fill_blocks(database, {0, 2})
        with database.read() as repo:
            assert repo._window_runs(0, since, until) == [(4, 8, False, None), (12, None, False, None)]
        _fill_blocks(database, {1})
        with database.read() as repo:
            assert repo._window_runs(0, since, until) == [(4, 8, True, log_time(BASE + timedelta(minutes=70))), (12, None, False, None)]
            assert repo._window_runs(5, since, None) == [(5, 12, True, log_time(BASE + timedelta(minutes=70))), (12, None, False, None)]
            assert [e["seq"] for e in repo.query_events(filters={}, since=since, until=until)] == [6, 7]
            assert repo.first_seq_since(since) == 6
            assert repo._window_runs(0, BASE + timedelta(hours=3), None) == [(12, None, False, None)]
            assert repo.first_seq_since(BASE + timedelta(hours=3)) is None


@pytest.mark.parametrize("number", [7, 3e30, -5, 2.5, True])
def test_a_window_does_not_skip_a_block_whose_least_time_is_a_number(database, number):
    """A (tampered) body whose time is a JSON number: SQLite's body time is then that number, less than every text,
    so a window with an ``until`` holds the entry; the block's least time is stored as its text ('7', which is past
    any log time as a text): a window with an ``until`` must not skip the block for it (it did).  PostgreSQL reads
    the time as a text ('7'), in the bounds and in the window alike."""
    empty(database)
    specs = [{"type": "issued", "offset": i * 600_000_000, "request": 0, "reason": None, "risks": None,
              "environment": None, "suppressed": None} for i in range(6)]
    with blocks_of(4):
        append(database, specs)  # block 0 (seqs 1-4) closed, seqs 5-6 the tail
        with database.engine.begin() as connection:
            if not database.is_postgres:
                connection.exec_driver_sql("DROP TRIGGER IF EXISTS events_no_update")
            connection.execute(EVENTS.update().where(EVENTS.c.seq == 2).values(
                body=func.replace(EVENTS.c.body, log_time(BASE + timedelta(minutes=10)), "X")))
            connection.execute(text(f"""UPDATE events SET body = REPLACE(body, '"X"', '{json.dumps(number)}')
                                        WHERE seq = 2"""))
        _fill_blocks(database, {0})
        for since, until in ((None, BASE + timedelta(hours=1)), (BASE - timedelta(hours=1), BASE + timedelta(hours=1)),
                             (BASE + timedelta(minutes=5), None)):
            with database.read() as repo:
                found = [e["seq"] for e in repo.query_events(filters={}, since=since, until=until)]
                walked = [json.loads(row.body)["seq"] for row in repo.session.connection().execute(
                    repo.events_statement(filters={}, after_seq=0, limit=100, since=since, until=until))]
                assert found == walked, (since, until)
                if since is not None:
                    assert repo.first_seq_since(since) == (walked[0] if walked else None)
        if not database.is_postgres:  # the numeric time is in every SQLite window with an until, never with a since
            with database.read() as repo:
                assert [e["seq"] for e in repo.query_events(filters={}, until=BASE + timedelta(hours=1))] == \
                    [1, 2, 3, 4, 5, 6]
