"""Real faults for the broker: a local STS stand-in that throttles, errs or stalls; closed ports;
PostgreSQL connections cut with pg_terminate_backend.  Nothing here is a mock: boto3 talks HTTP
to servers these fixtures run on 127.0.0.1."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

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
    # Set when the test ends: a stalled answer still pending is given up (no thread outlives the test).
    released: threading.Event = field(default_factory=threading.Event)

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
                state.released.wait(state.stall_seconds)
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
    holder["state"].released.set()
    server.shutdown()
    server.server_close()


@dataclass
class Fault:
    """What the proxy does to one AWS service's calls: wait ``delay`` seconds first (and until ``hold`` is set,
    if given: a call that hangs as long as the test wants), then either answer
    ``status`` (an error, the call never reaches moto), or pass the call to moto and, with ``drop``, lose
    its answer (the connection closes: the caller cannot know whether the call took effect)."""

    delay: float = 0.0
    hold: threading.Event | None = None
    status: int | None = None
    drop: bool = False


@dataclass
class FaultProxy:
    """An HTTP proxy in front of moto that slows, fails or drops the calls of chosen services (``iam``,
    ``sts``: from the SigV4 credential scope).  Every call is counted in ``hits`` by service."""

    server: ThreadingHTTPServer
    upstream: str
    faults: dict[str, Fault] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([a-z0-9-]+)/aws4_request")
AWS_ERROR = ('<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>'
             '<Message>injected by the fault proxy</Message></Error><RequestId>fault</RequestId></ErrorResponse>')


@pytest.fixture
def fault_proxy(moto_server) -> Iterator[FaultProxy]:
    holder: dict[str, FaultProxy] = {}
    upstream = urlsplit(moto_server.endpoint_url)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            proxy = holder["proxy"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            found = _SERVICE.search(self.headers.get("Authorization", ""))
            service = found.group(1) if found else "other"
            proxy.hits[service] = proxy.hits.get(service, 0) + 1
            fault = proxy.faults.get(service, Fault())
            if fault.delay:
                time.sleep(fault.delay)
            if fault.hold is not None:
                fault.hold.wait(30)
            if fault.status is not None:
                self._answer(fault.status, AWS_ERROR.encode(), {"Content-Type": "text/xml"})
                return
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
            finally:
                connection.close()
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._answer(answer.status, payload, {k: v for k, v in answer.getheaders()
                                                  if k.lower() not in ("content-length", "connection",
                                                                       "transfer-encoding")})

        def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_PUT = do_DELETE = _relay  # noqa: N815 (http.server naming)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["proxy"] = FaultProxy(server=server, upstream=moto_server.endpoint_url)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield holder["proxy"]
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
