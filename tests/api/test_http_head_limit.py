"""The HTTP server bounds a request's head (request line and headers) at 16 KiB, as h11 did before httptools
(broker.api.http_protocol): past it, 400 and the connection closed, before the app sees anything."""

from __future__ import annotations

import socket

import pytest

from broker.api.http_protocol import HEAD_BYTES_MAX
from tests.live_server import serve


@pytest.fixture
def server(sqlite_broker):
    with serve(sqlite_broker.client.app) as live:
        yield live


def _connect(server) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _head(path: str, pad: int, *, method: str = "GET", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'a' * pad}\r\n{extra}\r\n").encode()


def _answers(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_head_over_the_bound_is_refused_and_the_connection_closed(server):
    with _connect(server) as connection:
        connection.sendall(_head("/healthz", HEAD_BYTES_MAX))
        answer = _answers(connection)
    assert _status(answer) == 400 and b"connection: close" in answer.lower(), answer[:200]
    assert answer.endswith(b"Request head too large."), answer[-80:]


def test_a_head_dribbled_in_small_pieces_is_bounded_too(server):
    """A header that never ends: the server stops it near the bound, not when the client gives up."""
    with _connect(server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        sent = 0
        try:
            while sent < 64 * HEAD_BYTES_MAX:
                connection.sendall(b"a" * 1024)
                sent += 1024
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answers(connection)
    assert sent < 64 * HEAD_BYTES_MAX or _status(answer) == 400, sent
    assert answer == b"" or _status(answer) == 400, answer[:200]


def test_heads_under_the_bound_are_served_each_on_a_kept_connection(server):
    """The bound is per request: two heads of three quarters of it on one keep-alive connection are both served,
    and a body after a head near the bound, sent in the same piece, is not counted as head."""
    with _connect(server) as connection:
        for _ in range(2):
            connection.sendall(_head("/healthz", HEAD_BYTES_MAX * 3 // 4))
            answer = connection.recv(65536)
            assert _status(answer) == 200, answer[:200]
        body = b'{"template": "test-s3-read", "reason": "' + b"b" * 60000 + b'"}'
        connection.sendall(_head("/v1/requests", HEAD_BYTES_MAX - 1024, method="POST",
                                 extra=f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n") + body)
        answer = connection.recv(65536)
    assert _status(answer) == 401, answer[:300]  # the app's answer (no credentials), not the head bound's 400
