"""Routes of the approvers' pages.  Thin: resolve the session, call one use case, render."""

from __future__ import annotations

import dataclasses
import hmac
from datetime import UTC, datetime
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from broker.api.deps import Container, ContainerDep, client_ip
from broker.api.ui import time_words
from broker.api.ui.security import (SESSION_COOKIE, SIGN_IN_CSRF_COOKIE, clear_cookie, html, new_csrf_token,
                                    redirect, safe_next, secured, set_cookie, uses_https)
from broker.domain.principals import Principal, Role
from broker.errors import BrokerError, Unauthenticated
from broker.identity.apikeys import parse_api_key
from broker.storage.ui_sessions import SESSION_LIFETIME, UiSession, UiSessionStore

log = logging.getLogger("broker.ui")

HERE = Path(__file__).resolve().parent
# NOTE: autoescape on for every template: requesters write the reason, parameters and more.
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                        trim_blocks=True, lstrip_blocks=True)
STYLESHEET = (HERE / "static" / "ui.css").read_bytes()
# Who may use the pages: humans with one of these roles (agents never).
PAGE_ROLES = (Role.APPROVER, Role.REVIEWER, Role.ADMIN)
MAX_FORM_FIELD = 4000
# Requests on one page of the pending list.
LIST_PAGE = 25

router = APIRouter(prefix="/ui", include_in_schema=False)


# --- helpers -------------------------------------------------------------------------------------

def render(name: str, *, status_code: int = 200, now: datetime | None = None, **context: Any) -> Response:
    """A page; times in it read relative to ``now`` (the broker's clock), the exact time on hover."""
    moment_now = now or datetime.now(UTC)
    return html(TEMPLATES.get_template(name).render(moment=lambda text: time_words.moment(text, moment_now),
                                                    span=time_words.span, **context),
                status_code=status_code)


def key_sign_in_enabled(container: Container) -> bool:
    """Approver keys sign in only on a development broker (or when explicitly allowed)."""
    return bool(container.settings.dev_mode or container.settings.extra.get("ui_key_sign_in"))


def may_use_pages(principal: Principal) -> bool:
    return principal.acts_for is None and any(principal.has_role(role) for role in PAGE_ROLES)


def current_session(request: Request, container: Container) -> tuple[UiSession, Principal] | None:
    """The signed-in human, re-checked on every page: disabled principals and revoked keys end the session."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    # NOTE: a read first: a cookie naming no session (a stale or forged one, or a flood of them) costs no write
    # transaction, so it never waits for, nor makes wait, the writers (on SQLite: issuance).
    with container.database.read() as repo:
        if not UiSessionStore(repo).known(token):
            return None
    now = container.clock.now()
    with container.database.transaction() as repo:
        store = UiSessionStore(repo)
        session = store.find(token, now=now)
        if session is None:
            return None
        principal = repo.get_principal(session.principal_id)
        key = repo.find_api_key(session.api_key_id) if session.api_key_id else None
        key_ok = session.api_key_id is None or (key is not None and not key.revoked)
        if principal is None or not key_ok or not may_use_pages(principal):
            store.end(token)
            return None
    return session, dataclasses.replace(principal, auth_method=session.auth_method)


async def read_form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v[:MAX_FORM_FIELD] for k, v in form.items() if isinstance(v, str)}


def same_origin(request: Request, container: Container) -> bool:
    """A browser's Origin header, when sent, must be this broker (defence in depth beside the CSRF token)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = {f"{request.url.scheme}://{request.url.netloc}", container.settings.public_url.rstrip("/")}
    return origin in own


def sign_in_page(request: Request, container: Container, *, error: str | None = None, status_code: int = 200,
                 next_path: str | None = None) -> Response:
    token = new_csrf_token()
    response = render("sign_in.html", status_code=status_code, error=error, csrf_token=token, principal=None,
                      next_path=safe_next(next_path), enabled=key_sign_in_enabled(container),
                      oidc_host=urlsplit(container.settings.ui_oidc_issuer or "").hostname)
    set_cookie(response, SIGN_IN_CSRF_COOKIE, token, secure=uses_https(request, container.settings.public_url),
               max_age=1800)
    return response


def to_sign_in(path: str) -> Response:
    return redirect(f"/ui/sign-in?next={path}")


def csrf_refused() -> Response:
    return render("error.html", status_code=403, code="csrf_failed", principal=None, csrf_token=None,
                  message="This form has expired or did not come from the broker's own page. Go back, reload "
                          "the page and try again.")


def request_page(container: Container, session: UiSession, principal: Principal, request_id: str, *,
                 error: BrokerError | None = None, notice: str | None = None) -> Response:
    try:
        view = container.service.get_request(principal=principal, request_id=request_id)
    except BrokerError as exc:
        return error_page(container, exc, session, principal)
    options = container.service.decision_options(principal=principal, view=view)
    return render("request.html", status_code=error.status if error else 200, now=container.clock.now(),
                  view=view, principal=principal, csrf_token=session.csrf_token, error=error, notice=notice,
                  options=options, policy_text=json.dumps(view["policy"], indent=2, sort_keys=True),
                  blast=view.get("blast_radius") or {})


def error_page(container: Container, exc: BrokerError, session: UiSession | None,
               principal: Principal | None) -> Response:
    if exc.status == 503:
        container.outages.unavailable(exc, code=exc.code, where="approver pages")
    return render("error.html", status_code=exc.status, code=exc.code, message=exc.diagnostics(),
                  principal=principal, csrf_token=session.csrf_token if session else None)


# --- pages ---------------------------------------------------------------------------------------

@router.get("")
@router.get("/")
def home() -> Response:
    return redirect("/ui/requests")


@router.get("/static/ui.css")
def stylesheet() -> Response:
    return secured(Response(STYLESHEET, media_type="text/css"))


@router.get("/sign-in")
def sign_in_form(request: Request, container: ContainerDep, next: str | None = None) -> Response:  # noqa: A002
    if current_session(request, container) is not None:
        return redirect(safe_next(next))
    return sign_in_page(request, container, next_path=next)


@router.post("/sign-in")
async def sign_in(request: Request, container: ContainerDep) -> Response:
    form = await read_form(request)
    cookie = request.cookies.get(SIGN_IN_CSRF_COOKIE)
    field = form.get("csrf_token")
    # NOTE: double submit before a session exists (login CSRF): the form's token must equal the cookie's.
    if not cookie or not field or not hmac.compare_digest(cookie.encode(), field.encode()) or not same_origin(request, container):
        return csrf_refused()
    next_path = form.get("next")
    if not key_sign_in_enabled(container):
        return sign_in_page(request, container, status_code=403, next_path=next_path,
                            error="Signing in with a key is only available on a development broker.")
    key = form.get("key", "").strip()
    if parse_api_key(key) is None:
        return sign_in_page(request, container, status_code=401, next_path=next_path,
                            error="That is not a broker API key.")
    try:
        principal = container.authenticator.authenticate(f"Bearer {key}")
    except Unauthenticated:
        log.info("approver page sign-in refused from %s", client_ip(request))
        return sign_in_page(request, container, status_code=401, next_path=next_path,
                            error="That key was not accepted.")
    if not may_use_pages(principal):
        return sign_in_page(request, container, status_code=403, next_path=next_path,
                            error="These pages are for approvers and reviewers; agents use the API.")
    now = container.clock.now()
    with container.database.transaction() as repo:
        store = UiSessionStore(repo)
        store.purge_expired(now=now)
        token = store.create(principal_id=principal.id, api_key_id=parse_api_key(key)[0], auth_method="api_key",
                             now=now)
    log.info("approver page session started for %s", principal.id)
    response = redirect(safe_next(next_path))
    secure = uses_https(request, container.settings.public_url)
    set_cookie(response, SESSION_COOKIE, token, secure=secure, max_age=int(SESSION_LIFETIME.total_seconds()))
    clear_cookie(response, SIGN_IN_CSRF_COOKIE, secure=secure)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, container: ContainerDep) -> Response:
    resolved = current_session(request, container)
    form = await read_form(request)
    if resolved is not None:
        if not resolved[0].csrf_matches(form.get("csrf_token")) or not same_origin(request, container):
            return csrf_refused()
        with container.database.transaction() as repo:
            UiSessionStore(repo).end(request.cookies.get(SESSION_COOKIE))
    response = redirect("/ui/sign-in")
    clear_cookie(response, SESSION_COOKIE, secure=uses_https(request, container.settings.public_url))
    return response


@router.get("/requests")
def pending(request: Request, container: ContainerDep, page: str = "1") -> Response:
    resolved = current_session(request, container)
    if resolved is None:
        return to_sign_in("/ui/requests")
    session, principal = resolved
    number = int(page) if page.isdigit() and 0 < len(page) <= 6 else 1
    try:
        listing = container.service.list_pending(principal=principal, offset=(max(1, number) - 1) * LIST_PAGE,
                                                 limit=LIST_PAGE)
    except BrokerError as exc:
        return error_page(container, exc, session, principal)
    pages = max(1, -(-listing["total"] // LIST_PAGE))
    return render("pending.html", now=container.clock.now(), listing=listing, page=max(1, number), pages=pages,
                  principal=principal, csrf_token=session.csrf_token)


@router.get("/requests/{request_id}")
def show(request_id: str, request: Request, container: ContainerDep, done: str | None = None) -> Response:
    resolved = current_session(request, container)
    if resolved is None:
        return to_sign_in(f"/ui/requests/{request_id[:64]}")
    notice = {"approve": "Your approval was recorded.", "deny": "Your denial was recorded."}.get(done or "")
    return request_page(container, *resolved, request_id, notice=notice)


@router.post("/requests/{request_id}/decision")
async def decide(request_id: str, request: Request, container: ContainerDep) -> Response:
    resolved = current_session(request, container)
    if resolved is None:
        return to_sign_in(f"/ui/requests/{request_id[:64]}")
    session, principal = resolved
    form = await read_form(request)
    if not session.csrf_matches(form.get("csrf_token")) or not same_origin(request, container):
        return csrf_refused()
    decision = form.get("decision", "")
    try:
        view = container.service.decide(principal=principal, request_id=request_id, decision=decision,
                                        reason=form.get("reason", ""), source_ip=client_ip(request))
    except BrokerError as exc:
        return request_page(container, session, principal, request_id, error=exc)
    return redirect(f"/ui/requests/{view['id']}?done={decision}")
