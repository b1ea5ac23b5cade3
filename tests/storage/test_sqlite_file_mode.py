"""A SQLite database the broker creates is readable by its user only (0600 files, a 0700 new folder)."""

from __future__ import annotations

import os

from sqlalchemy import text

from broker.storage.engine import build_engine


def test_a_new_sqlite_database_and_its_folder_are_private(tmp_path):
    old = os.umask(0o022)  # a usual umask: without the fix the file would be 0644
    try:
        path = tmp_path / "new-folder" / "broker.db"
        engine = build_engine(f"sqlite:///{path}")
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert modes["broker.db"] == 0o600 and modes.get("broker.db-wal", 0o600) == 0o600
    assert set(modes) >= {"broker.db"} and all(mode == 0o600 for mode in modes.values()), modes


def test_an_existing_database_keeps_its_mode(tmp_path):
    path = tmp_path / "broker.db"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    build_engine(f"sqlite:///{path}").dispose()
    assert path.stat().st_mode & 0o777 == 0o640  # the operator's choice for a file they made
