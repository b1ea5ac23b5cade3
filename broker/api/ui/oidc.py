"""Approver sign-in with OpenID Connect: authorization code flow with PKCE (S256), ``state`` and ``nonce``.

``GET /ui/login/oidc`` begins a flow and sends the browser to the identity provider;
``GET /ui/oidc/callback`` finishes it: the code is exchanged at the token endpoint, the ID token is
verified by :class:`broker.identity.oidc.OidcVerifier` (JWKS cache, algorithm allow-list, exact
issuer, audience = our client id, exp/iat/nbf) plus our own ``nonce`` and ``azp`` checks, the token
names a principal (``"human:" + <configured claim>``) once the claim rules of
:mod:`broker.identity.claim_rules` accept it (a verified email, the allowed domains, pinned claims
such as ``hd`` or ``tid``), and only an existing, enabled principal with the approver or reviewer role
gets the same server-side session as key sign-in gives.

Where the flow's secrets live (see :mod:`broker.storage.ui_oidc_flows`): server-side, in the
database, keyed by the SHA-256 of ``state``.  The PKCE verifier and the nonce never reach the
browser.  The browser that began the flow holds a random binding token in an HttpOnly,
SameSite=Lax cookie scoped to ``/ui/oidc``; the callback must present it (so a callback URL
planted in another browser, login CSRF, fails).  The first callback naming a state deletes it
(one-time use, decided by the database, so it holds across replicas); a flow lives ten minutes.

Beginning a flow is the one write an unauthenticated caller can cause here, so outstanding flows are
capped per client address and in total (:data:`broker.storage.ui_oidc_flows.FLOW_CAPS`, and why a
cap there): beyond a cap the sign-in page answers 429 with the code and a ``Retry-After``, and
nothing is written (the counts are read without the write lock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.api.deps import Container, ContainerDep, client_ip
from broker.api.ui.pages import current_session, render, sign_in_page
from broker.api.ui.security import (SESSION_COOKIE, SIGN_IN_CSRF_COOKIE, clear_cookie, redirect, safe_next,
                                    set_cookie, uses_https)
from broker.domain.principals import Principal, Role
from broker.errors import (BrokerError, Forbidden, IdentityProviderUnavailable, RateLimited, Unauthenticated,
                           Unavailable)
from broker.identity.claim_rules import (CLAIM_NAME, DOMAIN_NAME, PINNED_VALUE, ApproverIdentity,
                                         parse_allowed_domains, parse_required_claims)
from broker.identity.oidc import (SAFE_IDENTIFIER, ClaimCheck, HttpxJwksFetcher, JwksCache, OidcIssuerConfig,
                                  OidcVerifier, is_loopback)
from broker.settings import BrokerSettings
from broker.storage.ui_oidc_flows import FLOW_LIFETIME, UiOidcFlowStore, flow_source
from broker.storage.ui_sessions import SESSION_LIFETIME, UiSessionStore

log = logging.getLogger("broker.ui.oidc")

# Included into the pages' router, which adds the /ui prefix.
router = APIRouter(include_in_schema=False)

CALLBACK_PATH = "/ui/oidc/callback"
FLOW_COOKIE = "broker_ui_oidc_flow"
FLOW_COOKIE_PATH = "/ui/oidc"
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


_CLIENTS_LOCK = threading.Lock()


def ui_oidc_client(container: Container) -> UiOidcClient | None:
    """The container's OIDC client (built once, sharing one JWKS cache), or None when OIDC is off."""
    with _CLIENTS_LOCK:
        if "ui_oidc" not in container.extras:
            config = load_ui_oidc_config(container.settings)
            container.extras["ui_oidc"] = (
                None if config is None
                else UiOidcClient(config, clock=lambda: container.clock.now().timestamp()))
        return container.extras["ui_oidc"]


# --- the flow --------------------------------------------------------------------------------------

def _set_flow_cookie(response: Response, value: str, *, secure: bool) -> None:
    # NOTE: SameSite=Lax, not Strict: the callback is a top-level navigation *from the identity
    # provider's site*, which a Strict cookie would not ride on.  HttpOnly, Secure over https, and
    # scoped to /ui/oidc so no other page ever receives it.
    response.set_cookie(FLOW_COOKIE, value, max_age=int(FLOW_LIFETIME.total_seconds()), path=FLOW_COOKIE_PATH,
                        secure=secure, httponly=True, samesite="lax")


def _clear_flow_cookie(response: Response, *, secure: bool) -> None:
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH, secure=secure, httponly=True, samesite="lax")


def _single_param(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        # NOTE: parameter pollution: two states (or codes) means someone spliced the URL.
        raise Unauthenticated("The sign-in answer was malformed.", code="oidc_callback_malformed")
    return values[0] if values and len(values[0]) <= 2048 else None


def _allowed_principal(container: Container, principal_id: str) -> Principal:
    """The directory, not the token, decides: existing, enabled, a human, approver or reviewer."""
    with container.database.transaction() as repo:
        principal = repo.get_principal(principal_id)
    if principal is None:
        raise Forbidden("Your identity provider account is not an enabled approver of this broker.",
                        code="oidc_principal_unknown")
    if principal.acts_for is not None or not any(principal.has_role(r) for r in OIDC_SIGN_IN_ROLES):
        raise Forbidden("These pages are for approvers and reviewers; your account is neither.",
                        code="oidc_principal_not_allowed")
    return principal


def _finish(request: Request, container: Container, client: UiOidcClient) -> tuple[Principal, str]:
    """Check the callback against the flow it names; return the principal and where to go next."""
    state = _single_param(request, "state")
    code = _single_param(request, "code")
    error = _single_param(request, "error")
    issuer = _single_param(request, "iss")
    now = container.clock.now()
    flow = None
    # NOTE: a read first: a callback naming no flow (forged, replayed, a flood of them) costs no write transaction.
    with container.database.read() as repo:
        known = UiOidcFlowStore(repo).known(state)
    if known:
        with container.database.transaction() as repo:
            flow = UiOidcFlowStore(repo).take(state, now=now)
    if flow is None:
        raise Unauthenticated("This sign-in link has expired or was already used. Start again.",
                              code="oidc_state_invalid")
    if not flow.bound_to(request.cookies.get(FLOW_COOKIE)):
        raise Unauthenticated("This sign-in was not started in this browser. Start again.",
                              code="oidc_state_invalid")
    # NOTE: RFC 9207: when the provider names itself in the answer, it must be our provider (mix-up defence).
    if issuer is not None and issuer != client.config.issuer:
        raise Unauthenticated("The sign-in answer came from another identity provider.", code="oidc_issuer_mismatch")
    if error is not None:
        shown = error if error in KNOWN_IDP_ERRORS else "error"
        raise Unauthenticated(f"The identity provider did not sign you in ({shown}).", code="oidc_idp_error")
    if not code:
        raise Unauthenticated("The sign-in answer held no authorization code.", code="oidc_callback_malformed")
    id_token = client.redeem(code=code, code_verifier=flow.code_verifier)
    principal_id = client.principal_id(id_token, nonce=flow.nonce)
    return _allowed_principal(container, principal_id), flow.next_path


_CAPPED_LOG_LOCK = threading.Lock()
_capped_logged_at = [float("-inf")]
CAPPED_LOG_EVERY_SECONDS = 60.0


def _log_capped(code: str, source: str) -> None:
    """Say that a cap on sign-in flows refused a begin: once a minute at most (a flood is many of them;
    ``broker_http_request_duration_seconds_count{route="/login/oidc",status="429"}`` counts them all)."""
    now = time.monotonic()
    with _CAPPED_LOG_LOCK:
        if now - _capped_logged_at[0] < CAPPED_LOG_EVERY_SECONDS:
            return
        _capped_logged_at[0] = now
    log.warning("approver OIDC sign-in not begun (%s), last from %s; further refusals this minute are not logged",
                code, source)


def _store_flow(container: Container, *, source: str, now: datetime, **flow: str) -> None:
    """Store a new flow begun from ``source``, or raise ``RateLimited`` (a cap is reached) having written nothing."""
    # NOTE: the counts are read first without the write lock (on SQLite a flood must not queue behind
    # issuance writes), then again in the unit of work that writes, where they are exact: begins are
    # serialized there (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), across replicas too.
    with container.database.read() as repo:
        UiOidcFlowStore(repo).check_caps(client_address=source, now=now)
    with container.database.transaction() as repo:
        store = UiOidcFlowStore(repo)
        store.serialize_begins()
        store.check_caps(client_address=source, now=now)
        store.purge_expired(now=now)
        store.begin(**flow, now=now, client_address=source)


@router.get("/login/oidc")  # under the pages' /ui prefix
def begin_oidc_sign_in(request: Request, container: ContainerDep, next: str | None = None) -> Response:  # noqa: A002
    try:
        client = ui_oidc_client(container)
    except BrokerError as exc:
        return sign_in_page(request, container, status_code=exc.status, error=exc.diagnostics(), next_path=next)
    if client is None:
        return sign_in_page(request, container, status_code=404, next_path=next,
                            error="Single sign-on is not configured for these pages.")
    if current_session(request, container) is not None:
        return redirect(safe_next(next))
    state, nonce, code_verifier, browser_token = (secrets.token_urlsafe(32) for _ in range(4))
    now = container.clock.now()
    # NOTE: the peer address as every page gets it (client_ip).  The broker reads no forwarding header
    # itself; uvicorn takes X-Forwarded-For only from proxies in its FORWARDED_ALLOW_IPS (default loopback).
    source = flow_source(client_ip(request))
    try:
        _store_flow(container, source=source, now=now, state=state, browser_token=browser_token, nonce=nonce,
                    code_verifier=code_verifier, next_path=safe_next(next))
    except RateLimited as exc:
        _log_capped(exc.code, source)
        response = sign_in_page(request, container, status_code=exc.status, next_path=next,
                                error=f"{exc.diagnostics()} ({exc.code})")
        response.headers["Retry-After"] = str(exc.details["retry_after"])
        return response
    response = redirect(client.authorization_url(state=state, nonce=nonce, code_verifier=code_verifier))
    _set_flow_cookie(response, browser_token, secure=uses_https(request, container.settings.public_url))
    return response


@router.get(CALLBACK_PATH.removeprefix("/ui"))
def finish_oidc_sign_in(request: Request, container: ContainerDep) -> Response:
    secure = uses_https(request, container.settings.public_url)
    try:
        client = ui_oidc_client(container)
        if client is None:
            raise Unauthenticated("Single sign-on is not configured for these pages.", code="oidc_not_configured")
        principal, next_path = _finish(request, container, client)
    except BrokerError as exc:
        log.info("approver OIDC sign-in refused (%s) from %s", exc.code, client_ip(request))
        response = sign_in_page(request, container, status_code=exc.status,
                                error=f"{exc.diagnostics()} ({exc.code})")
        _clear_flow_cookie(response, secure=secure)
        return response
    now = container.clock.now()
    with container.database.transaction() as repo:
        sessions = UiSessionStore(repo)
        sessions.purge_expired(now=now)
        token = sessions.create(principal_id=principal.id, api_key_id=None,
                                auth_method=f"oidc:{client.config.issuer}"[:200], now=now)
    log.info("approver page session started for %s (oidc)", principal.id)
    # NOTE: a page that moves on by itself, not a 303: the session cookie is SameSite=Strict, and a
    # redirect chain that began on the identity provider's site is cross-site, so the browser would
    # not send the new cookie on it.  The refresh is a navigation begun by our own page.
    response = render("oidc_signed_in.html", next_path=safe_next(next_path), principal=None, csrf_token=None)
    set_cookie(response, SESSION_COOKIE, token, secure=secure, max_age=int(SESSION_LIFETIME.total_seconds()))
    clear_cookie(response, SIGN_IN_CSRF_COOKIE, secure=secure)
    _clear_flow_cookie(response, secure=secure)
    return response


__all__ = ["IdTokenVerifier", "UiOidcClient", "UiOidcConfig", "load_ui_oidc_config", "pkce_challenge",
           "router", "sign_in_warnings", "ui_oidc_client"]
