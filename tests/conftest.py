"""Shared fixtures: a real moto server over HTTP, SQLite and PostgreSQL databases, a broker built on them."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
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


# ----------------------------------------------------------------------------- fake AWS
@pytest.fixture(scope="session")
def moto_server():
    """moto's real server on 127.0.0.1 (FAKE AWS): tests talk to it over HTTP."""
    from broker.runtime.devmode import start_fake_aws

    from broker.storage.template_files import load_catalog
    from broker.runtime.devmode import seed_aws

    aws = start_fake_aws(0)
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


def _fresh_pg_database(admin_url: str, *, template: str | None = None) -> tuple[str, callable]:
    """A new, empty database (or a copy of ``template``, which is much faster than migrating)."""
    import sqlalchemy

    name = f"broker_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        clause = f' TEMPLATE "{template}"' if template else ""
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
    url = sqlalchemy.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


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

    url, drop = _fresh_pg_database(pg_admin_url)
    engine = build_engine(url)
    migrate(engine)
    engine.dispose()
    yield sqlalchemy.engine.make_url(url).database
    drop()


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
