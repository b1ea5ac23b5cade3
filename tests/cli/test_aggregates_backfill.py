"""``broker serve``'s sweep catches the reviewers' cache up at start: a log that grew before the cache existed (an
upgrade to migration 0013) is added up without waiting for the next block to close (broker.storage.log_aggregates)."""

from __future__ import annotations

import threading
from unittest.mock import patch

from sqlalchemy import func, select

from broker.cli.server import _checkpoint_loop
from broker.storage import log_aggregates
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
