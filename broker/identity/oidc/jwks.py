"""Fetching and caching an issuer's JWKS, from the configured URL only, and the keys it may hold."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.errors import IdentityProviderUnavailable
from broker.identity.oidc.algorithms import (
    ASYMMETRIC_ALGORITHMS,
    JWK_LOADERS,
    KEY_FIT,
    MAX_KID_CHARS,
    MIN_RSA_KEY_BITS,
    PRIVATE_JWK_MEMBERS,
    Clock,
    invalid_token,
)
from broker.identity.oidc.urls import is_loopback

# ---------------------------------------------------------------------------
# JWKS fetching and caching
# ---------------------------------------------------------------------------


class JwksFetchError(Exception):
    """The JWKS could not be fetched or was not a JWKS.  Internal; never shown to callers."""


class JwksFetcher(Protocol):
    def fetch(self, url: str) -> dict[str, Any]:
        """Return the JSON document at ``url``; raise :class:`JwksFetchError` on any failure."""
        ...




class HttpxJwksFetcher:
    """Fetch a JWKS over HTTPS with httpx.

    Plain http is refused except to loopback addresses (tests, sidecars) or when
    ``allow_insecure_http`` is set explicitly.
    """

    def __init__(self, *, timeout_seconds: float = 5.0, max_bytes: int = 512 * 1024,
                 max_redirects: int = 3, allow_insecure_http: bool = False) -> None:
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._allow_insecure_http = allow_insecure_http
        self._client = httpx.Client(
            # NOTE: bounded on every phase so a slow IdP cannot pin a worker.
            timeout=httpx.Timeout(timeout_seconds),
            # NOTE: redirects are followed by hand below, and only within the same
            # origin, so a compromised path cannot send us to another host.
            follow_redirects=False,
            # NOTE: ignore proxy / netrc settings from the environment: no
            # credentials of ours ride along to the IdP.
            trust_env=False,
            # NOTE: TLS certificates verified (the default, written out).
            verify=True,
        )

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            return
        if parts.scheme == "http" and parts.hostname and (
                self._allow_insecure_http or is_loopback(parts.hostname)):
            return
        raise JwksFetchError("JWKS URL must be https")

    def fetch(self, url: str) -> dict[str, Any]:
        self._check_url(url)
        origin = urlsplit(url)[:2]
        for _hop in range(self._max_redirects + 1):
            try:
                with self._client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if urlsplit(target)[:2] != origin:
                            raise JwksFetchError("JWKS redirect to another origin refused")
                        url = target
                        continue
                    if response.status_code != 200:
                        raise JwksFetchError(f"JWKS endpoint answered HTTP {response.status_code}")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > self._max_bytes:
                            raise JwksFetchError("JWKS document too large")
            except httpx.HTTPError as exc:
                raise JwksFetchError(f"JWKS endpoint unreachable ({type(exc).__name__})") from exc
            try:
                document = json.loads(bytes(body))
            except ValueError as exc:
                raise JwksFetchError("JWKS document is not JSON") from exc
            if not isinstance(document, dict):
                raise JwksFetchError("JWKS document is not a JSON object")
            return document
        raise JwksFetchError("too many JWKS redirects")

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class JwksKey:
    """One usable public verification key from an issuer's JWKS."""

    kid: str
    kty: str
    public_key: object  # a cryptography public key
    alg: str | None  # the JWK's own "alg" member, if it pins one

    def fits(self, alg: str) -> bool:
        """May this key verify a signature made with ``alg``?"""
        if alg not in KEY_FIT:
            return False
        kty, key_check = KEY_FIT[alg]
        return self.kty == kty and key_check(self.public_key) and (self.alg is None or self.alg == alg)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, JwksKey]:
    """The usable public signing keys of a JWKS, by kid.

    Keys that are not asymmetric public signing keys, have no kid, a weak RSA
    modulus, private members, or a kid shared with another key are left out.
    """
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list) or len(entries) > 100:
        raise JwksFetchError("JWKS has no 'keys' list")
    keys: dict[str, JwksKey] = {}
    ambiguous: set[str] = set()
    for entry in entries:
        key = _parse_jwk(entry)
        if key is None:
            continue
        if key.kid in keys:
            ambiguous.add(key.kid)
        keys[key.kid] = key
    # NOTE: two keys under one kid: we cannot tell which one the token meant, so
    # neither is used.
    for kid in ambiguous:
        del keys[kid]
    return keys


def _parse_jwk(entry: object) -> JwksKey | None:
    if not isinstance(entry, dict):
        return None
    kid, kty, alg, use = entry.get("kid"), entry.get("kty"), entry.get("alg"), entry.get("use")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        return None
    if kty not in JWK_LOADERS or PRIVATE_JWK_MEMBERS & entry.keys():
        return None
    if use is not None and use != "sig":
        return None
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        return None
    try:
        public_key = JWK_LOADERS[kty](json.dumps(entry))
    except (jwt.exceptions.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_KEY_BITS:
        return None
    if not any(check(public_key) for _kty, check in KEY_FIT.values()):
        return None  # not a public key of a kind we verify with (e.g. a private key, P-521)
    return JwksKey(kid=kid, kty=kty, public_key=public_key, alg=alg)


class JwksCache:
    """The keys of one issuer, fetched from its configured JWKS URL.

    * Keys are used for ``cache_seconds`` after a successful fetch; then a
      refetch is needed.
    * An unknown kid triggers at most one refetch per
      ``refetch_min_interval_seconds`` (a flood of made-up kids cannot turn us
      into a load generator against the IdP).
    * If the endpoint is unreachable, keys fetched earlier keep working until
      their lifetime ends; after that every verification fails with
      :class:`IdentityProviderUnavailable` (503) until a fetch succeeds.
    """

    def __init__(self, *, jwks_url: str, fetcher: JwksFetcher, cache_seconds: float = 300,
                 refetch_min_interval_seconds: float = 30, clock: Clock = time.time) -> None:
        if cache_seconds <= 0 or refetch_min_interval_seconds < 0:
            raise ValueError("cache_seconds must be positive and refetch_min_interval_seconds non-negative")
        self._jwks_url = jwks_url
        self._fetcher = fetcher
        self._cache_seconds = cache_seconds
        self._refetch_min_interval = refetch_min_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, JwksKey] = {}
        self._fetched_at: float | None = None  # time of the last *successful* fetch
        self._attempted_at: float | None = None  # time of the last attempt, successful or not
        self._failed_at: float | None = None  # time of the last failed attempt, if it was the latest

    def get_key(self, kid: str) -> JwksKey:
        with self._lock:
            now = self._clock()
            if not self._fresh(now):
                self._refresh(now)
            key = self._keys.get(kid)
            if key is not None:
                return key
            if self._attempted_at is not None and now - self._attempted_at < self._refetch_min_interval:
                raise invalid_token("The token's signing key is not known to its issuer.")
            # Unknown kid: perhaps the IdP rotated its keys.  One refetch.
            self._refresh(now)
            key = self._keys.get(kid)
            if key is None:
                raise invalid_token("The token's signing key is not known to its issuer.")
            return key

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._cache_seconds

    def _refresh(self, now: float) -> None:
        stale = not self._fresh(now)
        if (stale and self._failed_at is not None
                and now - self._failed_at < self._refetch_min_interval):
            # The last attempt failed a moment ago; do not hammer the IdP.
            raise IdentityProviderUnavailable("The identity provider's signing keys are unavailable.")
        self._attempted_at = now
        try:
            keys = parse_jwks(self._fetcher.fetch(self._jwks_url))
        except JwksFetchError as exc:
            self._failed_at = now
            if not stale:
                return  # cached keys are still within their lifetime; keep using them
            raise IdentityProviderUnavailable(
                "The identity provider's signing keys are unavailable.") from exc
        self._keys = keys
        self._fetched_at = now
        self._failed_at = None
