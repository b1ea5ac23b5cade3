"""Times are stored as instants (``timestamptz`` on PostgreSQL) and come back as the same instant whatever zone the
server or the database is set to (a review asked whether a non-UTC server would shift the log's ``at`` times)."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy

from broker.domain.records import Approval
from broker.domain.times import as_utc
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate

AT = datetime(2026, 7, 1, 12, 30, 15, tzinfo=timezone.utc)


def test_a_database_in_another_zone_stores_and_reads_the_same_instant(pg_url):
    name = sqlalchemy.engine.make_url(pg_url).database
    admin = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'ALTER DATABASE "{name}" SET timezone TO \'America/New_York\'')
    admin.dispose()
    database = Database(build_engine(pg_url))
    migrate(database.engine)
    try:
        with database.transaction() as repo:
            assert repo.session.exec(sqlalchemy.text("SHOW timezone")).one()[0] == "America/New_York"
            repo.add_approval(Approval(request_id="r-1", approver="human:bob", decision="approve",
                                       binding_digest="sha256:" + "0" * 64, reason="ok", created_at=AT))
        with database.read() as repo:
            (approval,) = repo.approvals_for("r-1")
            hour = repo.session.exec(sqlalchemy.text(
                "SELECT extract(hour FROM created_at AT TIME ZONE 'UTC') FROM approvals")).one()[0]
        assert as_utc(approval.created_at) == AT
        assert int(hour) == 12
    finally:
        database.engine.dispose()
