"""``broker serve``'s sweep catches the reviewers' cache up at start: a log that grew before the cache existed (an
upgrade to migration 0013) is added up without waiting for the next block to close (broker.storage.log_aggregates).
The dashboard's cache and the report's are filled each on its own: one failing does not stop the other."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from unittest.mock import patch

from sqlalchemy import func, select, text

from broker.cli.server import _checkpoint_loop
from broker.domain.times import parse_time
from broker.usecases.audit import REPORT_RULES
from broker.storage import log_aggregates, report_blocks
from broker.storage.log_aggregates import BLOCKS

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}


def _cached_blocks(database) -> int:
    with database.read() as repo:
        return int(repo.session.connection().execute(select(func.count()).select_from(BLOCKS)).scalar_one())


def test_the_sweep_fills_the_closed_blocks_at_start(broker):
    database = broker.container.database
    with patch.object(log_aggregates, "BLOCK", 4):
        for _ in range(4):
            assert broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201
        with database.read() as repo:
            head = max(entry["seq"] for entry in repo.query_events(filters={}, limit=10_000))
        assert head >= 8 and _cached_blocks(database) == 0  # blocks of 4,096 never closed: nothing was filled

        stop = threading.Event()
        stop.set()          # the loop's first wait ends it: what runs is what runs at start
        _checkpoint_loop(broker.container, stop)
        assert broker.container.aggregates_fill.drain(timeout=30)

        assert _cached_blocks(database) == head // 4


@contextmanager
def _blocks_of_four():
    with patch.object(log_aggregates, "BLOCK", 4), patch.object(report_blocks, "BLOCK", 4):
        yield


def _log_of_two_closed_blocks(broker) -> int:
    for _ in range(4):
        assert broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201
    with broker.container.database.read() as repo:
        head = max(entry["seq"] for entry in repo.query_events(filters={}, limit=10_000))
    assert head >= 8
    return head


def _missing_report_blocks(database) -> list[int]:
    with database.read() as repo:
        return repo.missing_report_blocks(rules=REPORT_RULES)


def _fill_and_warnings(broker, caplog) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="broker"):
        broker.container.aggregates_fill()
        assert broker.container.aggregates_fill.drain(timeout=30)
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_the_report_is_cached_when_the_dashboards_fill_fails(broker, caplog):
    """A body Python's parser cannot read (nested deeper than it goes: SQL reads it) fails the dashboard's fill at
    its block; the report's cache is filled all the same (that block without figures, read from its bodies)."""
    database = broker.container.database
    with _blocks_of_four():
        head = _log_of_two_closed_blocks(broker)
        with database.engine.begin() as connection:
            if database.is_postgres:
                connection.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER USER")
            else:
                connection.exec_driver_sql("DROP TRIGGER IF EXISTS events_no_update")
            deep = "[" * 1500 + "]" * 1500
            connection.execute(text("UPDATE events SET body = substr(body, 1, length(body) - 1) || :tail "
                                    "WHERE seq = 2"), {"tail": f',"deep":{deep}}}'})
        warnings = _fill_and_warnings(broker, caplog)
        assert _cached_blocks(database) == 0  # the dashboard's fill stopped at block 0
        assert _missing_report_blocks(database) == []
        assert [w for w in warnings if "cache of closed blocks" in w] == [
            "the dashboard's cache of closed blocks was not filled (the next sweep tries again)"]
        with database.read() as repo:
            segments = repo.report_segments(parse_time("2000-01-01T00:00:00Z"), rules=REPORT_RULES)
        assert [(after, figures is not None) for after, _, figures in segments] == [
            (0, False), *[(block * 4, True) for block in range(1, head // 4)], (head // 4 * 4, False)]


def test_the_dashboard_is_cached_when_the_reports_fill_fails(broker, caplog):
    """The report's fill failing (its counts' table refuses the write) is logged as the report's, and the
    dashboard's cache is filled."""
    database = broker.container.database
    with _blocks_of_four():
        head = _log_of_two_closed_blocks(broker)
        with database.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE log_report_counts")
        warnings = _fill_and_warnings(broker, caplog)
        assert _cached_blocks(database) == head // 4
        assert _missing_report_blocks(database) == list(range(head // 4))
        assert [w for w in warnings if "cache of closed blocks" in w] == [
            "the report's cache of closed blocks was not filled (the next sweep tries again)"]
