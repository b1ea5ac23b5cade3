"""The approvers' OIDC relying party: configuration, PKCE, the ID token verifier and the code exchange.

The broker signs approvers and reviewers in with an OIDC provider (authorization code flow with PKCE,
RFC 7636).  This module is the protocol side, seen from the broker as a client of the provider; the
pages that drive the flow (cookies, redirects) are :mod:`broker.api.ui.oidc`, and the flow's own rules
(state, binding, caps) sit with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx

from broker.domain.principals import Role
from broker.errors import BrokerError, IdentityProviderUnavailable, Unauthenticated, Unavailable
from broker.identity.claim_rules import (
    CLAIM_NAME,
    DOMAIN_NAME,
    PINNED_VALUE,
    ApproverIdentity,
    parse_allowed_domains,
    parse_required_claims,
)
from broker.identity.oidc.algorithms import SAFE_IDENTIFIER
from broker.identity.oidc.config import OidcIssuerConfig
from broker.identity.oidc.jwks import HttpxJwksFetcher, JwksCache
from broker.identity.oidc.urls import is_loopback
from broker.identity.oidc.verifier import ClaimCheck, OidcVerifier
from broker.settings import BrokerSettings

CALLBACK_PATH = "/ui/oidc/callback"
# Roles that may sign in with OIDC: approvers decide, reviewers read.
OIDC_SIGN_IN_ROLES = (Role.APPROVER, Role.REVIEWER)
# NOTE: asymmetric only (the verifier refuses anything else anyway); HS* and "none" are never allowed.
ID_TOKEN_ALGORITHMS = ("RS256", "PS256", "ES256")
# NOTE: an ID token is used once, right after it is issued; an older one is a replay.
ID_TOKEN_MAX_AGE_SECONDS = 600
TOKEN_RESPONSE_MAX_BYTES = 64 * 1024
TOKEN_ENDPOINT_TIMEOUT_SECONDS = 5.0
# Error codes an authorization endpoint may send back (RFC 6749 section 4.1.2.1, OIDC Core 3.1.2.6).
KNOWN_IDP_ERRORS = frozenset({
    "invalid_request", "unauthorized_client", "access_denied", "unsupported_response_type", "invalid_scope",
    "server_error", "temporarily_unavailable", "interaction_required", "login_required",
    "account_selection_required", "consent_required", "invalid_request_uri", "invalid_request_object",
    "request_not_supported", "request_uri_not_supported", "registration_not_supported",
})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(code_verifier: str) -> str:
    """RFC 7636 section 4.2, S256: BASE64URL(SHA256(ASCII(code_verifier)))."""
    return _b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


def _endpoint_ok(url: object) -> bool:
    # NOTE: https only, except plain http to a loopback address (tests, a local IdP) -- the same
    # rule the JWKS fetcher applies.
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))


# --- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class UiOidcConfig:
    """The approver pages' OIDC client.  Invalid configurations fail at construction."""

    issuer: str
    client_id: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_url: str
    redirect_uri: str
    principal_claim: str = "preferred_username"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    client_secret: str | None = field(default=None, repr=False)
    # Lower-case domains the principal claim's address must be in; empty: no domain pinning.
    allowed_domains: frozenset[str] = frozenset()
    # (claim, exact string value) pairs every ID token must carry; empty: none.
    required_claims: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        checks: dict[str, tuple[bool, str]] = {
            "issuer": (isinstance(self.issuer, str) and _endpoint_ok(self.issuer) and "?" not in self.issuer,
                       "must be the issuer's https URL"),
            "client_id": (isinstance(self.client_id, str) and bool(SAFE_IDENTIFIER.fullmatch(self.client_id)),
                          "must be set"),
            "authorization_endpoint": (_endpoint_ok(self.authorization_endpoint), "must be an https URL"),
            "token_endpoint": (_endpoint_ok(self.token_endpoint), "must be an https URL"),
            "jwks_url": (_endpoint_ok(self.jwks_url), "must be an https URL"),
            "redirect_uri": (isinstance(self.redirect_uri, str) and self.redirect_uri.endswith(CALLBACK_PATH)
                             and urlsplit(self.redirect_uri).scheme in ("https", "http"),
                             "must be the broker's public URL + " + CALLBACK_PATH),
            "principal_claim": (isinstance(self.principal_claim, str)
                                and bool(SAFE_IDENTIFIER.fullmatch(self.principal_claim)), "must name a claim"),
            # NOTE: without "openid" the provider sends no ID token and this is not OIDC at all.
            "scopes": ("openid" in self.scopes and all(s and s.isprintable() and " " not in s for s in self.scopes),
                       "must include 'openid'"),
            "client_secret": (self.client_secret is None or (isinstance(self.client_secret, str)
                                                            and bool(self.client_secret.strip())),
                              "file must not be empty"),
            "allowed_domains": (isinstance(self.allowed_domains, frozenset)
                                and all(isinstance(d, str) and bool(DOMAIN_NAME.fullmatch(d))
                                        for d in self.allowed_domains),
                                "must be lower-case domain names"),
            "required_claims": (isinstance(self.required_claims, tuple)
                                and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                        and isinstance(p[1], str) and bool(CLAIM_NAME.fullmatch(p[0]))
                                        and bool(PINNED_VALUE.fullmatch(p[1])) for p in self.required_claims)
                                and len({p[0] for p in self.required_claims}) == len(self.required_claims),
                                "must be name=value pairs, each name once"),
        }
        for name, (ok, requirement) in checks.items():
            if not ok:
                raise ValueError(f"ui_oidc {name} {requirement}")

    @property
    def issuer_host(self) -> str:
        return urlsplit(self.issuer).hostname or self.issuer

    @property
    def identity(self) -> ApproverIdentity:
        """The claim rules an ID token's account must pass before it names a principal."""
        return ApproverIdentity.configured(principal_claim=self.principal_claim,
                                           allowed_domains=self.allowed_domains,
                                           required_claims=self.required_claims)


def oidc_configured(settings: BrokerSettings) -> bool:
    return bool(settings.ui_oidc_issuer)


def load_ui_oidc_config(settings: BrokerSettings) -> UiOidcConfig | None:
    """The OIDC client configuration, or None when OIDC sign-in is off (no issuer set)."""
    if not oidc_configured(settings):
        return None
    secret: str | None = None
    if settings.ui_oidc_client_secret_file is not None:
        try:
            secret = settings.ui_oidc_client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise Unavailable("The single sign-on client secret file cannot be read.",
                              code="ui_oidc_config_invalid") from exc
    try:
        return UiOidcConfig(
            issuer=settings.ui_oidc_issuer or "", client_id=settings.ui_oidc_client_id or "",
            authorization_endpoint=settings.ui_oidc_authorization_endpoint or "",
            token_endpoint=settings.ui_oidc_token_endpoint or "", jwks_url=settings.ui_oidc_jwks_url or "",
            redirect_uri=settings.public_url.rstrip("/") + CALLBACK_PATH,
            principal_claim=settings.ui_oidc_principal_claim, scopes=tuple(settings.ui_oidc_scopes.split()),
            client_secret=secret, allowed_domains=parse_allowed_domains(settings.ui_oidc_allowed_domains),
            required_claims=parse_required_claims(settings.ui_oidc_required_claims))
    except ValueError as exc:
        raise Unavailable(f"Single sign-on is misconfigured: {exc}.", code="ui_oidc_config_invalid") from exc


def sign_in_warnings(settings: BrokerSettings) -> list[str]:
    """What ``broker serve`` should say out loud at start-up about approver single sign-on."""
    try:
        config = load_ui_oidc_config(settings)
    except BrokerError as exc:
        return [f"approver single sign-on will refuse every sign-in: {exc.diagnostics()}"]
    return [] if config is None else config.identity.weaknesses()


# --- ID token verification -----------------------------------------------------------------------

class IdTokenVerifier(OidcVerifier):
    """The shared verifier plus what only an ID token for *this* flow has: our nonce, our azp."""

    def __init__(self, config: OidcIssuerConfig, *, expected_nonce: str, jwks_cache: JwksCache,
                 clock: Callable[[], float]) -> None:
        if not expected_nonce:
            raise ValueError("an ID token is verified against a nonce")
        self._expected_nonce = expected_nonce
        super().__init__(config, jwks_cache=jwks_cache, clock=clock)

    def _claim_checks(self) -> tuple[dict[str, ClaimCheck], dict[str, ClaimCheck]]:
        required, optional = super()._claim_checks()
        expected = self._expected_nonce.encode("utf-8")
        client_id = self.config.audience
        # NOTE: the nonce binds the ID token to the flow this browser began (OIDC Core 3.1.3.7 step 11).
        required["nonce"] = lambda value: isinstance(value, str) and hmac.compare_digest(value.encode("utf-8"),
                                                                                          expected)
        # NOTE: azp, when present, must be us (OIDC Core 3.1.3.7 steps 4-5).
        optional["azp"] = lambda value: isinstance(value, str) and value == client_id
        return required, optional


class UiOidcClient:
    """Builds authorization requests, redeems codes and verifies the ID tokens they bring back."""

    def __init__(self, config: UiOidcConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.identity = config.identity
        self._clock = clock
        self._issuer_config = OidcIssuerConfig(
            issuer=config.issuer, audience=config.client_id, jwks_url=config.jwks_url,
            algorithms=ID_TOKEN_ALGORITHMS, principal_claim=config.principal_claim, principal_prefix="human:",
            # NOTE: the token's roles are never used: the directory decides who may sign in.
            roles=("approver",), allowed_typ=("JWT",), max_token_age_seconds=ID_TOKEN_MAX_AGE_SECONDS)
        self._jwks = JwksCache(jwks_url=config.jwks_url, fetcher=HttpxJwksFetcher(), cache_seconds=300,
                               refetch_min_interval_seconds=30, clock=clock)

    def authorization_url(self, *, state: str, nonce: str, code_verifier: str) -> str:
        cfg = self.config
        query = urlencode({
            "response_type": "code",
            "client_id": cfg.client_id,
            "redirect_uri": cfg.redirect_uri,
            "scope": " ".join(cfg.scopes),
            "state": state,
            "nonce": nonce,
            # NOTE: S256 only; "plain" would hand the verifier to anyone who sees the redirect.
            "code_challenge": pkce_challenge(code_verifier),
            "code_challenge_method": "S256",
        })
        separator = "&" if urlsplit(cfg.authorization_endpoint).query else "?"
        return f"{cfg.authorization_endpoint}{separator}{query}"

    def redeem(self, *, code: str, code_verifier: str) -> str:
        """Exchange the code at the token endpoint; return the raw ID token (not yet verified)."""
        cfg = self.config
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": cfg.redirect_uri,
                "code_verifier": code_verifier}
        auth: tuple[str, str] | None = None
        if cfg.client_secret is None:
            form["client_id"] = cfg.client_id  # public client: PKCE is the only proof
        else:
            # NOTE: client_secret_basic; RFC 6749 section 2.3.1 form-encodes id and secret first.
            auth = (quote_plus(cfg.client_id, safe=""), quote_plus(cfg.client_secret, safe=""))
        try:
            # NOTE: bounded timeout, no redirects (a token endpoint never redirects a POST carrying our
            # secret elsewhere), no proxy/netrc from the environment, TLS verified.
            with httpx.Client(timeout=httpx.Timeout(TOKEN_ENDPOINT_TIMEOUT_SECONDS), follow_redirects=False,
                              trust_env=False, verify=True) as client:
                with client.stream("POST", cfg.token_endpoint, data=form, auth=auth,
                                   headers={"Accept": "application/json"}) as response:
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > TOKEN_RESPONSE_MAX_BYTES:
                            raise IdentityProviderUnavailable("The identity provider's answer was too large.",
                                                              code="oidc_token_response_invalid")
                    status = response.status_code
        except httpx.HTTPError as exc:
            raise IdentityProviderUnavailable("The identity provider could not be reached.") from exc
        if status in (400, 401):
            # NOTE: a wrong or reused code, a PKCE verifier that does not fit, bad client auth.
            raise Unauthenticated("The identity provider refused to complete the sign-in.",
                                  code="oidc_code_refused")
        if status != 200:
            raise IdentityProviderUnavailable("The identity provider could not complete the sign-in.")
        try:
            document = json.loads(bytes(body))
        except ValueError as exc:
            raise IdentityProviderUnavailable("The identity provider's answer was not JSON.",
                                              code="oidc_token_response_invalid") from exc
        id_token = document.get("id_token") if isinstance(document, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise IdentityProviderUnavailable("The identity provider's answer held no ID token.",
                                              code="oidc_token_response_invalid")
        return id_token

    def principal_id(self, id_token: str, *, nonce: str) -> str:
        """Verify the ID token, then the account it speaks for (claim rules); the principal id it names."""
        verifier = IdTokenVerifier(self._issuer_config, expected_nonce=nonce, jwks_cache=self._jwks,
                                   clock=self._clock)
        return self.identity.principal_id(verifier.verified_claims(id_token))
