"""OIDC workload identity: verify a JWT issued by a trusted identity provider.

One :class:`OidcVerifier` per trusted issuer.  The verifier reads the unverified
JOSE header only to *reject* things (algorithm, forbidden headers, token type)
and to pick a key by ``kid`` from the issuer's JWKS, which is fetched from the
configured URL and never from a URL found in the token.  The key then decides
the single algorithm handed to :func:`jwt.decode`.

A valid token says only that its issuer signed it.  An issuer that signs for
many tenants (GitHub Actions, GitLab, a shared Kubernetes cluster) signs for
strangers too, so an issuer is pinned to *its* workloads: ``required_claims``
(exact string claims, e.g. ``repository_owner_id``) and ``principal_pattern``
(a bounded regular expression the principal claim must fully match), checked
by the claim rules of :mod:`broker.identity.claim_rules`; and
``require_registered`` has the authenticator accept only principals of the
broker's directory.  :func:`issuer_warnings` names the issuers pinned by none
of them.

Every failure is an :class:`~broker.errors.Unauthenticated` (401) whose message
never echoes the token; an unreachable JWKS endpoint with no usable cached keys
is an :class:`~broker.errors.IdentityProviderUnavailable` (503).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.domain.principals import Principal, Role
from broker.errors import IdentityProviderUnavailable, InvalidInput, Unauthenticated
from broker.identity.bounded_patterns import MAX_VALUE_CHARS, UnboundedPattern, compile_bounded_pattern
from broker.identity.claim_rules import WORKLOAD_TOKEN, ClaimEquals, ClaimMatches, ClaimRule, pinned_claims

Clock = Callable[[], float]

# ---------------------------------------------------------------------------
# Algorithms and the keys that fit them
# ---------------------------------------------------------------------------

# NOTE: asymmetric algorithms only.  A symmetric (HS*) algorithm would let anyone
# holding the issuer's *public* key mint tokens (CVE-2022-29217 shape), and
# "none" means no signature at all.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)


def _is_rsa(key: object) -> bool:
    return isinstance(key, rsa.RSAPublicKey)


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _is_p384(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)


def _is_edwards(key: object) -> bool:
    return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))


# NOTE: the key decides which algorithm may be used with it, never the header
# alone: alg -> (required JWK kty, check on the loaded public key).
KEY_FIT: dict[str, tuple[str, Callable[[object], bool]]] = {
    "RS256": ("RSA", _is_rsa),
    "RS384": ("RSA", _is_rsa),
    "RS512": ("RSA", _is_rsa),
    "PS256": ("RSA", _is_rsa),
    "PS384": ("RSA", _is_rsa),
    "PS512": ("RSA", _is_rsa),
    "ES256": ("EC", _is_p256),
    "ES384": ("EC", _is_p384),
    "EdDSA": ("OKP", _is_edwards),
}
assert set(KEY_FIT) == ASYMMETRIC_ALGORITHMS

_JWK_LOADERS: dict[str, Callable[[str], object]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}
# JWK members that only a private key has (RFC 7518 section 6); a JWKS carrying
# them is broken and such a key is never used.
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_KEY_BITS = 2048

# NOTE: header parameters that point at key material chosen by the token's
# author.  We never fetch or trust them; their mere presence refuses the token.
FORBIDDEN_HEADERS: frozenset[str] = frozenset({"jku", "x5u", "jwk", "x5c"})
# NOTE: we implement no JWS extension, so any "crit" (and the RFC 7797 "b64"
# unencoded-payload mode) is refused rather than half-understood.
UNSUPPORTED_HEADERS: frozenset[str] = frozenset({"crit", "b64"})

MAX_TOKEN_CHARS = 16 * 1024
MAX_KID_CHARS = 256
MAX_GROUPS = 100
# Characters allowed in identifiers taken from a token (principal, acts_for,
# groups): enough for emails, URLs, Auth0-style "provider|id" and GitHub-style subjects
# ("repo:org/name:ref:refs/heads/main"), nothing that could be whitespace,
# quoting, markup or a glob.
SAFE_IDENTIFIER = re.compile(r"^[A-Za-z0-9._:@/+=|-]{1,256}$")
# NOTE: a principal_pattern's matching time is bounded for values this long at most (and the principal
# claim is checked against SAFE_IDENTIFIER before any pattern runs).
assert MAX_VALUE_CHARS >= 256
# The stable code of a token whose claims are not the ones its issuer is pinned to.
CLAIM_MISMATCH = "claim_mismatch"
_PREFIX_FORMAT = re.compile(r"^[a-z]+:$")
HUMAN_PREFIX = "human:"


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, code="invalid_token")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcIssuerConfig:
    """One trusted issuer.  Invalid configurations fail at construction."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    principal_claim: str = "sub"
    principal_prefix: str = "agent:"
    roles: tuple[str, ...] = ("agent",)
    acts_for_claim: str | None = None
    groups_claim: str | None = None
    leeway_seconds: int = 30
    allowed_typ: tuple[str, ...] = ("JWT", "at+jwt")
    jwks_cache_seconds: int = 300
    max_token_age_seconds: int | None = None
    # Tokens with no "typ" header are common (many IdPs omit it) and accepted.
    allow_missing_typ: bool = True
    # Which of the issuer's workloads are accepted.  A JSON object {claim: exact string}; every claim must be
    # present and a string equal to its value (no case folding, no list membership).  Empty: nothing pinned.
    # Stored as (name, value) pairs.
    required_claims: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    # A regular expression the principal claim's whole value must match (bounded: see bounded_patterns).
    principal_pattern: str | None = None
    # Accept only principals the broker's directory holds (and has not disabled); checked by the
    # authenticator.  Off by default, for compatibility: issuer_warnings() names issuers that rely on it.
    require_registered: bool = False
    # Filled in by __post_init__: the roles as Role members, and the claim rules of the pins.
    role_set: frozenset[Role] = field(init=False, repr=False, compare=False)
    pins: tuple[ClaimRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks: dict[str, tuple[bool, str]] = {
            "issuer": (isinstance(self.issuer, str) and bool(self.issuer.strip())
                       and self.issuer == self.issuer.strip(), "must be a non-empty string"),
            "audience": (isinstance(self.audience, str) and bool(self.audience.strip()),
                         "must be a non-empty string"),
            "jwks_url": (isinstance(self.jwks_url, str)
                         and urlsplit(self.jwks_url).scheme in ("https", "http")
                         and bool(urlsplit(self.jwks_url).hostname), "must be an http(s) URL"),
            "algorithms": (isinstance(self.algorithms, tuple) and len(self.algorithms) > 0
                           and all(a in ASYMMETRIC_ALGORITHMS for a in self.algorithms),
                           f"must be a non-empty tuple drawn from {sorted(ASYMMETRIC_ALGORITHMS)};"
                           " symmetric (HS*) algorithms and 'none' are never allowed"),
            "principal_claim": (isinstance(self.principal_claim, str) and bool(self.principal_claim),
                                "must name a claim"),
            "principal_prefix": (isinstance(self.principal_prefix, str)
                                 and bool(_PREFIX_FORMAT.fullmatch(self.principal_prefix)),
                                 "must look like 'agent:'"),
            "roles": (isinstance(self.roles, tuple) and len(self.roles) > 0
                      and all(r in Role._value2member_map_ for r in self.roles),
                      f"must be a non-empty tuple of {[r.value for r in Role]}"),
            "leeway_seconds": (isinstance(self.leeway_seconds, int) and 0 <= self.leeway_seconds <= 300,
                               "must be between 0 and 300"),
            "allowed_typ": (isinstance(self.allowed_typ, tuple)
                            and all(isinstance(t, str) and t for t in self.allowed_typ),
                            "must be a tuple of non-empty strings"),
            "jwks_cache_seconds": (isinstance(self.jwks_cache_seconds, int) and self.jwks_cache_seconds > 0,
                                   "must be a positive number of seconds"),
            "max_token_age_seconds": (self.max_token_age_seconds is None
                                      or (isinstance(self.max_token_age_seconds, int)
                                          and self.max_token_age_seconds > 0),
                                      "must be None or a positive number of seconds"),
            # NOTE: the JSON boolean only: the string "false" is truthy.
            "require_registered": (isinstance(self.require_registered, bool), "must be true or false"),
        }
        for name, (ok, requirement) in checks.items():
            if not ok:
                raise ValueError(f"OidcIssuerConfig.{name} {requirement}")
        object.__setattr__(self, "role_set", frozenset(Role(r) for r in self.roles))
        try:
            required = pinned_claims(self.required_claims)
        except ValueError as exc:
            raise ValueError(f"OidcIssuerConfig.required_claims {exc}") from exc
        pins: list[ClaimRule] = [ClaimEquals(name, value, code=CLAIM_MISMATCH, who=WORKLOAD_TOKEN)
                                 for name, value in required]
        if self.principal_pattern is not None:
            try:
                pattern = compile_bounded_pattern(self.principal_pattern)
            except UnboundedPattern as exc:
                raise ValueError(f"OidcIssuerConfig.principal_pattern {exc}") from exc
            pins.append(ClaimMatches(self.principal_claim, pattern, code=CLAIM_MISMATCH, who=WORKLOAD_TOKEN))
        object.__setattr__(self, "required_claims", required)
        object.__setattr__(self, "pins", tuple(pins))

    @property
    def pinned(self) -> bool:
        """Does anything narrow the issuer's tokens down to this deployment's workloads?

        A pin that constrains nothing does not count: a required claim the verifier checks anyway (``iss``,
        ``aud``, ...), or a pattern that a stranger's principal matches (``.*``, ``repo:.*``).
        """
        if self.require_registered:
            return True
        if any(name not in _VERIFIED_ANYWAY for name, _value in self.required_claims):
            return True
        patterns = [pin.pattern for pin in self.pins if isinstance(pin, ClaimMatches)]
        return any(not any(pattern.fullmatch(probe) for probe in _STRANGERS) for pattern in patterns)

    def weaknesses(self) -> list[str]:
        """What a security reviewer would flag in this issuer, as sentences (empty when none)."""
        found = []
        authority = sorted(r.value for r in self.role_set if r is not Role.AGENT)
        if authority and not self.require_registered:
            # NOTE: pins narrow who; they do not make a broad role safe to hand to every workload they admit.
            found.append(f"OIDC issuer {self.issuer!r} gives the roles {', '.join(authority)} to every principal its "
                         "tokens name that the directory does not know: grant approver, reviewer or admin in the "
                         "directory instead, or set require_registered: true.")
        if Role.AGENT in self.role_set and self.acts_for_claim is None and not self.require_registered:
            # NOTE: an agent acts for a human, who is accountable for it and can never co-sign its requests; an agent
            # the directory does not know, from an issuer that maps no acts_for claim, acts for nobody.
            found.append(f"OIDC issuer {self.issuer!r} maps no acts_for_claim: agents it names that the directory "
                         "does not know act for no human (no one accountable, no one excluded from co-signing). "
                         "Set acts_for_claim, or register its agents with --acts-for and set require_registered: true.")
        if self.pinned:
            return found
        roles = ", ".join(sorted(r.value for r in self.role_set))
        return found + [f"OIDC issuer {self.issuer!r} accepts every principal its tokens name, registered or not, with "
                f"the roles {roles}: any workload this issuer signs a token for (audience {self.audience!r}) "
                f"becomes '{self.principal_prefix}<{self.principal_claim}>'. Pin it in BROKER_OIDC_ISSUERS_FILE "
                "with required_claims and/or principal_pattern, or set require_registered: true."]


# ---------------------------------------------------------------------------
# JWKS fetching and caching
# ---------------------------------------------------------------------------


class JwksFetchError(Exception):
    """The JWKS could not be fetched or was not a JWKS.  Internal; never shown to callers."""


class JwksFetcher(Protocol):
    def fetch(self, url: str) -> dict[str, Any]:
        """Return the JSON document at ``url``; raise :class:`JwksFetchError` on any failure."""
        ...


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
                self._allow_insecure_http or _is_loopback(parts.hostname)):
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
    if kty not in _JWK_LOADERS or _PRIVATE_JWK_MEMBERS & entry.keys():
        return None
    if use is not None and use != "sig":
        return None
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        return None
    try:
        public_key = _JWK_LOADERS[kty](json.dumps(entry))
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
                raise _invalid("The token's signing key is not known to its issuer.")
            # Unknown kid: perhaps the IdP rotated its keys.  One refetch.
            self._refresh(now)
            key = self._keys.get(kid)
            if key is None:
                raise _invalid("The token's signing key is not known to its issuer.")
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


# ---------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------

_JWT_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_safe_identifier(value: object) -> bool:
    return isinstance(value, str) and bool(SAFE_IDENTIFIER.fullmatch(value))


def _typ_name(typ: str) -> str:
    # RFC 7515 section 4.1.9: "application/" may be omitted and media types are
    # case-insensitive.
    lowered = typ.lower()
    return lowered[len("application/"):] if lowered.startswith("application/") else lowered


# A claim check gets the claim's value and answers "acceptable?".
ClaimCheck = Callable[[Any], bool]


class OidcVerifier:
    """Verify tokens of one issuer and turn them into a :class:`Principal`."""

    def __init__(self, config: OidcIssuerConfig, *, fetcher: JwksFetcher | None = None,
                 clock: Clock = time.time, jwks_cache: JwksCache | None = None,
                 refetch_min_interval_seconds: float = 30) -> None:
        self.config = config
        self._clock = clock
        self._jwks = jwks_cache or JwksCache(
            jwks_url=config.jwks_url,
            fetcher=fetcher if fetcher is not None else HttpxJwksFetcher(),
            cache_seconds=config.jwks_cache_seconds,
            refetch_min_interval_seconds=refetch_min_interval_seconds,
            clock=clock,
        )
        self._required_claims, self._optional_claims = self._claim_checks()
        # NOTE: an empty table would mean "nothing checked"; that is a bug, not a pass.
        if not self._required_claims:
            raise ValueError("OidcVerifier has no required claim checks")

    @property
    def issuer(self) -> str:
        return self.config.issuer

    # -- claim tables --------------------------------------------------------

    def _claim_checks(self) -> tuple[dict[str, ClaimCheck], dict[str, ClaimCheck]]:
        cfg = self.config
        leeway = cfg.leeway_seconds

        def issuer_matches(value: Any) -> bool:
            # NOTE: exact string equality; no list, no substring, no prefix
            # (CVE-2024-53861: "https://idp.example" vs "https://idp.example.evil").
            return isinstance(value, str) and value == cfg.issuer

        def audience_matches(value: Any) -> bool:
            # NOTE: our audience must appear exactly, as the string or as one
            # element of a list of strings.
            if isinstance(value, str):
                return value == cfg.audience
            return (isinstance(value, list) and 0 < len(value) <= 32
                    and all(isinstance(a, str) for a in value) and cfg.audience in value)

        def not_expired(value: Any) -> bool:
            return _is_number(value) and value > self._clock() - leeway

        def issued_in_past(value: Any) -> bool:
            # NOTE: iat in the future beyond leeway is refused (a clock-skewed or
            # pre-minted token); an optional maximum age bounds replay of old tokens.
            if not _is_number(value) or value > self._clock() + leeway:
                return False
            return cfg.max_token_age_seconds is None or self._clock() - value <= cfg.max_token_age_seconds + leeway

        def not_before_passed(value: Any) -> bool:
            return _is_number(value) and value <= self._clock() + leeway

        def groups_valid(value: Any) -> bool:
            return (isinstance(value, list) and len(value) <= MAX_GROUPS
                    and all(_is_safe_identifier(g) for g in value))

        def acts_for_valid(value: Any) -> bool:
            return _is_safe_identifier(value) and (":" not in value or value.startswith(HUMAN_PREFIX))

        required: dict[str, ClaimCheck] = {
            "iss": issuer_matches,
            "aud": audience_matches,
            "exp": not_expired,
            "iat": issued_in_past,
            "sub": _is_safe_identifier,
            # NOTE: the claim that names the principal: a non-empty string of safe characters.
            cfg.principal_claim: _is_safe_identifier,
        }
        optional: dict[str, ClaimCheck] = {"nbf": not_before_passed}
        if cfg.acts_for_claim is not None:
            optional[cfg.acts_for_claim] = acts_for_valid
        if cfg.groups_claim is not None:
            optional[cfg.groups_claim] = groups_valid
        return required, optional

    # -- header checks -------------------------------------------------------

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str]:
        """Reject on the unverified header; return ``(alg, kid)``."""
        cfg = self.config
        alg = header.get("alg")
        # NOTE: alg checked against the allow-list *before* any key lookup; exact
        # case, so "none", "None", "NONE" and "HS256" all stop here.
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise _invalid("The token's signing algorithm is not accepted.")
        # NOTE: jku/x5u/jwk/x5c would let the token choose its own key; never fetched.
        if FORBIDDEN_HEADERS & header.keys():
            raise _invalid("The token names its own signing key, which is not accepted.")
        if UNSUPPORTED_HEADERS & header.keys():
            raise _invalid("The token uses an unsupported JWS extension.")
        # NOTE: typ guards against cross-token confusion (a logout or ID token
        # replayed as an access credential).
        typ = header.get("typ")
        if typ is None:
            if not cfg.allow_missing_typ:
                raise _invalid("The token has no type.")
        elif not isinstance(typ, str) or _typ_name(typ) not in {_typ_name(t) for t in cfg.allowed_typ}:
            raise _invalid("The token is of a type that is not accepted.")
        kid = header.get("kid")
        # NOTE: kid required: without it we would have to try keys until one fits.
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
            raise _invalid("The token does not name its signing key.")
        return alg, kid

    # -- verification --------------------------------------------------------

    def verify(self, token: str) -> Principal:
        return self._principal(self.verified_claims(token))

    def verified_claims(self, token: str) -> dict[str, Any]:
        """The token's claims once its header, signature and every claim check have passed."""
        cfg = self.config
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise _invalid("The token is empty or too large.")
        segments = token.split(".")
        if len(segments) != 3 or not all(_JWT_SEGMENT.fullmatch(s) for s in segments):
            raise _invalid("The token is not a signed JWT.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.PyJWTError as exc:
            raise _invalid("The token's header is malformed.") from exc
        alg, kid = self._check_header(header)

        key = self._jwks.get_key(kid)
        # NOTE: the key's type must fit the algorithm; the header never picks the key type.
        if not key.fits(alg):
            raise _invalid("The token's algorithm does not match its signing key.")

        try:
            claims = jwt.decode(
                token,
                key.public_key,
                # NOTE: exactly one algorithm, the one this key fits.
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                # NOTE: PyJWT checks exp/nbf/iat against wall time; the claim table
                # below checks them again against the injected clock (the same
                # wall time in production), so both must pass.
                leeway=cfg.leeway_seconds,
                options={
                    # NOTE: every option written out, even where it equals the default.
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    # NOTE: aud may be a list (OIDC allows it); our own table checks
                    # it holds our audience exactly.
                    "strict_aud": False,
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.exceptions.ExpiredSignatureError as exc:
            raise Unauthenticated("The token has expired.", code="token_expired") from exc
        except jwt.exceptions.PyJWTError as exc:
            raise _invalid("The token failed verification.") from exc

        self._check_claims(claims)
        self._check_pins(claims)
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        for name, check in self._required_claims.items():
            if name not in claims or not check(claims[name]):
                raise _invalid(f"The token's {name!r} claim is missing or not acceptable.")
        for name, check in self._optional_claims.items():
            if name in claims and not check(claims[name]):
                raise _invalid(f"The token's {name!r} claim is not acceptable.")

    def _check_pins(self, claims: Mapping[str, Any]) -> None:
        # NOTE: unlike the tables above, no pins is not a failure: the keys are optional and an issuer
        # without them is named by issuer_warnings() at start-up.
        for rule in self.config.pins:
            refusal = rule.verify(claims)
            if refusal is not None:
                raise Unauthenticated(refusal.message, code=refusal.code)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        cfg = self.config
        acts_for: str | None = None
        if cfg.acts_for_claim is not None and cfg.acts_for_claim in claims:
            human = claims[cfg.acts_for_claim]
            acts_for = human if human.startswith(HUMAN_PREFIX) else f"{HUMAN_PREFIX}{human}"
        groups: frozenset[str] = frozenset()
        if cfg.groups_claim is not None and cfg.groups_claim in claims:
            groups = frozenset(claims[cfg.groups_claim])
        return Principal(
            id=f"{cfg.principal_prefix}{claims[cfg.principal_claim]}",
            roles=cfg.role_set,
            acts_for=acts_for,
            groups=groups,
            auth_method=f"oidc:{cfg.issuer}",
        )


# ---------------------------------------------------------------------------
# The issuers file
# ---------------------------------------------------------------------------

# Issuers that sign tokens for anyone's workloads, exactly as they write "iss": anyone can run a GitHub
# Actions workflow, a gitlab.com pipeline, a Terraform Cloud run or a Buildkite job, or own a Google
# account, and ask for a token with any audience.  Trusted with nothing pinned, they would make every
# stranger an agent; such an issuers file does not load.
# Claims every token of the issuer carries, checked by the verifier itself: pinning them narrows nothing.
_VERIFIED_ANYWAY = frozenset({"iss", "aud", "azp", "exp", "nbf", "iat", "jti", "typ"})
# Principals of workloads that are plainly not this deployment's, in the shapes CI systems and clusters use.
_STRANGERS = ("x", "stranger", "repo:stranger/x:ref:refs/heads/main", "repo:stranger/x:environment:prod",
              "project_path:stranger/x:ref_type:branch:ref:main", "system:serviceaccount:stranger:x",
              "organization:stranger:project:x:workspace:x:run_phase:apply", "104857600123456789012")

SHARED_ISSUERS: frozenset[str] = frozenset({
    "https://token.actions.githubusercontent.com",
    "https://gitlab.com",
    "https://app.terraform.io",
    "https://agent.buildkite.com",
    "https://accounts.google.com",
    "accounts.google.com",  # Google's ID tokens may carry this scheme-less form of its issuer too
})


def issuer_config(entry: Mapping[str, Any]) -> OidcIssuerConfig:
    """One entry of the issuers file (JSON lists become tuples); invalid entries are a ValueError or TypeError."""
    if not isinstance(entry, Mapping):
        raise ValueError("an issuer is a JSON object")
    config = OidcIssuerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
    if config.issuer.rstrip("/").lower() in SHARED_ISSUERS and not config.pinned:
        raise ValueError(f"{config.issuer!r} signs tokens for every one of its users' workloads; pin it with "
                         "required_claims (e.g. repository_owner_id) and/or principal_pattern, or set "
                         "require_registered: true")
    return config


def load_issuer_configs(path: Path | None) -> list[OidcIssuerConfig]:
    """The issuers of ``BROKER_OIDC_ISSUERS_FILE`` (none without one); an unusable file is ``config_invalid``."""
    if path is None:
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"OIDC issuers file {path} cannot be read", code="config_invalid") from exc
    if not isinstance(entries, list):
        raise InvalidInput(f"OIDC issuers file {path} is not a JSON list of issuers", code="config_invalid")
    try:
        return [issuer_config(entry) for entry in entries]
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"OIDC issuers file {path} holds an invalid issuer: {exc}",
                           code="config_invalid") from exc


def issuer_warnings(configs: Iterable[OidcIssuerConfig]) -> list[str]:
    """What ``broker serve`` should say out loud at start-up: each issuer that accepts unregistered principals
    with neither required_claims nor principal_pattern."""
    return [warning for config in configs for warning in config.weaknesses()]
