"""A small but real OpenID Connect provider for tests, served by ``http.server`` on 127.0.0.1.

Authorization endpoint (signs the configured user in at once and redirects back with a code),
token endpoint (checks the code is known and unused, the client's authentication, the
redirect_uri, and the PKCE S256 verifier; answers with an RSA-signed ID token) and JWKS. It is
deliberately strict, like a real provider: anything off is refused with ``invalid_grant`` /
``invalid_client``.  Every token request and its outcome is recorded for the tests to inspect.
Keys and tokens come from tests/identity/jwt_factory.py.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

from tests.identity.jwt_factory import SigningKey, b64url, rsa_key, write_response

CLIENT_ID = "broker-approver-pages"
CLIENT_SECRET = "idp-client-secret-for-tests-only"  # noqa: S105 - a test fixture's secret


@dataclass
class TokenRequest:
    form: dict[str, str]
    outcome: str  # "ok" or the reason it was refused


@dataclass
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    user: dict[str, Any]


@dataclass
class FakeIdp:
    """State of the provider; tests change ``user``, ``tamper``, ``error`` and friends between flows."""

    server: ThreadingHTTPServer
    browser_host: str = "127.0.0.1"
    key: SigningKey = field(default_factory=lambda: rsa_key("idp-key-1"))
    client_secret: str | None = CLIENT_SECRET
    redirect_uri: str = ""
    # Claims of the person who "signs in" at the next authorization request.
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "u-100", "preferred_username": "bob"})
    # (claims) -> ID token: how the next ID token is made (default: signed properly by ``key``).
    tamper: Callable[[dict[str, Any]], str] | None = None
    # Answer the next authorization request with this error instead of a code.
    error: str | None = None
    send_iss: bool = True
    # Show a page with a "Continue" link instead of redirecting at once, like a real provider's login
    # page: the way back is then a navigation begun on the provider's site (cross-site for the broker).
    interactive: bool = False
    codes: dict[str, AuthorizationRequest] = field(default_factory=dict)
    token_requests: list[TokenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def issuer(self) -> str:
        return f"http://{self.browser_host}:{self.port}"

    @property
    def authorization_endpoint(self) -> str:
        return f"http://{self.browser_host}:{self.port}/authorize"

    @property
    def token_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def settings(self, secret_file) -> dict[str, Any]:
        """BrokerSettings overrides for a broker that trusts this provider."""
        if self.client_secret is not None:
            secret_file.write_text(self.client_secret + "\n", encoding="utf-8")
        return {"ui_oidc_issuer": self.issuer, "ui_oidc_client_id": CLIENT_ID,
                "ui_oidc_client_secret_file": secret_file if self.client_secret is not None else None,
                "ui_oidc_authorization_endpoint": self.authorization_endpoint,
                "ui_oidc_token_endpoint": self.token_endpoint, "ui_oidc_jwks_url": self.jwks_url}

    def id_token_claims(self, request: AuthorizationRequest) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "azp": CLIENT_ID, "iat": now, "exp": now + 300,
                  "auth_time": now, **request.user}
        if request.nonce is not None:
            claims["nonce"] = request.nonce
        return claims

    # -- endpoints ------------------------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != self.redirect_uri:
            # A real provider never redirects to an unregistered redirect_uri.
            return 400, {"Content-Type": "text/plain"}, b"unknown client or redirect_uri"
        back: dict[str, str] = {"state": query.get("state", "")}
        if self.send_iss:
            back["iss"] = self.issuer
        if self.error is not None:
            back["error"] = self.error
            back["error_description"] = "<script>alert(1)</script> the user said no"
        elif query.get("response_type") != "code":
            back["error"] = "unsupported_response_type"
        else:
            code = secrets.token_urlsafe(24)
            with self.lock:
                self.codes[code] = AuthorizationRequest(
                    client_id=CLIENT_ID, redirect_uri=query["redirect_uri"], nonce=query.get("nonce"),
                    code_challenge=query.get("code_challenge"),
                    code_challenge_method=query.get("code_challenge_method"), user=dict(self.user))
            back["code"] = code
        location = f"{self.redirect_uri}?{urlencode(back)}"
        if self.interactive:
            page = f'<!doctype html><title>Fake IdP</title><a id="idp-continue" href="{html.escape(location)}">Continue</a>'
            return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()
        return 302, {"Location": location}, b""

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        refusal = self._client_refusal(form, authorization)
        if refusal is not None:
            return self._refuse(form, 401, "invalid_client", refusal)
        if form.get("grant_type") != "authorization_code":
            return self._refuse(form, 400, "unsupported_grant_type", "grant_type")
        with self.lock:
            request = self.codes.pop(form.get("code", ""), None)  # one-time: gone whatever happens next
        if request is None:
            return self._refuse(form, 400, "invalid_grant", "unknown or used code")
        if form.get("redirect_uri") != request.redirect_uri:
            return self._refuse(form, 400, "invalid_grant", "redirect_uri")
        verifier = form.get("code_verifier")
        # Strict PKCE: the code must have been asked for with an S256 challenge, and the verifier must fit it.
        if request.code_challenge is None or request.code_challenge_method != "S256":
            return self._refuse(form, 400, "invalid_grant", "no S256 challenge")
        if not verifier or s256(verifier) != request.code_challenge:
            return self._refuse(form, 400, "invalid_grant", "pkce")
        claims = self.id_token_claims(request)
        id_token = self.tamper(claims) if self.tamper else self.key.sign(claims)
        self.token_requests.append(TokenRequest(form=form, outcome="ok"))
        body = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                "id_token": id_token}
        return 200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, json.dumps(body).encode()

    def _client_refusal(self, form: dict[str, str], authorization: str | None) -> str | None:
        if self.client_secret is None:
            return None if form.get("client_id") == CLIENT_ID and not authorization else "public client auth"
        if not authorization or not authorization.startswith("Basic "):
            return "no client_secret_basic"
        try:
            user, _, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
        except ValueError:
            return "malformed basic auth"
        if unquote_plus(user) != CLIENT_ID or unquote_plus(password) != self.client_secret:
            return "wrong client credentials"
        return None

    def _refuse(self, form: dict[str, str], status: int, error: str, why: str) -> tuple[int, dict[str, str], bytes]:
        self.token_requests.append(TokenRequest(form=form, outcome=why))
        return status, {"Content-Type": "application/json"}, json.dumps({"error": error}).encode()

    def jwks(self) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps({"keys": [self.key.public_jwk()]}).encode()


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@contextmanager
def running_idp(*, browser_host: str = "127.0.0.1", client_secret: str | None = CLIENT_SECRET) -> Iterator[FakeIdp]:
    holder: dict[str, FakeIdp] = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, answer: tuple[int, dict[str, str], bytes]) -> None:
            status, headers, body = answer
            write_response(self, status, headers, body)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            idp = holder["idp"]
            parts = urlsplit(self.path)
            if parts.path == "/authorize":
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                self._answer(idp.authorize(query))
            elif parts.path == "/jwks.json":
                self._answer(idp.jwks())
            else:
                self._answer((404, {}, b"not found"))

        def do_POST(self) -> None:  # noqa: N802
            idp = holder["idp"]
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlsplit(self.path).path == "/token":
                self._answer(idp.token(form, self.headers.get("Authorization")))
            else:
                self._answer((404, {}, b"not found"))

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["idp"] = FakeIdp(server=server, browser_host=browser_host, client_secret=client_secret)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield holder["idp"]
    finally:
        server.shutdown()
        server.server_close()
