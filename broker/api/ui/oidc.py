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

import logging
import secrets
import threading
import time
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.api.deps import Container, ContainerDep, client_ip
from broker.api.ui.pages import current_session, render, sign_in_page
from broker.api.ui.security import (
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    clear_cookie,
    redirect,
    safe_next,
    set_cookie,
    uses_https,
)
from broker.domain.principals import Principal
from broker.errors import BrokerError, Forbidden, RateLimited, Unauthenticated
from broker.identity.oidc.relying_party import (  # noqa: F401 - the flow's names, re-exported for its callers
    CALLBACK_PATH,
    ID_TOKEN_ALGORITHMS,
    ID_TOKEN_MAX_AGE_SECONDS,
    KNOWN_IDP_ERRORS,
    OIDC_SIGN_IN_ROLES,
    IdTokenVerifier,
    UiOidcClient,
    UiOidcConfig,
    load_ui_oidc_config,
    oidc_configured,
    pkce_challenge,
    sign_in_warnings,
)
from broker.storage.ui_oidc_flows import FLOW_LIFETIME, UiOidcFlowStore, flow_source
from broker.storage.ui_sessions import SESSION_LIFETIME, UiSessionStore

log = logging.getLogger("broker.ui.oidc")

# Included into the pages' router, which adds the /ui prefix.
router = APIRouter(include_in_schema=False)

FLOW_COOKIE = "broker_ui_oidc_flow"
FLOW_COOKIE_PATH = "/ui/oidc"
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
        client = container.ui_oidc.client()
    except BrokerError as exc:
        if exc.status == 503:
            container.outages.unavailable(exc, code=exc.code, where="GET /ui/login/oidc")
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
        client = container.ui_oidc.client()
        if client is None:
            raise Unauthenticated("Single sign-on is not configured for these pages.", code="oidc_not_configured")
        principal, next_path = _finish(request, container, client)
    except BrokerError as exc:
        log.info("approver OIDC sign-in refused (%s) from %s", exc.code, client_ip(request))
        if exc.status == 503:
            container.outages.unavailable(exc, code=exc.code, where="GET /ui/oidc/callback")
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
           "router", "sign_in_warnings"]
