"""Real faults for the broker: a local STS stand-in that throttles, errs or stalls; closed ports;
PostgreSQL connections cut with pg_terminate_backend.  Nothing here is a mock: boto3 talks HTTP
to servers these fixtures run on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

STS_ERROR = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
             '<Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-test</RequestId>'
             '</ErrorResponse>')
# mode -> (HTTP status, STS error code, message)
STS_ANSWERS = {
    "throttle": (400, "Throttling", "Rate exceeded"),
    "error": (403, "AccessDenied", "User arn:aws:iam::123456789012:user/secret-name is not authorized"),
}


@dataclass
class FaultySts:
    """An HTTP server speaking just enough of STS's query protocol to fail in one chosen way."""

    server: ThreadingHTTPServer
    mode: str = "throttle"
    stall_seconds: float = 3.0
    hits: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def faulty_sts() -> Iterator[FaultySts]:
    holder: dict[str, FaultySts] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            state = holder["state"]
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.hits.append(time.monotonic())
            if state.mode == "stall":
                time.sleep(state.stall_seconds)
                status, code, message = STS_ANSWERS["error"]
            else:
                status, code, message = STS_ANSWERS[state.mode]
            body = STS_ERROR.format(code=code, message=message).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["state"] = FaultySts(server=server)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield holder["state"]
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cut_database(admin_url: str, database_url: str, *, allow: bool) -> None:
    """PostgreSQL down for one database: refuse new connections and terminate the open ones (or undo)."""
    import sqlalchemy

    name = sqlalchemy.engine.make_url(database_url).database
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
        if not allow:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,))
    admin.dispose()


@pytest.fixture
def pg_migrated_url(pg_admin_url, pg_migrated_template) -> Iterator[str]:
    """A fresh PostgreSQL database, already migrated (a copy of the session's template: no migration run)."""
    from tests.conftest import _fresh_pg_database

    url, drop = _fresh_pg_database(pg_admin_url, template=pg_migrated_template)
    yield url
    drop()
