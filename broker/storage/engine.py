"""Engine factory and the unit of work.

SQLite (embedded default) runs every transaction as ``BEGIN IMMEDIATE`` so that two
writers never both read the log head and then race; PostgreSQL serializes log
appends with ``SELECT ... FOR UPDATE`` on the log head row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, SQLAlchemyError
from sqlmodel import create_engine

from broker.domain.times import as_utc
from broker.errors import BrokerError, InvalidInput, StorageDisconnected, StorageUnavailable
from broker.storage.sqlite_space import DiskFullRecovery, SqliteSpace, WalCheckpointer

if TYPE_CHECKING:
    from broker.storage.repository import Repository

log = logging.getLogger("broker.storage")


# Set on the connections of ``Database.read()``; the SQLite begin hook leaves them in autocommit.
READ_ONLY_OPTION = "broker_read_only"
_READ_ONLY_OPTIONS = {
    "sqlite": {READ_ONLY_OPTION: True},
    "postgresql": {READ_ONLY_OPTION: True, "isolation_level": "AUTOCOMMIT"},
}


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg (v3) driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(url: str) -> bool:
    """Whether a database URL names SQLite (the embedded default) rather than PostgreSQL."""
    return make_url(normalise_url(url)).get_backend_name() == "sqlite"


def _private_database_file(path: Path) -> None:
    """A new SQLite database is its user's alone: a new folder 0700, the file 0600 (SQLite gives its -wal and
    -shm files the database file's mode).  An existing file keeps the mode its operator chose."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


@dataclass(frozen=True)
class PostgresSessionLimits:
    """How long a broker PostgreSQL session may wait or hold, so one stalled replica cannot stop the fleet.

    * ``lock_timeout_ms``: a statement waiting longer than this for a lock (the log head's row, held by a
      frozen replica) fails; the request answers 503 ``storage_unavailable`` instead of hanging.
    * ``statement_timeout_ms``: no statement runs longer than this.
    * ``idle_in_transaction_ms``: the server ends a session that sits inside a transaction doing nothing
      for this long (a replica stopped while it held the log's lock): its transaction rolls back and the
      lock is free.  The broker itself never waits on anything outside the database inside a transaction.
    * ``keepalive_seconds``: TCP keepalives on both ends (idle seconds; probes every half of it, 3 lost
      probes drop the connection), so a vanished host's connections and locks do not linger.

    0 turns a limit off (PostgreSQL's own meaning of 0).  From ``BROKER_DB_*`` settings.
    """

    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 30_000
    idle_in_transaction_ms: int = 15_000
    keepalive_seconds: int = 10

    def connect_args(self) -> dict[str, object]:
        options = (f"-c lock_timeout={self.lock_timeout_ms} -c statement_timeout={self.statement_timeout_ms} "
                   f"-c idle_in_transaction_session_timeout={self.idle_in_transaction_ms}")
        args: dict[str, object] = {"connect_timeout": 5}
        if self.keepalive_seconds > 0:
            interval = max(1, self.keepalive_seconds // 2)
            # The server's keepalives (a vanished broker host) and the client's (a vanished database host).
            options += (f" -c tcp_keepalives_idle={self.keepalive_seconds} -c tcp_keepalives_interval={interval}"
                        " -c tcp_keepalives_count=3")
            args.update(keepalives=1, keepalives_idle=self.keepalive_seconds, keepalives_interval=interval,
                        keepalives_count=3,
                        # NOTE: unacknowledged data (a request sent to a vanished server) also gives up.
                        tcp_user_timeout=(self.keepalive_seconds + 3 * interval) * 1000)
        return {**args, "options": options}


def build_engine(url: str, *, postgres_limits: PostgresSessionLimits | None = None,
                 sqlite_space: SqliteSpace | None = None) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # NOTE: a URI filename (``sqlite:///file:...?uri=true``) is SQLite's to open with its own modes
        # (``mode=ro`` must create nothing); only a plain path is created private here.
        uri_filename = str(parsed.query.get("uri", "")).lower() in ("true", "1")
        if parsed.database and parsed.database != ":memory:" and not uri_filename:
            _private_database_file(Path(parsed.database))
        in_memory = parsed.database in (None, "", ":memory:")
        # NOTE: LIFO: the connection used last is handed out next, with its page cache still valid (file
        # databases: a queue pool; an in-memory one has a single-connection pool and takes no such option).
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **({} if in_memory else {"pool_use_lifo": True}))

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # pragma: no cover - driver hook
            # NOTE: take over transaction control from pysqlite so BEGIN IMMEDIATE works.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # NOTE: no checkpoint (and its fsync) inside a request's commit; WalCheckpointer does it.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection):  # pragma: no cover - driver hook
            if not connection.get_execution_options().get(READ_ONLY_OPTION):
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            # NOTE: a read-only unit of work begins nothing: pysqlite (isolation_level None) then runs
            # each statement in autocommit, and its COMMIT is a no-op.

        space = sqlite_space or SqliteSpace()
        database = None if in_memory or uri_filename else Path(parsed.database)
        WalCheckpointer.start(engine, wal=None if database is None else database.with_name(database.name + "-wal"),
                              wal_checkpoint_bytes=space.wal_checkpoint_bytes)
        if database is not None:
            DiskFullRecovery.install(engine, database, space)
        return engine
    # NOTE: LIFO: the connection used last (its server backend warm) is handed out next.
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_use_lifo=True,
                           connect_args=(postgres_limits or PostgresSessionLimits()).connect_args())
    ping_idle_connections(engine)
    return engine


# After a checkpoint, SQLite truncates a WAL file larger than this (bytes).
WAL_SIZE_LIMIT = 64 * 1024 * 1024

# A pooled connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0


def ping_idle_connections(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Pessimistic disconnect handling for connections that sat idle, not for busy ones.

    ``pool_pre_ping`` costs a round trip on every checkout (three per issuance).  Here only a
    connection idle for ``idle_seconds`` is pinged; a dead one raises ``DisconnectionError`` and the
    pool replaces that connection.  A connection that dies within a second of its last use fails its
    first statement instead (SQLAlchemy then invalidates the pool's older connections too): that unit
    of work rolls back and the caller gets 503 ``storage_unavailable``, as for any outage.  The unit of
    work after STS is the exception: it is tried once more on a fresh connection (see
    ``BrokerService._mint_and_record``); if that fails too, the minted session is withheld and revoked
    as an orphan: fail-closed, at the price of one wasted session.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):  # pragma: no cover - pool hook
        if record is not None:
            record.info["broker_checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):  # pragma: no cover - pool hook
        last = record.info.get("broker_checked_in")
        if last is None or time.monotonic() - last < idle_seconds:
            return  # brand new (just connected) or in use a moment ago
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            # NOTE: the driver began a transaction for the ping; end it, or the connection is handed out
            # "in transaction" (and, for one, cannot be switched to autocommit by Database.read()).
            dbapi_connection.rollback()
        except Exception as exc:  # noqa: BLE001 - any failure means "do not hand this one out"
            raise DisconnectionError("a pooled connection failed its liveness ping") from exc


class _NamedLocks:
    """Process-wide locks by scope and name (see ``Database.exclusive``)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def get(self, scope: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((scope, name), threading.Lock())


_NAMED_LOCKS = _NamedLocks()
# The broker_settings row Database.probe_write writes and deletes.
WRITE_PROBE_KEY = "readyz:write-probe"
# How long ``Database.exclusive`` waits for a name another thread of this process holds.
EXCLUSIVE_WAIT_SECONDS = 30.0


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Database:
    """Hands out units of work.  Repositories never commit; the unit of work does, once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Set while writes fail (the error's type, never its text): /readyz then tries a write of its own.
        self.write_failing: str | None = None
        # Told, after each commit of a unit of work that took the log's lock, how long it held it
        # (seconds, from the lock to the end of COMMIT): the serial point of every replica.
        self.lock_observers: list[Callable[[float], None]] = []

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator["Repository"]:
        """One unit of work: everything done through the repository commits together, or not at all.

        A Core connection in a transaction (SQLite: ``BEGIN IMMEDIATE``); the ORM session is made
        only if the repository needs one, joins that transaction, and is flushed before the commit.
        """
        from broker.storage.repository import Repository

        with self._storage_errors(writing=True), self.engine.connect() as connection:
            with connection.begin():
                repo = Repository(connection, postgres=self.is_postgres)
                try:
                    yield repo
                    repo.flush()
                finally:
                    repo.close()
            self.write_failing = None
            if repo.locked_at is not None and self.lock_observers:
                held = time.perf_counter() - repo.locked_at
                for observer in tuple(self.lock_observers):
                    try:
                        observer(held)
                    except Exception:  # noqa: BLE001 - a timing observer must not fail a committed unit of work
                        log.warning("log lock observer %r failed", observer, exc_info=True)

    @contextmanager
    def read(self) -> Iterator["Repository"]:
        """A unit of work that only reads, for single-statement lookups on the request path.

        It takes no write lock on SQLite (no ``BEGIN IMMEDIATE``) and costs no ``BEGIN``/``COMMIT``
        round trips on PostgreSQL (autocommit): each statement sees its own snapshot.  Writing in
        it is a bug: nothing would be rolled back.
        """
        from broker.storage.repository import Repository

        with self._storage_errors(), self.engine.connect() as connection:
            connection = connection.execution_options(**_READ_ONLY_OPTIONS[self.engine.dialect.name])
            repo = Repository(connection, postgres=self.is_postgres, read_only=True)
            try:
                yield repo
            finally:
                repo.close()

    @contextmanager
    def exclusive(self, names: Iterable[str], *, wait_seconds: float = EXCLUSIVE_WAIT_SECONDS) -> Iterator[None]:
        """Hold one lock per name (taken in sorted order) for the block, across replicas: a thread lock in this
        process and, on PostgreSQL, a session advisory lock on a connection of its own.  It is no unit of work
        and not the log's lock: what the block does outside the database (an IAM call) stalls nobody else.
        A name held elsewhere for longer than ``wait_seconds`` (PostgreSQL: the lock timeout) is a 503.
        """
        ordered = sorted(set(names))
        # NOTE: SQLite: every Database on the file shares the thread lock (there is no server to lock in).
        # PostgreSQL: the thread lock is this Database's own; the advisory lock serializes the others.
        scope = f"postgres:{id(self)}" if self.is_postgres else self.engine.url.render_as_string(hide_password=True)
        with ExitStack() as stack:
            for name in ordered:
                lock = _NAMED_LOCKS.get(scope, name)
                if not lock.acquire(timeout=wait_seconds):
                    raise StorageUnavailable("another broker thread has held this lock for too long; nothing was "
                                             "done", code="storage_unavailable")
                stack.callback(lock.release)
            if self.is_postgres and ordered:
                with self._storage_errors():
                    connection = stack.enter_context(self.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT"))
                    stack.callback(self._release_advisory_locks, connection)
                    # NOTE: the holder may be waiting for IAM (seconds): wait as long as for a thread of this process.
                    connection.exec_driver_sql(f"SET lock_timeout = '{int(wait_seconds * 1000)}ms'")
                    for name in ordered:
                        connection.exec_driver_sql("SELECT pg_advisory_lock(%(key)s)", {"key": _advisory_key(name)})
            yield

    @staticmethod
    def _release_advisory_locks(connection) -> None:
        try:
            connection.exec_driver_sql("SELECT pg_advisory_unlock_all()")
            connection.exec_driver_sql("RESET lock_timeout")   # back to the session's (BROKER_DB_LOCK_TIMEOUT_MS)
        except (DBAPIError, SQLAlchemyError):  # a lost connection has lost its locks with it
            connection.invalidate()

    @contextmanager
    def _storage_errors(self, *, writing: bool = False) -> Iterator[None]:
        try:
            yield
        except BrokerError:
            raise
        except DataError as exc:
            # NOTE: the database is up; a value it was given cannot be stored or compared (PostgreSQL
            # refuses NUL characters in text).  That is the caller's input, not an outage (no 503).
            raise InvalidInput("the request holds a value the broker cannot store or search for (such as a "
                               "NUL character); nothing was issued", code="unstorable_value") from exc
        except (DBAPIError, SQLAlchemyError) as exc:
            if writing:
                self.write_failing = exc.__class__.__name__
                # SQLite on a full disk: make room for the next writes (broker.storage.sqlite_space).
                DiskFullRecovery.after_failed_write(self.engine, exc)
            # NOTE: SQLAlchemy marks the errors that mean "this connection is gone" (and has dropped it from the
            # pool); the use case may try once more on a fresh one.
            error = StorageDisconnected if getattr(exc, "connection_invalidated", False) else StorageUnavailable
            raise error("the broker's database is unavailable; nothing was issued") from exc
        except self._driver_error as exc:
            # NOTE: a driver error SQLAlchemy did not wrap (raised from dialect code, such as a failed switch to
            # autocommit): still the database's, never a 500.
            raise StorageUnavailable("the broker's database is unavailable; nothing was issued") from exc

    @property
    def _driver_error(self) -> type[Exception]:
        return getattr(self.engine.dialect.loaded_dbapi, "Error", DBAPIError)

    def probe_write(self, *, now: datetime) -> None:
        """A real write that leaves nothing behind (a row written and deleted in one committed unit of work: on
        SQLite, pages appended to the WAL), for readiness while units of work fail.  Raises StorageUnavailable."""
        with self.transaction() as repo:
            repo.set_setting(WRITE_PROBE_KEY, "probe", now=now)
            repo.flush()
            repo.set_setting(WRITE_PROBE_KEY, None, now=now)

    def database_time(self) -> datetime:
        """The database server's clock, now (PostgreSQL: ``clock_timestamp()``; SQLite: this host's clock)."""
        with self._storage_errors(), self.engine.connect() as connection:
            if self.is_postgres:
                return as_utc(connection.exec_driver_sql("SELECT clock_timestamp()").scalar_one())
            text = connection.exec_driver_sql("SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now')").scalar_one()
            return datetime.fromisoformat(text).replace(tzinfo=UTC)

    def ping(self) -> None:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StorageUnavailable("the broker's database is unavailable") from exc
