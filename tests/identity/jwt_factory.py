"""Test factories for identity tests: real keys, hand-built JWTs, a real JWKS server.

Shared by tests/identity and tests/security (imported by their conftest files).
Nothing here is mocked: keys come from ``cryptography`` and the JWKS is served
over HTTP by ``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from broker.identity.oidc import HttpxJwksFetcher, OidcIssuerConfig, OidcVerifier

ISSUER = "https://idp.example"
AUDIENCE = "credential-broker"
SUBJECT = "ci-deployer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class SigningKey:
    """A private key, the algorithm it signs with, and its kid."""

    private_key: Any
    alg: str
    kid: str

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", **extra}

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, **header: Any) -> str:
        """A compact JWS built by hand (so headers are exactly what the test says)."""
        alg = alg or self.alg
        full_header = {"alg": alg, "typ": "JWT", "kid": self.kid, **header}
        full_header = {k: v for k, v in full_header.items() if v is not None}
        signing_input = f"{_segment(full_header)}.{_segment(claims)}"
        signature = get_default_algorithms()[alg].sign(signing_input.encode("ascii"), self.private_key)
        return f"{signing_input}.{b64url(signature)}"


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{_segment(header)}.{_segment(claims)}.{b64url(signature)}"


def rsa_key(kid: str, alg: str = "RS256", bits: int = 2048) -> SigningKey:
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=bits), alg, kid)


def ec_key(kid: str, curve: ec.EllipticCurve | None = None, alg: str = "ES256") -> SigningKey:
    return SigningKey(ec.generate_private_key(curve or ec.SECP256R1()), alg, kid)


def ed25519_key(kid: str) -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid)


def standard_claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": int(now),
        "exp": int(now) + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


class FakeClock:
    """Wall time plus an offset the test can move."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class JwksServer:
    """An HTTP server on 127.0.0.1 serving configurable documents and counting hits."""

    server: ThreadingHTTPServer
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/jwks.json"

    def serve_json(self, path: str, document: Any, status: int = 200) -> None:
        self.routes[path] = (status, json.dumps(document).encode("utf-8"), {"Content-Type": "application/json"})

    def serve_jwks(self, *keys: SigningKey) -> None:
        self.serve_json("/jwks.json", {"keys": [k.public_jwk() for k in keys]})

    def redirect(self, path: str, location: str) -> None:
        self.routes[path] = (302, b"", {"Location": location})

    def hit_count(self, path: str | None = None) -> int:
        return len(self.hits) if path is None else self.hits.count(path)



def write_response(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
    """Answer an ``http.server`` request: status, headers, Content-Length, body."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)

def _start_server() -> JwksServer:
    holder: dict[str, JwksServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            state = holder["state"]
            state.hits.append(self.path)
            status, body, headers = state.routes.get(self.path, (404, b"not found", {}))
            write_response(self, status, headers, body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["state"] = JwksServer(server=server)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return holder["state"]


def closed_port_url(path: str = "/jwks.json") -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def make_verifier(jwks_url: str, *, clock: FakeClock | None = None, fetcher: Any = None,
                  refetch_min_interval_seconds: float = 30, **config: Any) -> OidcVerifier:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": jwks_url,
        "algorithms": ("RS256", "PS256", "ES256", "ES384", "EdDSA"),
    }
    settings.update(config)
    return OidcVerifier(
        OidcIssuerConfig(**settings),
        fetcher=fetcher or HttpxJwksFetcher(timeout_seconds=2.0),
        clock=clock or FakeClock(),
        refetch_min_interval_seconds=refetch_min_interval_seconds,
    )


# -- fixtures (re-exported by the conftest files) ------------------------------


@pytest.fixture(scope="session")
def rsa_signer() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(scope="session")
def ec_signer() -> SigningKey:
    return ec_key("ec-1")


@pytest.fixture(scope="session")
def ed_signer() -> SigningKey:
    return ed25519_key("ed-1")


@pytest.fixture()
def jwks_server() -> Iterator[JwksServer]:
    state = _start_server()
    try:
        yield state
    finally:
        state.server.shutdown()
        state.server.server_close()


@pytest.fixture()
def attacker_server() -> Iterator[JwksServer]:
    """A second server standing for attacker-controlled URLs; it must never be hit."""
    state = _start_server()
    try:
        yield state
    finally:
        state.server.shutdown()
        state.server.server_close()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def verifier(jwks_server: JwksServer, rsa_signer: SigningKey, ec_signer: SigningKey,
             ed_signer: SigningKey, clock: FakeClock) -> OidcVerifier:
    jwks_server.serve_jwks(rsa_signer, ec_signer, ed_signer)
    return make_verifier(jwks_server.jwks_url, clock=clock)
