"""One error base for the whole broker.

Every error the broker raises on purpose is a :class:`BrokerError` with a stable,
machine-readable ``code`` (snake_case, part of the API contract) and a human
sentence.  The HTTP layer translates them in one place; nothing else decides
status codes.  Never put a secret, an AWS error message or a database error
message into ``message``.
"""

from __future__ import annotations

from typing import Any


class BrokerError(Exception):
    """Base for every deliberate broker error."""

    code: str = "broker_error"
    status: int = 400

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.details = details or {}

    def diagnostics(self) -> str:
        """A human sentence, safe to show to the caller."""
        return self.message

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(BrokerError):
    """The caller sent something malformed (422)."""

    code = "invalid_input"
    status = 422


class InvalidParameter(InvalidInput):
    code = "invalid_parameter"


class InvalidTtl(InvalidInput):
    code = "invalid_ttl"


class TemplateError(BrokerError):
    """A scope template is unusable (bad file, guardrail violation, policy too large)."""

    code = "template_invalid"
    status = 422


class GuardrailViolation(TemplateError):
    code = "guardrail_violation"


class PolicyTooLarge(TemplateError):
    code = "policy_too_large"


class NotFound(BrokerError):
    code = "not_found"
    status = 404


class TemplateNotFound(NotFound):
    code = "template_not_found"


class RequestNotFound(NotFound):
    code = "request_not_found"


class Unauthenticated(BrokerError):
    code = "unauthenticated"
    status = 401


class Forbidden(BrokerError):
    code = "forbidden"
    status = 403


class Conflict(BrokerError):
    code = "conflict"
    status = 409


class RateLimited(BrokerError):
    code = "rate_limited"
    status = 429


class Unavailable(BrokerError):
    """A dependency (STS, database, identity provider, the log) failed; nothing was issued."""

    code = "service_unavailable"
    status = 503


class StsUnavailable(Unavailable):
    code = "sts_unavailable"


class StorageUnavailable(Unavailable):
    code = "storage_unavailable"


class StorageDisconnected(StorageUnavailable):
    """The database connection was lost mid unit of work (a restart, a failover, a cut connection).

    The unit of work did not commit, unless the loss hit its COMMIT: then its outcome is unknown.
    A fresh connection may well work; the caller-facing answer is the same as any outage.
    """


class IdentityProviderUnavailable(Unavailable):
    code = "identity_provider_unavailable"


class LogIntegrityError(BrokerError):
    """The issuance log failed verification."""

    code = "log_integrity_error"
    status = 500
