"""SQLite on a full disk (issue 22, 3): a real full disk, a 3 MB tmpfs mounted for the test.

The drill: each issuance adds ~200 KB to the WAL; once the disk is full the checkpoint cannot grow the
database file, so the WAL never shrinks and the broker answers 503 forever, across restarts, while /readyz
says 200.  Mounting needs root (CAP_SYS_ADMIN); where the test cannot mount, it is skipped and says so."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI, TEST_SCOPES, build_harness
from tests.revocation.conftest import S3_REQUEST

NO_LIMITS = {"agent_requests_per_minute": 0, "template_requests_per_minute": 0, "agent_max_live_grants": 0}


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk drill needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _broker(disk: Path, moto_server, tmp_path, **overrides):
    return build_harness(db_url=f"sqlite:///{disk / 'broker.db'}", scopes=TEST_SCOPES,
                         aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                         **{**NO_LIMITS, **overrides})


def _issue_until_refused(broker, most: int = 60) -> int:
    for count in range(most):
        response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
        if response.status_code != 201:
            assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
            return count
    raise AssertionError(f"the disk did not fill in {most} issuances")


def test_a_full_disk_recovers_by_itself_and_readyz_says_so_meanwhile(tiny_disk, moto_server, tmp_path, caplog):
    # No checkpoint by size (the drill's configuration): the WAL fills the disk; 512 KB of reserve.
    broker = _broker(tiny_disk, moto_server, tmp_path, sqlite_wal_checkpoint_bytes=0,
                     sqlite_reserve_bytes=512 * 1024)
    caplog.set_level(logging.WARNING, logger="broker")
    assert (tiny_disk / "broker.db.reserve").stat().st_size == 512 * 1024
    issued = _issue_until_refused(broker)
    assert issued > 3
    # The failed write released the reserve and truncated the WAL: the disk has room again.
    response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    assert response.status_code == 201, response.text
    assert broker.client.get("/readyz").status_code == 200
    assert "SQLite: disk full writing" in caplog.text and "truncating checkpoint completed" in caplog.text
    assert "cause: OperationalError: database or disk is full" in caplog.text     # the 503's own line
    assert (tiny_disk / "broker.db.reserve").stat().st_size == 512 * 1024         # taken again
    types = [e["type"] for e in broker.events()]
    # The refused one has no "issued" entry (if its "requested" was written, its session is an orphan to revoke).
    assert types.count("issued") == issued + 1
    broker.container.database.engine.dispose()


def test_readyz_fails_while_writes_fail(tiny_disk, moto_server, tmp_path):
    """No reserve and a disk full of the database itself: writes keep failing, and /readyz says so."""
    broker = _broker(tiny_disk, moto_server, tmp_path, sqlite_wal_checkpoint_bytes=0, sqlite_reserve_bytes=0)
    filler = tiny_disk / "someone-elses-file"
    assert broker.client.get("/readyz").status_code == 200
    # Another process takes the rest of the disk.  Unbuffered: a buffered file keeps the part of the last write
    # that did not fit and fails again when it is closed (how much fits depends on the database's own size).
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    refused = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    assert refused.status_code == 503
    ready = broker.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "storage_unavailable"
    filler.unlink()                                 # the operator makes room
    assert broker.client.get("/readyz").status_code == 200
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    broker.container.database.engine.dispose()


def test_the_wal_is_checkpointed_by_size(tiny_disk, moto_server, tmp_path):
    """With a 256 KB threshold the WAL is truncated as it grows: 25 issuances (~5 MB of WAL) fit a 3 MB disk."""
    broker = _broker(tiny_disk, moto_server, tmp_path, sqlite_wal_checkpoint_bytes=256 * 1024,
                     sqlite_reserve_bytes=0)
    wal = tiny_disk / "broker.db-wal"
    for _ in range(25):
        assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
        deadline = time.monotonic() + 5
        while wal.exists() and wal.stat().st_size > 256 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)            # the checkpointer looks every 0.25 s
        assert not wal.exists() or wal.stat().st_size <= 256 * 1024
    broker.container.database.engine.dispose()
