"""A ``boto3.Session`` whose credentials come from the broker and refresh before they expire.

botocore's ``RefreshableCredentials`` does the timing and locking: between the advisory and
the mandatory window one thread refreshes while the others keep using the current keys; in
the mandatory window every thread waits on the same lock.  ``ScopeRefresher`` adds its own
lock and reuses keys that are still fresh, so concurrent refreshes in one process make one
request to the broker.

A non-production scope is simply requested again.  A production scope needs humans for
every issuance, so its refresh raises ``ApprovalRequired`` (in the mandatory window, when the
keys are about to stop working) instead of failing mid-task with an AWS error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import boto3
from botocore.credentials import RefreshableCredentials

from broker.sdk.errors import ApprovalRequired
from broker.sdk.models import IssuedCredentials, PendingRequest

# Refresh when this much lifetime is left (STS sessions last 15 minutes at least).
ADVISORY_REFRESH_SECONDS = 5 * 60
MANDATORY_REFRESH_SECONDS = 2 * 60
METHOD = "agent-broker"


class ScopeClient(Protocol):
    """What a refresher needs of ``broker.sdk.client.BrokerClient`` (which imports this module, not the reverse)."""

    def request(self, template: str, params: Mapping[str, Any] | None = None, *, reason: str,
                ttl: int | None = None) -> IssuedCredentials | PendingRequest: ...

    def wait(self, request_id: str, *, timeout: float = ...) -> PendingRequest: ...

    def redeem(self, request_id: str) -> IssuedCredentials: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ScopeRefresher:
    """Fetches credentials for one (template, parameters) scope; callable as botocore's ``refresh_using``."""

    def __init__(self, client: ScopeClient, template: str, params: Mapping[str, Any] | None, *, reason: str,
                 ttl: int | None = None, approval_timeout: float | None = None,
                 clock: Callable[[], datetime] = _utc_now, fresh_for: float = ADVISORY_REFRESH_SECONDS) -> None:
        self.client, self.template, self.params = client, template, dict(params or {})
        self.reason, self.ttl, self.approval_timeout = reason, ttl, approval_timeout
        self.clock, self.fresh_for = clock, fresh_for
        self._lock = threading.Lock()
        self.current: IssuedCredentials | None = None
        self.issued_count = 0

    def credentials(self) -> IssuedCredentials:
        with self._lock:
            current = self.current
            if current is not None and current.seconds_left(self.clock()) > self.fresh_for:
                return current    # another thread refreshed a moment ago
            if current is not None and current.is_production:
                raise ApprovalRequired(
                    f"the production scope '{self.template}' (request {current.request_id}) expires at "
                    f"{current.expiration:%H:%M:%S} UTC and cannot be renewed silently: a new request "
                    f"needs fresh human approval (BrokerClient.request + wait + redeem, or boto3_session again)",
                    request_id=current.request_id)
            self.current = self._obtain()
            self.issued_count += 1
            return self.current

    def _obtain(self) -> IssuedCredentials:
        answer = self.client.request(self.template, self.params, reason=self.reason, ttl=self.ttl)
        if isinstance(answer, IssuedCredentials):
            return answer
        return self._after_approval(answer)

    def _after_approval(self, pending: PendingRequest) -> IssuedCredentials:
        if self.approval_timeout is None:
            raise ApprovalRequired(f"'{self.template}' needs human approval before credentials are issued: "
                                   f"{pending.message()}", request_id=pending.id, page_url=pending.page_url,
                                   approvers=list(pending.approvers))
        self.client.wait(pending.id, timeout=self.approval_timeout)
        return self.client.redeem(pending.id)

    def __call__(self) -> dict[str, Any]:
        issued = self.credentials()
        return {"access_key": issued.access_key_id, "secret_key": issued.secret_access_key,
                "token": issued.session_token, "expiry_time": issued.expiration.isoformat()}


def refreshable_credentials(refresher: ScopeRefresher, *, advisory_timeout: float = ADVISORY_REFRESH_SECONDS,
                            mandatory_timeout: float = MANDATORY_REFRESH_SECONDS) -> RefreshableCredentials:
    """botocore credentials that call ``refresher`` (first fetch now: an approval problem surfaces here)."""
    first = refresher()
    return RefreshableCredentials(
        access_key=first["access_key"], secret_key=first["secret_key"], token=first["token"],
        expiry_time=refresher.current.expiration, refresh_using=refresher, method=METHOD,
        time_fetcher=refresher.clock, advisory_timeout=advisory_timeout, mandatory_timeout=mandatory_timeout)


class BrokerSession(boto3.Session):
    """A ``boto3.Session`` whose clients default to one endpoint and whose credentials come from the broker."""

    def __init__(self, *, region_name: str, endpoint_url: str | None, refresher: ScopeRefresher) -> None:
        super().__init__(region_name=region_name)
        self.endpoint_url = endpoint_url
        self.refresher = refresher

    def client(self, *args: Any, **kwargs: Any):
        if self.endpoint_url:
            kwargs.setdefault("endpoint_url", self.endpoint_url)
        return super().client(*args, **kwargs)

    def resource(self, *args: Any, **kwargs: Any):
        if self.endpoint_url:
            kwargs.setdefault("endpoint_url", self.endpoint_url)
        return super().resource(*args, **kwargs)


def boto3_session(client: ScopeClient, template: str, params: Mapping[str, Any] | None = None, *, reason: str,
                  ttl: int | None = None, region: str | None = None, endpoint_url: str | None = None,
                  approval_timeout: float | None = None, clock: Callable[[], datetime] = _utc_now,
                  advisory_timeout: float = ADVISORY_REFRESH_SECONDS,
                  mandatory_timeout: float = MANDATORY_REFRESH_SECONDS):
    """A ``boto3.Session`` on the scope's credentials, refreshed through the broker before expiry.

    ``endpoint_url`` (e.g. the dev broker's fake AWS) becomes the session's default for every
    client (``AWS_ENDPOINT_URL`` works too).  A production scope raises ``ApprovalRequired``
    unless ``approval_timeout`` is given, in which case it waits that long for co-signers.
    """
    refresher = ScopeRefresher(client, template, params, reason=reason, ttl=ttl, approval_timeout=approval_timeout,
                               clock=clock, fresh_for=advisory_timeout)
    session = BrokerSession(region_name=region or "us-east-1", endpoint_url=endpoint_url, refresher=refresher)
    # NOTE: the documented way to give a boto3 session refreshable credentials: botocore's session
    # holds them in ``_credentials``; boto3 clients read them per request.
    session._session._credentials = refreshable_credentials(
        refresher, advisory_timeout=advisory_timeout, mandatory_timeout=mandatory_timeout)
    return session


__all__ = ["ADVISORY_REFRESH_SECONDS", "MANDATORY_REFRESH_SECONDS", "BrokerSession", "ScopeRefresher", "boto3_session",
           "refreshable_credentials"]
