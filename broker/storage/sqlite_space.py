"""SQLite on a filling disk: the WAL checkpointed by size, room kept for a checkpoint, recovery from "disk full".

Each issuance adds ~200 KB to the write-ahead log.  A checkpoint copies the WAL's pages into the database
file (which may have to grow) and only then may the WAL be reused or truncated; on a full disk the
checkpoint cannot grow the file, so the WAL never shrinks and every write fails, across restarts.  Three
things keep that from happening, or undo it:

* :class:`WalCheckpointer` runs a *truncating* checkpoint as soon as the WAL passes
  ``wal_checkpoint_bytes`` (besides its passive one every few seconds), so the WAL stays small;
* a reserve file beside the database (``<database>.reserve``, ``reserve_bytes``, allocated for real)
  holds room a checkpoint can use when the disk is full;
* :class:`DiskFullRecovery`, called when a write fails with ``SQLITE_FULL``: it releases the reserve,
  runs a truncating checkpoint (the WAL's space comes back), and takes the reserve again if it can.
  The write that hit the full disk still answers 503; the next ones succeed if the checkpoint freed room.

If the disk is full of the database itself, nothing here helps: the broker answers 503, ``/readyz``
fails, and the operational log says "disk full" until an operator adds room.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger("broker.storage.sqlite")

# sqlite3.h: "Insertion failed because database is full" (the primary result code).
SQLITE_FULL = 13
DISK_FULL_TEXT = "database or disk is full"


@dataclass(frozen=True)
class SqliteSpace:
    """From ``BROKER_SQLITE_WAL_CHECKPOINT_BYTES`` and ``BROKER_SQLITE_RESERVE_BYTES`` (0 turns either off; the
    broker's settings reserve 32 MiB, an engine built without them none)."""

    wal_checkpoint_bytes: int = 16 * 1024 * 1024
    reserve_bytes: int = 0


def reserve_path(database: Path) -> Path:
    return database.with_name(database.name + ".reserve")


def take_reserve(database: Path, size: int) -> bool:
    """Make sure ``size`` bytes are allocated beside ``database``; False if the disk has not that much left."""
    if size <= 0:
        return True
    path = reserve_path(database)
    try:
        if path.exists() and path.stat().st_size >= size:
            return True
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(descriptor, 0, size)   # real blocks, not a sparse file
        finally:
            os.close(descriptor)
        return True
    except OSError as exc:
        path.unlink(missing_ok=True)
        log.warning("SQLite: the %d-byte disk reserve beside %s cannot be allocated (%s): a full disk may not "
                    "recover by itself", size, database, exc.strerror or exc.__class__.__name__)
        return False


def is_disk_full(exc: BaseException) -> bool:
    """Was this (SQLAlchemy- or driver-) error SQLite's "database or disk is full"?"""
    driver = getattr(exc, "orig", None) or exc
    code = getattr(driver, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == SQLITE_FULL
    return DISK_FULL_TEXT in str(driver)


def checkpoint(engine: Engine, mode: str) -> bool:
    """``PRAGMA wal_checkpoint(mode)`` on a connection of its own; True if every WAL frame was copied."""
    raw = engine.raw_connection()
    try:
        busy, _frames, _copied = raw.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return busy == 0
    finally:
        raw.close()


class DiskFullRecovery:
    """Called after a write failed with SQLITE_FULL: release the reserve, truncate the WAL, take the reserve back."""

    _by_engine: "weakref.WeakKeyDictionary[Engine, DiskFullRecovery]" = weakref.WeakKeyDictionary()

    def __init__(self, engine: Engine, database: Path, space: SqliteSpace) -> None:
        self._engine = weakref.ref(engine)
        self._database = database
        self._space = space
        self._lock = threading.Lock()

    @classmethod
    def install(cls, engine: Engine, database: Path, space: SqliteSpace) -> None:
        cls._by_engine[engine] = cls(engine, database, space)
        take_reserve(database, space.reserve_bytes)

    @classmethod
    def after_failed_write(cls, engine: Engine, exc: BaseException) -> None:
        recovery = cls._by_engine.get(engine)
        if recovery is not None and is_disk_full(exc):
            recovery()

    def __call__(self) -> None:
        if not self._lock.acquire(blocking=False):
            return   # another thread is recovering already
        try:
            engine = self._engine()
            if engine is None:
                return
            wal = self._database.with_name(self._database.name + "-wal")
            before = wal.stat().st_size if wal.exists() else 0
            released = reserve_path(self._database).exists()
            reserve_path(self._database).unlink(missing_ok=True)
            try:
                truncated = checkpoint(engine, "TRUNCATE")
            except Exception as exc:  # noqa: BLE001 - any failure is reported, and the next full write tries again
                truncated = False
                log.debug("truncating checkpoint failed", exc_info=exc)
            restored = take_reserve(self._database, self._space.reserve_bytes)
            after = wal.stat().st_size if wal.exists() else 0
            log.error("SQLite: disk full writing %s (WAL %d bytes): reserve %s, truncating checkpoint %s (WAL now %d "
                      "bytes), reserve %s", self._database, before, "released" if released else "absent",
                      "completed" if truncated else "FAILED", after, "taken again" if restored else "NOT taken again")
        finally:
            self._lock.release()


class WalCheckpointer:
    """Checkpoints a SQLite WAL from a background thread, off the request path.

    SQLite's automatic checkpoint runs inside whichever commit crosses the threshold and fsyncs
    the database file there: a multi-millisecond stall for that one request.  Here a daemon thread
    runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds instead (PASSIVE never
    blocks writers), and ``TRUNCATE`` as soon as the WAL passes ``wal_checkpoint_bytes`` (it looks
    every ``tick`` seconds: one ``stat``).  It holds the engine weakly and stops once the engine is
    disposed or gone.  (On the last connection's close SQLite checkpoints by itself.)

    Every 5 s, not every second: a checkpoint copies each page changed since the last one once,
    so fewer checkpoints copy less (an issuance dirties ~40 pages, mostly the same index pages),
    and measured at full speed the per-second checkpoint cost ~0.5 ms at p99.
    """

    @classmethod
    def start(cls, engine: Engine, *, wal: Path | None, wal_checkpoint_bytes: int = 0, interval: float = 5.0,
              tick: float = 0.25) -> None:
        engine_ref = weakref.ref(engine)
        stopped = threading.Event()
        event.listen(engine, "engine_disposed", lambda _engine: stopped.set())
        by_size = wal is not None and wal_checkpoint_bytes > 0

        def run() -> None:
            waited = 0.0
            while not stopped.wait(tick if by_size else interval):
                waited += tick if by_size else interval
                current = engine_ref()
                if current is None:
                    return
                try:
                    if by_size and wal.exists() and wal.stat().st_size > wal_checkpoint_bytes:
                        checkpoint(current, "TRUNCATE")
                        waited = 0.0
                    elif waited >= interval:
                        checkpoint(current, "PASSIVE")
                        waited = 0.0
                except Exception:  # noqa: BLE001 - a failed checkpoint is retried on the next tick
                    log.debug("WAL checkpoint skipped", exc_info=True)
                del current

        threading.Thread(target=run, name="sqlite-wal-checkpoint", daemon=True).start()
