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
    sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN " if database.is_postgres else "EXPLAIN QUERY PLAN "
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if database.is_postgres:
            connection.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: ask which index it can use
        return "\n".join(str(row[-1]) for row in connection.exec_driver_sql(explain + sql))


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
