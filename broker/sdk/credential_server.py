"""A local credentials endpoint in the shape botocore's container provider reads (``broker exec --server``).

A long-running child gets no static keys.  Its environment names this endpoint instead:

* ``AWS_CONTAINER_CREDENTIALS_FULL_URI``: ``http://127.0.0.1:<port>/credentials`` (loopback only: botocore
  accepts a plain-http full URI only for loopback hosts, and the socket is bound to 127.0.0.1);
* ``AWS_CONTAINER_AUTHORIZATION_TOKEN``: a random token made for this run (256 bits), which botocore sends as
  the ``Authorization`` header; any other request is answered 401.

Each request returns the scope's current credentials (``AccessKeyId``, ``SecretAccessKey``, ``Token``,
``Expiration``), asking the broker for new ones when fewer than ``SERVER_REFRESH_MARGIN_SECONDS`` are left:
more than botocore's mandatory refresh window (10 minutes), so what it is handed is never "still expired".
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from broker.sdk.errors import BrokerAPIError
from broker.sdk.models import IssuedCredentials, PendingRequest, iso_time

log = logging.getLogger("broker.sdk.credential_server")

CREDENTIALS_PATH = "/credentials"
SERVER_REFRESH_MARGIN_SECONDS = 11 * 60
TOKEN_BYTES = 32


class CredentialServer:
    """Serves ``fetch()``'s credentials on 127.0.0.1 to callers presenting this run's token."""

    def __init__(self, fetch: Callable[[], IssuedCredentials | PendingRequest]) -> None:
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self._fetch = fetch
        self._lock = threading.Lock()  # one broker call at a time; concurrent callers share its answer
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="credential-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{CREDENTIALS_PATH}"

    def environment(self) -> dict[str, str]:
        """The variables botocore (and every AWS SDK) reads for the container credential provider."""
        return {"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token}

    def start(self) -> "CredentialServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "CredentialServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the answer
    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """``(status, body)`` for one request (the HTTP handler only writes it out)."""
        # NOTE: constant-time comparison; the token is the only thing between another local process and the keys.
        if not authorization or not hmac.compare_digest(authorization.encode(), self.token.encode()):
            return 401, {"code": "unauthorized", "message": "this endpoint needs its AWS_CONTAINER_AUTHORIZATION_TOKEN"}
        if path.split("?", 1)[0] != CREDENTIALS_PATH:
            return 404, {"code": "not_found", "message": f"credentials are at {CREDENTIALS_PATH}"}
        try:
            with self._lock:
                issued = self._fetch()
        except BrokerAPIError as exc:
            log.warning("the broker refused new credentials: [%s] %s", exc.code, exc.message)
            return 503, {"code": exc.code, "message": exc.message}
        if isinstance(issued, PendingRequest):
            return 503, {"code": "approval_required", "message": issued.message()}
        return 200, {"AccessKeyId": issued.access_key_id, "SecretAccessKey": issued.secret_access_key,
                     "Token": issued.session_token, "Expiration": iso_time(issued.expiration)}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - NOTE: nothing of a request is logged
                return

        return Handler


__all__ = ["CREDENTIALS_PATH", "CredentialServer", "SERVER_REFRESH_MARGIN_SECONDS"]
