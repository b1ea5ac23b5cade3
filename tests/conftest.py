"""Shared fixtures: a real moto server over HTTP, SQLite and PostgreSQL databases, a broker built on them."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

# The JWT signers, JWKS servers and verifier fixtures, for every test folder that needs them.
pytest_plugins = ("tests.identity.jwt_factory",)

FIXTURES = Path(__file__).parent / "fixtures"
TEST_SCOPES = FIXTURES / "scopes"
REPO_SCOPES = Path(__file__).parent.parent / "scopes"
# Beyond dev mode's principals: a second agent (acting for bob) and an approver outside group sre.
TEST_PRINCIPALS = {"agent:other": (("agent",), (), "human:bob"), "human:dave": (("approver",), ("dba",), None)}
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get("BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


# ----------------------------------------------------------------------------- order
def pytest_collection_modifyitems(config, items):
    """Modules holding a test marked ``slow`` run first (otherwise in the order collected): under pytest-xdist's
    loadscope a module is one unit of work, and a long one handed out last would be the run's tail."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)  # a stable sort: the same order everywhere


# ----------------------------------------------------------------------------- fake AWS
@dataclass
class MotoProcess:
    """moto's server in a process of its own (FAKE AWS): its answers do not wait for this worker's GIL, so a busy
    test (or a busy machine) does not push an STS call past the broker's read timeout."""

    endpoint_url: str
    process: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def start_moto_process(log_file: Path, attempts: int = 3) -> MotoProcess:
    from broker.runtime.devmode import free_port

    for _ in range(attempts):  # a port probed free may be taken before moto binds it (another worker): again
        port = free_port(0)
        with log_file.open("ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/moto-api/data.json", timeout=5):
                    return MotoProcess(endpoint_url=url, process=process)
            except OSError:
                time.sleep(0.05)
        MotoProcess(endpoint_url=url, process=process).stop()
    raise RuntimeError(f"moto's server did not start:\n{log_file.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's real server on 127.0.0.1 (FAKE AWS): tests talk to it over HTTP."""
    from broker.runtime.devmode import seed_aws
    from broker.storage.template_files import load_catalog

    aws = start_moto_process(tmp_path_factory.mktemp("moto") / "moto.log")
    # The broker's own (fake) AWS identity for calling moto (as broker dev sets it).
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-broker-secret")
    # The test templates' target roles and the demo bucket, once per session.
    seed_aws(aws.endpoint_url, load_catalog(TEST_SCOPES))
    yield aws
    aws.stop()


def moto_sts_sessions(endpoint_url: str) -> list[dict]:
    with urllib.request.urlopen(endpoint_url + "/moto-api/data.json") as response:
        return json.load(response)["sts"]["AssumedRole"]


# ----------------------------------------------------------------------------- databases
@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The PostgreSQL server; under CI a missing server is a failure, never a skip."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI and is not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    return PG_ADMIN_URL


class _PgCopies:
    """Databases made ahead and dropped behind, off the tests' clock.

    CREATE DATABASE and DROP DATABASE each wait for the server to flush its WAL (together about a second a test on a
    disk that syncs): two threads of this worker make the next copies of a template while tests run, and drop
    the used ones afterwards.  Every test still gets a database of its own that no other test touched."""

    SPARES = 2

    def __init__(self, admin_url: str) -> None:
        import sqlalchemy

        self.admin_url = admin_url
        self._admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg-copies")
        self._spares: dict[str | None, deque[Future]] = {}
        self._lock = threading.Lock()

    def _create(self, template: str | None) -> str:
        name = f"broker_test_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
        return name

    def _drop(self, name: str) -> None:
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def take(self, template: str | None) -> str:
        """A new database (empty, or a copy of ``template``) for one test; the next ones are already being made."""
        with self._lock:
            spares = self._spares.setdefault(template, deque())
            ready = spares.popleft() if spares else None
            while len(spares) < self.SPARES:
                spares.append(self._threads.submit(self._create, template))
        return ready.result() if ready is not None else self._create(template)

    def give_back(self, name: str) -> None:
        """Drop a used database in the background (WITH (FORCE): a connection a test left open does not stop it)."""
        self._threads.submit(self._drop, name)

    def forget(self, template: str) -> None:
        """No more copies of ``template`` (before it is dropped: a copy in progress would hold it)."""
        with self._lock:
            spares = self._spares.pop(template, deque())
        for spare in spares:
            self._drop(spare.result())

    def close(self) -> None:
        with self._lock:
            everything = [spare for spares in self._spares.values() for spare in spares]
            self._spares.clear()
        for spare in everything:
            self._drop(spare.result())
        self._threads.shutdown(wait=True)  # the pending drops
        self._admin.dispose()


_PG_COPIES: dict[str, _PgCopies] = {}


def _pg_copies(admin_url: str) -> _PgCopies:
    if admin_url not in _PG_COPIES:
        _PG_COPIES[admin_url] = _PgCopies(admin_url)
    return _PG_COPIES[admin_url]


@atexit.register  # the scripts of tests/bench use _fresh_pg_database too
def _close_pg_copies() -> None:
    while _PG_COPIES:
        _PG_COPIES.popitem()[1].close()


def pytest_sessionfinish(session):
    _close_pg_copies()


def _fresh_pg_database(admin_url: str, *, template: str | None = None) -> tuple[str, callable]:
    """A new, empty database (or a copy of ``template``, which is much faster than migrating), and its drop."""
    import sqlalchemy

    copies = _pg_copies(admin_url)
    name = copies.take(template)
    url = sqlalchemy.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return url, lambda: copies.give_back(name)


@pytest.fixture
def pg_url(pg_admin_url) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (migrations not applied)."""
    url, drop = _fresh_pg_database(pg_admin_url)
    yield url
    drop()


@pytest.fixture(scope="session")
def pg_migrated_template(pg_admin_url) -> Iterator[str]:
    """One migrated database per session; tests get copies of it (CREATE DATABASE ... TEMPLATE)."""
    import sqlalchemy

    from broker.storage.engine import build_engine
    from broker.storage.migrations import migrate

    url, _ = _fresh_pg_database(pg_admin_url)
    engine = build_engine(url)
    migrate(engine)
    engine.dispose()
    name = sqlalchemy.engine.make_url(url).database
    yield name
    copies = _pg_copies(pg_admin_url)
    copies.forget(name)
    copies.give_back(name)


@pytest.fixture(scope="session")
def sqlite_migrated_template(tmp_path_factory) -> Path:
    from broker.storage.engine import build_engine
    from broker.storage.migrations import migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    engine = build_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """Every storage/API test runs against both databases (each test a fresh, migrated one)."""
    if request.param == "sqlite":
        target = tmp_path / "broker.db"
        shutil.copyfile(request.getfixturevalue("sqlite_migrated_template"), target)
        yield f"sqlite:///{target}"
    else:
        admin = request.getfixturevalue("pg_admin_url")
        url, drop = _fresh_pg_database(admin, template=request.getfixturevalue("pg_migrated_template"))
        yield url
        drop()


# ----------------------------------------------------------------------------- logging
@pytest.fixture(autouse=True)
def _broker_logger_restored():
    """A test that runs ``broker serve``'s start-up configures the broker's operational log; undo it."""
    import logging

    logger = logging.getLogger("broker")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


# ----------------------------------------------------------------------------- a migrated database
@contextmanager
def migrated_database(db_url: str, kind: type | None = None):
    """A migrated database at ``db_url`` (a ``Database``, or the ``kind`` given), disposed afterwards."""
    from broker.storage.engine import Database, build_engine
    from broker.storage.migrations import migrate

    database = (kind or Database)(build_engine(db_url))
    migrate(database.engine)
    try:
        yield database
    finally:
        database.engine.dispose()


# ----------------------------------------------------------------------------- another writer
LOCK_LOG_HEAD = "SELECT seq FROM log_head WHERE id = 1 FOR UPDATE"


@contextmanager
def another_writer(engine, postgres_statements: tuple[str, ...] = (LOCK_LOG_HEAD,), seconds: float = 10):
    """Another writer for up to ``seconds``: on SQLite it holds the write lock (BEGIN IMMEDIATE), on PostgreSQL
    what ``postgres_statements`` lock (by default the log's head).  What waits for either is slow; a quick
    answer proves it took neither."""
    import threading

    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.connect() as connection, connection.begin():
            if engine.dialect.name == "postgresql":
                for statement in postgres_statements:
                    connection.exec_driver_sql(statement)
            holding.set()
            done.wait(seconds)

    writer = threading.Thread(target=hold, daemon=True)
    writer.start()
    assert holding.wait(10)
    try:
        yield
    finally:
        done.set()
        writer.join(10)


# ----------------------------------------------------------------------------- clock
class FrozenClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime.now(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


# ----------------------------------------------------------------------------- a broker
@dataclass
class BrokerHarness:
    client: object
    container: object
    keys: dict[str, str]
    aws_endpoint: str
    clock: FrozenClock
    state_dir: Path

    def auth(self, principal: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[principal]}"}

    def post(self, path: str, principal: str, **kwargs):
        return self.client.post(path, headers=self.auth(principal), **kwargs)

    def get(self, path: str, principal: str, **kwargs):
        return self.client.get(path, headers=self.auth(principal), **kwargs)

    def request_count(self) -> int:
        from sqlmodel import func, select

        from broker.storage.models import RequestRow

        with self.container.database.transaction() as repo:
            return int(repo.session.exec(select(func.count()).select_from(RequestRow)).one())

    def events(self, *, include_loads: bool = False) -> list[dict]:
        """The log's entries; without the ``templates_loaded`` entry every start-up writes, unless asked."""
        with self.container.database.transaction() as repo:
            entries = repo.query_events(filters={}, limit=10_000)
        return entries if include_loads else [e for e in entries if e["type"] != "templates_loaded"]


def build_harness(*, db_url: str, scopes: Path, aws_endpoint: str, state_dir: Path, minter=None,
                  clock: FrozenClock | None = None, seed: bool = False, **settings_overrides) -> BrokerHarness:
    from fastapi.testclient import TestClient

    from broker.api.app import create_app
    from broker.api.deps import build_container
    from broker.runtime.devmode import DEV_ACCOUNTS, DEV_PRINCIPALS, ensure_signing_key, seed_aws, seed_principals
    from broker.settings import BrokerSettings

    state_dir.mkdir(parents=True, exist_ok=True)
    private, _ = ensure_signing_key(state_dir)
    settings_overrides.setdefault("accounts", DEV_ACCOUNTS)
    # NOTE: hundreds of test databases: no 32 MB disk reserve beside each (tests/faults/test_disk_full.py has one).
    settings_overrides.setdefault("sqlite_reserve_bytes", 0)
    # NOTE: tests move a FrozenClock by hand, away from the database's clock: no skew bound unless a test sets one.
    settings_overrides.setdefault("max_clock_skew_seconds", 0)
    settings_overrides.setdefault("signing_key_file", private)
    settings = BrokerSettings(database_url=db_url, scopes_dir=scopes, aws_endpoint_url=aws_endpoint,
                              **settings_overrides)
    clock = clock or FrozenClock()
    container = build_container(settings, clock=clock, minter=minter)
    if seed:
        seed_aws(aws_endpoint, container.catalog)
    principals = {**DEV_PRINCIPALS, **TEST_PRINCIPALS}
    keys = seed_principals(container.database, state_dir / "dev-keys.json", principals)
    client = TestClient(create_app(container), raise_server_exceptions=False)
    return BrokerHarness(client=client, container=container, keys=keys, aws_endpoint=aws_endpoint, clock=clock,
                         state_dir=state_dir)


@pytest.fixture
def broker(db_url, moto_server, tmp_path) -> BrokerHarness:
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    yield harness
    harness.container.database.engine.dispose()


# The refusal budget of the `budgeted` broker (refusals of one principal logged one by one per minute).
REFUSAL_BUDGET = 3


@pytest.fixture
def budgeted(db_url, moto_server, tmp_path, request) -> BrokerHarness:
    """A broker with a small refusal budget (settings overridable with indirect parametrization)."""
    overrides = getattr(request, "param", {"refusals_per_minute": REFUSAL_BUDGET})
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state", **overrides)
    yield harness
    harness.container.database.engine.dispose()


@pytest.fixture
def sqlite_broker(moto_server, tmp_path) -> BrokerHarness:
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state")
    yield harness
    harness.container.database.engine.dispose()
