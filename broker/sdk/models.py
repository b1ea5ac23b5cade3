"""What the broker's answers become on the agent's side: issued credentials, a pending request, API times.

Plain values built from the HTTP API's JSON; nothing here makes a call (``broker.sdk.client`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.sdk.errors import BrokerAPIError


@dataclass(frozen=True)
class IssuedCredentials:
    """STS session credentials the broker issued for one request.  The secret parts never print."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    request_id: str
    template: str
    environment: str
    grant: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def seconds_left(self, now: datetime | None = None) -> float:
        return (self.expiration - (now or datetime.now(UTC))).total_seconds()

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    def as_environment(self) -> dict[str, str]:
        """The standard AWS environment variables (for a child process only)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_SESSION_TOKEN": self.session_token}

    def as_credential_process(self) -> dict[str, Any]:
        """The JSON a ``credential_process`` prints (AWS CLI / SDK convention, Version 1)."""
        return {"Version": 1, "AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key,
                "SessionToken": self.session_token, "Expiration": iso_time(self.expiration)}

    def secrets(self) -> tuple[str, str]:
        """The values that must never be shown (for scrubbing output)."""
        return self.secret_access_key, self.session_token


@dataclass(frozen=True)
class PendingRequest:
    """A request that is not (yet) issued: who must approve, how many, and where."""

    id: str
    status: str
    template: str
    environment: str
    approvals_required: int
    approvals_counted: int
    approvers: tuple[str, ...]
    page_url: str | None
    view: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_view(cls, view: Mapping[str, Any]) -> "PendingRequest":
        return cls(id=str(view["id"]), status=str(view.get("status", "")), template=str(view.get("template", "")),
                   environment=str(view.get("environment", "")),
                   approvals_required=int(view.get("approvals_required") or 0),
                   approvals_counted=int(view.get("approvals_counted") or 0),
                   approvers=tuple(view.get("approvers") or ()),
                   page_url=(view.get("links") or {}).get("page"), view=dict(view))

    @property
    def who_must_approve(self) -> str:
        people = ", ".join(self.approvers) or "the template's approvers"
        return (f"{self.approvals_required} approval(s) from {people} "
                f"({self.approvals_counted} so far; not the agent's own human)")

    def message(self) -> str:
        link = f"; approve at {self.page_url}" if self.page_url else ""
        return (f"request {self.id} for '{self.template}' is {self.status}: needs {self.who_must_approve}{link}")


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def credentials_from_body(body: Mapping[str, Any]) -> IssuedCredentials:
    creds = body.get("credentials")
    if not isinstance(creds, Mapping):
        raise BrokerAPIError("malformed_response", "the broker's answer carried no credentials", 0)
    return IssuedCredentials(
        access_key_id=str(creds["access_key_id"]), secret_access_key=str(creds["secret_access_key"]),
        session_token=str(creds["session_token"]), expiration=parse_time(creds["expiration"]),
        request_id=str(body["id"]), template=str(body.get("template", "")),
        environment=str(body.get("environment", "")), grant=dict(body.get("grant") or {}))


__all__ = ["IssuedCredentials", "PendingRequest", "credentials_from_body", "iso_time", "parse_time"]
