"""Every class of 503 leaves its cause in the broker's operational log, at least once a minute (issue 22, 6).

The drill: PostgreSQL down gave 11,935 503s and 26 log lines, none naming the error."""

from __future__ import annotations

import logging
import re

from broker.errors import StorageUnavailable, StsUnavailable
from broker.runtime.oplog import OutageLog
from tests.conftest import TEST_SCOPES, build_harness
from tests.faults.conftest import cut_database
from tests.revocation.conftest import S3_REQUEST


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _outage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "broker.outage"]


def test_postgres_down_names_its_cause_once_a_minute(pg_admin_url, pg_migrated_url, moto_server, tmp_path, caplog):
    broker = build_harness(db_url=pg_migrated_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state")
    ticks = Ticks()
    broker.container.outages = OutageLog(monotonic=ticks)
    caplog.set_level(logging.WARNING, logger="broker")
    cut_database(pg_admin_url, pg_migrated_url, allow=False)
    try:
        for _ in range(5):
            assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 503
        assert broker.client.get("/readyz").status_code == 503
        lines = _outage_lines(caplog)
        assert len(lines) == 1, lines                              # the first one at once, the rest counted
        assert "503 storage_unavailable at POST /v1/requests" in lines[0]
        # The driver's own words: the connection was terminated, or new ones are refused.
        assert re.search(r"cause: (AdminShutdown|OperationalError): (terminating|.*not currently accepting)", lines[0])
        ticks.now += 61                                           # a minute on: said again, with the count
        assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 503
        lines = _outage_lines(caplog)
        assert len(lines) == 2 and "(+5 more since the last line)" in lines[1]
    finally:
        cut_database(pg_admin_url, pg_migrated_url, allow=True)
    assert "password" not in caplog.text.lower()
    broker.container.database.engine.dispose()


def test_each_503_class_is_logged_on_its_own(caplog):
    """A storage outage's lines do not hide an STS outage's: the interval is per error code."""
    log = OutageLog(monotonic=Ticks())
    caplog.set_level(logging.WARNING, logger="broker")
    for error in (StorageUnavailable("db"), StsUnavailable("sts"), StorageUnavailable("db")):
        log.unavailable(error, code=error.code, where="test")
    assert [line.split(" at ")[0] for line in _outage_lines(caplog)] == ["503 storage_unavailable",
                                                                         "503 sts_unavailable"]
