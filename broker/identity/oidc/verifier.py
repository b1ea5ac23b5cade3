"""The verifier: one :class:`OidcVerifier` per trusted issuer (header checks, ``jwt.decode``, claim tables, pins)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jwt

from broker.domain.principals import Principal
from broker.errors import Unauthenticated
from broker.identity.oidc.algorithms import (
    FORBIDDEN_HEADERS,
    HUMAN_PREFIX,
    MAX_GROUPS,
    MAX_KID_CHARS,
    MAX_TOKEN_CHARS,
    SAFE_IDENTIFIER,
    UNSUPPORTED_HEADERS,
    Clock,
    invalid_token,
)
from broker.identity.oidc.config import OidcIssuerConfig
from broker.identity.oidc.jwks import HttpxJwksFetcher, JwksCache, JwksFetcher

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
            raise invalid_token("The token's signing algorithm is not accepted.")
        # NOTE: jku/x5u/jwk/x5c would let the token choose its own key; never fetched.
        if FORBIDDEN_HEADERS & header.keys():
            raise invalid_token("The token names its own signing key, which is not accepted.")
        if UNSUPPORTED_HEADERS & header.keys():
            raise invalid_token("The token uses an unsupported JWS extension.")
        # NOTE: typ guards against cross-token confusion (a logout or ID token
        # replayed as an access credential).
        typ = header.get("typ")
        if typ is None:
            if not cfg.allow_missing_typ:
                raise invalid_token("The token has no type.")
        elif not isinstance(typ, str) or _typ_name(typ) not in {_typ_name(t) for t in cfg.allowed_typ}:
            raise invalid_token("The token is of a type that is not accepted.")
        kid = header.get("kid")
        # NOTE: kid required: without it we would have to try keys until one fits.
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
            raise invalid_token("The token does not name its signing key.")
        return alg, kid

    # -- verification --------------------------------------------------------

    def verify(self, token: str) -> Principal:
        return self._principal(self.verified_claims(token))

    def verified_claims(self, token: str) -> dict[str, Any]:
        """The token's claims once its header, signature and every claim check have passed."""
        cfg = self.config
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise invalid_token("The token is empty or too large.")
        segments = token.split(".")
        if len(segments) != 3 or not all(_JWT_SEGMENT.fullmatch(s) for s in segments):
            raise invalid_token("The token is not a signed JWT.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.PyJWTError as exc:
            raise invalid_token("The token's header is malformed.") from exc
        alg, kid = self._check_header(header)

        key = self._jwks.get_key(kid)
        # NOTE: the key's type must fit the algorithm; the header never picks the key type.
        if not key.fits(alg):
            raise invalid_token("The token's algorithm does not match its signing key.")

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
            raise invalid_token("The token failed verification.") from exc

        self._check_claims(claims)
        self._check_pins(claims)
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        for name, check in self._required_claims.items():
            if name not in claims or not check(claims[name]):
                raise invalid_token(f"The token's {name!r} claim is missing or not acceptable.")
        for name, check in self._optional_claims.items():
            if name in claims and not check(claims[name]):
                raise invalid_token(f"The token's {name!r} claim is not acceptable.")

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
            # NOTE: every verified claim, for templates' identity-bound values (claim:NAME); each value is
            # checked where a template uses it (broker.domain.caller_identity), never here.
            claims=MappingProxyType(dict(claims)),
        )
