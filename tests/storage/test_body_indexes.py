"""The reviewers' queries filter on the stored entry body, and each filter is an index range (migration 0012):
the database plans them on the body indexes, on SQLite and PostgreSQL, instead of reading every body."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate
from broker.storage.repository import EVENT_FILTER_FIELDS
from tests.conftest import _fresh_pg_database

SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def plan(database: Database, statement) -> str:
    dialect = postgresql.dialect() if database.is_postgres else sqlite.dialect()
    compiled = statement.compile(dialect=dialect)
    values = compiled.construct_params()
    params = values if database.is_postgres else tuple(values[name] for name in compiled.positiontup)
    explain = "EXPLAIN " if database.is_postgres else "EXPLAIN QUERY PLAN "
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if database.is_postgres:
            connection.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: ask which index it can use
        return "\n".join(str(row[-1]) for row in connection.exec_driver_sql(explain + str(compiled), params))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(request, tmp_path_factory):
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('body-indexes') / 'b.db'}"
    else:  # a copy of the session's migrated database (fast), read only here
        url, drop = _fresh_pg_database(request.getfixturevalue("pg_admin_url"),
                                       template=request.getfixturevalue("pg_migrated_template"))
    engine = build_engine(url)
    migrate(engine)
    yield Database(engine)
    engine.dispose()
    if drop is not None:
        drop()


@pytest.mark.parametrize("name", sorted(EVENT_FILTER_FIELDS))
def test_each_filter_is_planned_on_its_body_index(database, name):
    field = EVENT_FILTER_FIELDS[name]
    with database.read() as repo:
        statement = repo.events_statement(filters={name: "x"}, after_seq=0, limit=100)
    assert f"ix_events_body_{field}" in plan(database, statement)


def test_a_time_window_is_planned_on_the_time_index(database):
    with database.read() as repo:
        statement = repo.events_statement(filters={}, after_seq=0, limit=100, since=SINCE,
                                          until=datetime(2026, 1, 2, tzinfo=UTC))
    assert "ix_events_body_time" in plan(database, statement)


def test_a_name_outside_the_body_fields_is_refused(database):
    with database.read() as repo, pytest.raises(ValueError):
        repo._body_field("body'); DROP TABLE events; --")


def test_a_time_window_is_exact_whatever_order_the_times_are_in(database):
    """Replicas' clocks disagree: an entry may carry an earlier time than the one before it.  The window's
    bound (its first seq, from the time index) must not drop one."""
    from broker.domain.log import log_time
    from tests.domain.test_log import make_body

    hours = [3, 1, 5, 2, 4, 6]  # entry seq n+1 at 00:00 + hours[n]
    with database.transaction() as repo:
        first = repo.log_head()[0] + 1
        for hour in hours:
            repo.append_event(make_body(90_000 + hour, time=log_time(datetime(2031, 1, 1, hour, tzinfo=UTC))))
    with database.read() as repo:
        def window(since: int, until: int | None, after: int = 0) -> list[int]:
            rows = repo.query_events(filters={}, after_seq=after, since=datetime(2031, 1, 1, since, tzinfo=UTC),
                                     until=None if until is None else datetime(2031, 1, 1, until, tzinfo=UTC))
            return [row["seq"] - first + 1 for row in rows]

        assert window(2, 5) == [1, 4, 5]            # 03:00, 02:00, 04:00
        assert window(2, 5, after=first) == [4, 5]  # paged past the first
        assert window(1, None) == [1, 2, 3, 4, 5, 6]
        assert window(6, None) == [6]
        assert window(7, None) == []


def test_an_older_entry_holding_the_nul_escape_migrates_and_is_found(pg_admin_url):
    """Entries written before sealing kept U+0000 out (a refused template name) hold the escape \\u0000, which
    JSONB refuses: the body indexes and the queries read it as \\ufffd, so the migration builds and reviewers'
    queries answer instead of failing on that row."""
    from broker.domain import log

    url, drop = _fresh_pg_database(pg_admin_url)
    engine = build_engine(url)
    try:
        migrate(engine, "0011")
        entry = {"type": "refused", "event_id": "e-1", "time": "2026-01-01T00:00:00.000000Z", "actor": "agent:demo",
                 "template": "x?y", "seq": 1, "prev_hash": log.GENESIS_HASH, "hash": "0" * 64}
        body = log.entry_line(entry).decode().replace("x?y", "x\\u0000y")  # as the older broker wrote it
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO events (seq, event_id, time, type, actor, template, body, prev_hash, hash) "
                "VALUES (1, 'e-1', '2026-01-01T00:00:00Z', 'refused', 'agent:demo', 'x', %(body)s, %(prev)s, %(hash)s)",
                {"body": body, "prev": log.GENESIS_HASH, "hash": "0" * 64})
        migrate(engine)  # 0012 builds its indexes over that row
        database = Database(engine)
        with database.read() as repo:
            found = repo.query_events(filters={"agent": "agent:demo"})
            by_template = repo.query_events(filters={"template": "x\ufffdy"})
        assert [e["event_id"] for e in found] == ["e-1"] and found[0]["template"] == "x\x00y"
        assert [e["event_id"] for e in by_template] == ["e-1"]
    finally:
        engine.dispose()
        drop()
