"""Alembic migrations build exactly the tables the models declare, on SQLite and PostgreSQL, and go down and up."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

import broker.storage.models  # noqa: F401 - registers the tables
import broker.storage.ui_oidc_flows  # noqa: F401
import broker.storage.ui_sessions  # noqa: F401
from broker.domain.log import GENESIS_HASH
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import alembic_config, migrate
from broker.storage.ui_oidc_flows import UiOidcFlowRow


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("pg_url")


# Indexes on expressions of the stored entry body (migration 0012): declared by the migration alone, since
# alembic cannot compare expression indexes (it skips them on SQLite).  tests/storage/test_body_indexes.py
# checks that the reviewers' queries use them.
BODY_INDEX_PREFIX = "ix_events_body_"


def _not_a_body_index(diff) -> bool:
    return not (diff[0] == "remove_index" and diff[1].name.startswith(BODY_INDEX_PREFIX))


def test_migrations_match_the_models_and_seed_the_log_head(empty_url):
    engine = build_engine(empty_url)
    migrate(engine)
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
        assert [diff for diff in diffs if _not_a_body_index(diff)] == []
    with Database(engine).transaction() as repo:
        assert repo.log_head() == (0, GENESIS_HASH)
    migrate(engine)  # idempotent
    engine.dispose()


def test_downgrade_to_base_and_upgrade_again(empty_url):
    engine = build_engine(empty_url)
    config = alembic_config(engine)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    with Database(engine).transaction() as repo:
        entry = repo.append_event({"event_id": "e1", "time": "2026-01-01T00:00:00.000000Z", "type": "test",
                                   "details": {}})
    assert entry["seq"] == 1 and entry["prev_hash"] == GENESIS_HASH
    engine.dispose()



def test_0007_keeps_the_flows_in_progress(empty_url):
    """Flows begun before 0007 survive it, with no client address (they count towards the total cap only)."""
    engine = build_engine(empty_url)
    config = alembic_config(engine)
    command.upgrade(config, "0006")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO ui_oidc_flows (id, browser_digest, nonce, code_verifier, next_path, created_at, expires_at) "
            "VALUES ('f1', 'b', 'n', 'v', '/ui/requests', '2030-01-01 00:00:00', '2030-01-01 00:10:00')")
    command.upgrade(config, "head")
    with Database(engine).transaction() as repo:
        rows = repo.session.exec(select(UiOidcFlowRow.id, UiOidcFlowRow.client_address)).all()
    assert [tuple(row) for row in rows] == [("f1", None)]
    engine.dispose()


def test_0016_makes_the_reports_cache_again_with_a_rules_version(empty_url):
    """0016: the report's cached blocks of 0015 (no rules version) are dropped, the tables made again with ``rules``
    first in both primary keys; down to 0015 they are made again without it."""
    from sqlalchemy import inspect

    engine = build_engine(empty_url)
    config = alembic_config(engine)
    command.upgrade(config, "0015")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO log_report_blocks (entries, block, filled_at, min_time, max_time, figures) "
            "VALUES (1024, 0, '2030-01-01 00:00:00', 'a', 'b', '{}')")
        connection.exec_driver_sql(
            "INSERT INTO log_report_counts (entries, block, facet, principal, template, name, n) "
            "VALUES (1024, 0, 'row', 'agent:a', 't', 'issued', 1)")
    command.upgrade(config, "head")
    with engine.connect() as connection:
        for table, key in (("log_report_blocks", ["rules", "entries", "block"]),
                           ("log_report_counts", ["rules", "entries", "block", "facet", "principal", "template",
                                                  "name"])):
            assert inspect(connection).get_pk_constraint(table)["constrained_columns"] == key
            assert connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one() == 0
    command.downgrade(config, "0015")
    with engine.connect() as connection:
        assert inspect(connection).get_pk_constraint("log_report_blocks")["constrained_columns"] == ["entries", "block"]
    engine.dispose()
