"""PostgreSQL pool: a connection that sat idle is pinged before use, one just used is not."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from broker.storage.engine import PING_AFTER_IDLE_SECONDS, Database, build_engine
from broker.storage.migrations import migrate

pytestmark = pytest.mark.postgres


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


def _terminate(admin_url: str, pid: int) -> None:
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,)).scalar_one()
    admin.dispose()


def test_an_idle_dead_connection_is_replaced_before_use(pg_admin_url, pg_url):
    engine = build_engine(pg_url)
    dead = _backend_pid(engine)
    _terminate(pg_admin_url, dead)
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
    # The pooled connection is dead; its liveness ping fails and the pool hands out a new one.
    assert _backend_pid(engine) != dead
    engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(pg_admin_url, pg_url):
    engine = build_engine(pg_url)
    dead = _backend_pid(engine)
    _terminate(pg_admin_url, dead)
    # Not pinged (it was checked in a moment ago), so its next statement fails: the caller's 503.
    with pytest.raises(sqlalchemy.exc.OperationalError):
        _backend_pid(engine)
    # The pool then replaces it: the next checkout works.
    assert _backend_pid(engine) != dead
    engine.dispose()


def test_a_pinged_connection_is_handed_out_outside_a_transaction(pg_url):
    """Found by the two-replica test: the ping left the connection "in transaction", and the next
    ``Database.read()`` could not switch it to autocommit (a 500 then, a 503 now, neither right)."""
    engine = build_engine(pg_url)
    migrate(engine)
    database = Database(engine)
    with database.read() as repo:
        assert repo.find_api_key_with_principal("nope") is None
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
    with database.read() as repo:  # the same pooled connection: pinged, then switched to autocommit
        assert repo.find_api_key_with_principal("nope") is None
    engine.dispose()
