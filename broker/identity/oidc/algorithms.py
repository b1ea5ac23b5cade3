"""The JOSE side of a workload token: the asymmetric algorithms accepted, the key that fits each,
the header parameters refused, and the size limits on what a token may carry."""

from __future__ import annotations

import re
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.errors import Unauthenticated
from broker.identity.bounded_patterns import MAX_VALUE_CHARS

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

JWK_LOADERS: dict[str, Callable[[str], object]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}
# JWK members that only a private key has (RFC 7518 section 6); a JWKS carrying
# them is broken and such a key is never used.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
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
PREFIX_FORMAT = re.compile(r"^[a-z]+:$")
HUMAN_PREFIX = "human:"


def invalid_token(message: str) -> Unauthenticated:
    return Unauthenticated(message, code="invalid_token")
