"""PostgreSQL pool: a connection that sat idle is pinged before use, one just used is not."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from broker.storage.engine import PING_AFTER_IDLE_SECONDS, build_engine

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
