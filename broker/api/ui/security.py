"""What every approver page is sent with, and how the session cookie and CSRF tokens work."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

SESSION_COOKIE = "broker_ui_session"
# Before sign-in there is no session yet: the sign-in form is protected by a double-submit cookie.
SIGN_IN_CSRF_COOKIE = "broker_ui_signin"
COOKIE_PATH = "/ui"

# NOTE: no script at all, styles only from our own static file, forms post only to us, and no
# framing (clickjacking an "Approve" button is the attack this blocks).
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # NOTE: "same-origin", not "no-referrer": with no-referrer chromium sends "Origin: null" on our own
    # form posts, and the origin check below would refuse them.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def html(body: str, *, status_code: int = 200) -> HTMLResponse:
    return secured(HTMLResponse(body, status_code=status_code))


def redirect(location: str) -> RedirectResponse:
    # 303: the browser follows a POST's answer with a GET.
    return secured(RedirectResponse(location, status_code=303))


def uses_https(request: Request, public_url: str) -> bool:
    return request.url.scheme == "https" or urlsplit(public_url).scheme == "https"


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int) -> None:
    # NOTE: HttpOnly (no script reads it), SameSite=Strict (no cross-site request carries it),
    # Secure whenever the broker is served over https, and scoped to the pages' path.
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, secure=secure, httponly=True,
                        samesite="strict")


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=secure, httponly=True, samesite="strict")


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def safe_next(target: str | None) -> str:
    """Only a path inside the pages may be a post-sign-in destination (no open redirect)."""
    if (isinstance(target, str) and target.startswith("/ui/") and not target.startswith("//")
            and "\\" not in target and len(target) <= 200 and all(32 < ord(c) < 127 for c in target)):
        return target
    return "/ui/requests"
