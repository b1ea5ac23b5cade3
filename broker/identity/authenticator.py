"""Turn an ``Authorization`` header into a :class:`Principal`.

Two credential kinds, both as ``Bearer <token>``:

* broker-issued API keys (``brk_...``), looked up by key id and compared by hash;
* OIDC workload tokens (JWTs), routed to the verifier of their exact issuer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import jwt

from broker.domain.principals import Principal
from broker.errors import Unauthenticated
from broker.identity.apikeys import API_KEY_PREFIX, hash_api_key, parse_api_key, verify_api_key_hash
from broker.identity.oidc import MAX_TOKEN_CHARS, OidcVerifier
# The store's side of authentication (broker.storage implements it).
from broker.ports import ApiKeyStore, PrincipalDirectory


# RFC 7235: the auth-scheme is case-insensitive; exactly one space-separated token follows.
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(?P<token>[^\s]+)$")
# Compared against when the key id is unknown, so an unknown id costs the same
# hash-and-compare as a known one.
_UNKNOWN_KEY_HASH = hash_api_key(API_KEY_PREFIX + "0" * 12 + "_" + "A" * 43)
API_KEY_AUTH_METHOD = "api_key"
# Three dot-separated base64url parts: what a JWT (JWS compact serialization, RFC 7515 7.1) looks like.
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def _system_now() -> datetime:
    return datetime.now(UTC)


def _invalid_credentials(message: str) -> Unauthenticated:
    return Unauthenticated(message, code="invalid_credentials")


class Authenticator:
    def __init__(self, *, api_keys: ApiKeyStore, principals: PrincipalDirectory,
                 oidc_verifiers: Sequence[OidcVerifier], now: Callable[[], datetime] = _system_now) -> None:
        self._api_keys = api_keys
        self._now = now
        self._principals = principals
        by_issuer: dict[str, OidcVerifier] = {}
        for verifier in oidc_verifiers:
            if verifier.issuer in by_issuer:
                raise ValueError(f"two OIDC verifiers for issuer {verifier.issuer!r}")
            by_issuer[verifier.issuer] = verifier
        self._verifiers = by_issuer

    def authenticate(self, authorization_header: str | None) -> Principal:
        if authorization_header is None or not authorization_header.strip():
            raise Unauthenticated("Credentials are required.", code="missing_credentials")
        if len(authorization_header) > MAX_TOKEN_CHARS + 64:
            raise _invalid_credentials("The credentials are too large.")
        match = _BEARER.fullmatch(authorization_header.strip())
        if match is None:
            raise _invalid_credentials("Expected an 'Authorization: Bearer <token>' header.")
        token = match["token"]
        if token.startswith(API_KEY_PREFIX):
            return self._authenticate_api_key(token)
        if not _JWT_SHAPE.fullmatch(token):
            # NOTE: said before anything else about tokens, so a pasted garbage value is not answered with
            # which identity providers this broker trusts (or that it trusts none).
            raise _invalid_credentials("The token is neither a broker API key (brk_...) nor a JWT.")
        return self._authenticate_oidc(token)

    # -- API keys ------------------------------------------------------------

    def _authenticate_api_key(self, token: str) -> Principal:
        parsed = parse_api_key(token)
        if parsed is None:
            raise _invalid_credentials("The API key is malformed.")
        key_id, token_hash = parsed
        record = self._api_keys.find_api_key(key_id)
        # NOTE: always one constant-time comparison, found or not.
        matches = verify_api_key_hash(token_hash, record.token_hash if record else _UNKNOWN_KEY_HASH)
        if record is None or not matches:
            # NOTE: an unknown key id and a wrong secret get the same answer: key ids are not an oracle.
            raise _invalid_credentials("The API key is not known to this broker (or its secret is wrong).")
        # Only a holder of the full, correct key learns that it was revoked, expired or its principal disabled.
        if record.principal_disabled:
            raise Unauthenticated("This principal has been disabled.", code="principal_disabled")
        if record.revoked:
            raise Unauthenticated("The API key has been revoked.", code="revoked_credentials")
        if record.expired(self._now()):
            raise Unauthenticated("The API key has expired; ask an admin for a new one (broker keys rotate).",
                                  code="api_key_expired")
        principal = self._principals.get_principal(record.principal_id)
        if principal is None:
            raise _invalid_credentials("The API key's principal no longer exists.")
        return dataclasses.replace(principal, auth_method=API_KEY_AUTH_METHOD)

    # -- OIDC ----------------------------------------------------------------

    def _authenticate_oidc(self, token: str) -> Principal:
        if not self._verifiers:
            raise _invalid_credentials("This broker trusts no OIDC issuer: it accepts broker API keys (brk_...) only.")
        try:
            # NOTE: unverified, and used only to pick the verifier; the chosen
            # verifier checks the signature and the issuer again, exactly.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.exceptions.PyJWTError as exc:
            raise _invalid_credentials("The token is malformed.") from exc
        issuer = unverified.get("iss")
        # NOTE: exact dict lookup on a string; lists, substrings and prefixes never match.
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise Unauthenticated("The token's issuer is not trusted.", code="untrusted_issuer")
        return self._merge_with_directory(verifier.verify(token),
                                          require_registered=verifier.config.require_registered)

    def _merge_with_directory(self, from_token: Principal, *, require_registered: bool) -> Principal:
        """Combine a token principal with the directory's record of the same id.

        * unknown to the directory: refused when the issuer requires registration
          (``principal_unknown``); otherwise the token's principal with the issuer's
          roles (the issuer's pins, checked by the verifier, are then all that
          narrows who that can be: see ``OidcIssuerConfig.weaknesses``).

        * roles: the directory wins.  Roles are broker authority, granted by broker
          admins; an IdP can vouch for *who* a workload is, but once a principal
          has a directory entry its roles there are the deliberate, reviewed
          answer (and may be narrower than the issuer default).
        * groups: union; groups from the IdP are facts about the workload, the
          directory may add more.
        * acts_for: whichever side states it; if both do and disagree, refuse
          (we cannot tell which human is accountable).
        * claims stay the token's and attributes the directory's: a template's identity value names
          which it reads (``claim:NAME`` / ``attribute:NAME``), and refuses a caller whose sources disagree.
        """
        record = self._principals.get_principal(from_token.id)
        if record is None:
            # NOTE: "disabled" is not "unknown": a disabled principal must not fall back to the
            # issuer's default roles, or disabling a compromised workload would not stop it.
            if self._principals.is_disabled(from_token.id):
                raise Unauthenticated("This principal has been disabled.", code="principal_disabled")
            if require_registered:
                # NOTE: the id is not echoed: it is made of the token's claims.
                raise Unauthenticated("The token's principal is not registered with this broker, and its issuer "
                                      "accepts registered principals only.", code="principal_unknown")
            return from_token
        if from_token.acts_for and record.acts_for and from_token.acts_for != record.acts_for:
            raise Unauthenticated("The token's accountable human does not match the directory.",
                                  code="invalid_token")
        return dataclasses.replace(
            from_token,
            roles=record.roles,
            groups=from_token.groups | record.groups,
            acts_for=from_token.acts_for or record.acts_for,
            # The directory's attributes beside the token's claims: templates name which one they read.
            attributes=record.attributes,
        )
