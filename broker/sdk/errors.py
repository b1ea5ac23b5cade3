"""Typed errors of the agent SDK, each carrying the API's stable error ``code``.

The SDK stands on the HTTP API alone (it imports nothing of the server), so these mirror
``broker.errors`` by status: an agent catches ``Forbidden`` or checks ``exc.code``.
Messages come from the API, which never puts secrets in them; the SDK never adds any.
"""

from __future__ import annotations

from typing import Any


class BrokerAPIError(Exception):
    """An error answer of the broker (or no answer at all: ``status`` 0)."""

    default_code = "broker_error"

    def __init__(self, code: str | None, message: str, status: int = 0, *, field: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.status = status
        self.field = field
        self.details = details or {}

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"[{self.code}] {self.message}{where}"


class InvalidRequest(BrokerAPIError):
    default_code = "invalid_input"


class Unauthenticated(BrokerAPIError):
    default_code = "unauthenticated"


class Forbidden(BrokerAPIError):
    default_code = "forbidden"


class NotFound(BrokerAPIError):
    default_code = "not_found"


class Conflict(BrokerAPIError):
    default_code = "conflict"


class ApprovalPending(Conflict):
    """The request still waits for co-signers (redeem too early)."""

    default_code = "approval_pending"


class RequestExpired(Conflict):
    default_code = "request_expired"


class PayloadTooLarge(BrokerAPIError):
    default_code = "payload_too_large"


class RateLimited(BrokerAPIError):
    default_code = "rate_limited"


class Unavailable(BrokerAPIError):
    default_code = "unavailable"


class BrokerUnreachable(Unavailable):
    """No HTTP answer at all (connection refused, timeout)."""

    default_code = "broker_unreachable"


class ConfigurationError(BrokerAPIError):
    """The SDK is not configured (no URL, no token, a token command that failed)."""

    default_code = "sdk_not_configured"


class ApprovalRequired(BrokerAPIError):
    """A production scope needs (new) human approval before credentials can be issued.

    ``request_id`` and ``page_url`` point to the pending request when there is one.
    """

    default_code = "approval_required"

    def __init__(self, message: str, *, request_id: str | None = None, page_url: str | None = None,
                 approvers: list[str] | None = None) -> None:
        super().__init__(self.default_code, message, 0)
        self.request_id = request_id
        self.page_url = page_url
        self.approvers = approvers or []


class ApprovalDenied(BrokerAPIError):
    """An approver denied the request (or it was cancelled): it ends there."""

    default_code = "approval_denied"


class ApprovalTimeout(BrokerAPIError):
    """``wait`` gave up before enough co-signers approved; the request may still be approved later."""

    default_code = "approval_timeout"


# API status -> exception class; some codes refine the class further.
ERRORS_BY_STATUS: dict[int, type[BrokerAPIError]] = {
    400: InvalidRequest, 401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited, 503: Unavailable,
}
ERRORS_BY_CODE: dict[str, type[BrokerAPIError]] = {
    "approval_pending": ApprovalPending, "request_expired": RequestExpired,
}


def error_from_response(status: int, body: Any) -> BrokerAPIError:
    """The typed exception for an API error answer ``{"error": {"code", "message", "field"?}}``."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {}
    code = str(detail.get("code") or "") or None
    message = str(detail.get("message") or f"the broker answered HTTP {status}")
    cls = ERRORS_BY_CODE.get(code or "") or ERRORS_BY_STATUS.get(status)
    if cls is None:
        cls = Unavailable if status >= 500 else BrokerAPIError
    return cls(code, message, status, field=detail.get("field"),
               details={k: v for k, v in detail.items() if k not in {"code", "message", "field"}})
