"""Credentials for AWS's own conventions: ``credential_process`` output and its private cache.

Every AWS call through a ``credential_process`` profile runs the command again, so unexpired
credentials are cached (like the AWS CLI's own ``~/.aws/cli/cache``): one file per scope in a
0700 directory, each file 0600, named by a digest of broker URL + the principal's token digest
+ template + parameters.  A production request that waits for co-signers is remembered there
too (its id only), so running the command again after approval redeems it instead of asking anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.sdk.client import BrokerClient
from broker.sdk.errors import ApprovalDenied, InvalidRequest, NotFound, RequestExpired
from broker.sdk.models import IssuedCredentials, PendingRequest, parse_time

# Cached credentials are used only while more than this is left (then a fresh request).
REFRESH_MARGIN_SECONDS = 5 * 60
DIR_MODE, FILE_MODE = 0o700, 0o600


def default_cache_dir() -> Path:
    override = os.environ.get("BROKER_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agent-broker"


def scope_key(*, url: str, identity_hash: str, template: str, params: Mapping[str, Any]) -> str:
    canonical = json.dumps({"url": url.rstrip("/"), "who": identity_hash, "template": template,
                            "params": {str(k): str(v) for k, v in params.items()}}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class CredentialCache:
    """A private directory of per-scope credential files (0600 in a 0700 directory)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # NOTE: an existing directory may have been created loosely; tighten it.
        os.chmod(self.directory, DIR_MODE)

    def _path(self, key: str, kind: str) -> Path:
        return self.directory / f"{key}.{kind}.json"

    def _write(self, path: Path, body: Mapping[str, Any]) -> None:
        self._ensure_dir()
        # Write-then-rename: a concurrent reader sees the old file or the new one, never half of one.
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                json.dump(body, handle)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def load(self, key: str, *, now: datetime | None = None,
             margin: float = REFRESH_MARGIN_SECONDS) -> IssuedCredentials | None:
        body = self._read(self._path(key, "credentials"))
        if body is None:
            return None
        try:
            issued = IssuedCredentials(
                access_key_id=body["AccessKeyId"], secret_access_key=body["SecretAccessKey"],
                session_token=body["SessionToken"], expiration=parse_time(body["Expiration"]),
                request_id=body.get("RequestId", ""), template=body.get("Template", ""),
                environment=body.get("Environment", ""))
        except (KeyError, TypeError, ValueError):
            self.forget(key)
            return None
        if issued.seconds_left(now or datetime.now(UTC)) <= margin:
            return None
        return issued

    def store(self, key: str, issued: IssuedCredentials) -> None:
        self._write(self._path(key, "credentials"), issued.as_credential_process() | {
            "RequestId": issued.request_id, "Template": issued.template, "Environment": issued.environment})
        self._path(key, "pending").unlink(missing_ok=True)

    def pending_id(self, key: str) -> str | None:
        body = self._read(self._path(key, "pending"))
        return str(body["request_id"]) if body and body.get("request_id") else None

    def remember_pending(self, key: str, request_id: str) -> None:
        self._write(self._path(key, "pending"), {"request_id": request_id})

    def all_secrets(self) -> set[str]:
        """Every secret access key and session token in the cache (for scrubbing command output)."""
        found: set[str] = set()
        if not self.directory.is_dir():
            return found
        for path in self.directory.glob("*.credentials.json"):
            body = self._read(path) or {}
            found.update(str(body[k]) for k in ("SecretAccessKey", "SessionToken") if body.get(k))
        return found

    def forget(self, key: str) -> None:
        for kind in ("credentials", "pending"):
            self._path(key, kind).unlink(missing_ok=True)


@dataclass
class ScopeCredentials:
    """Credentials for one scope, from the cache when fresh, else from the broker.

    ``obtain`` returns ``IssuedCredentials`` or the ``PendingRequest`` that waits for co-signers.
    """

    client: BrokerClient
    cache: CredentialCache
    template: str
    params: Mapping[str, Any]
    reason: str | None
    ttl: int | None = None
    # Cached credentials are used only while more than this is left.
    refresh_margin: float = REFRESH_MARGIN_SECONDS

    @property
    def key(self) -> str:
        return scope_key(url=self.client.url, identity_hash=self.client.tokens.identity_hash(),
                         template=self.template, params=self.params)

    def obtain(self, *, wait_seconds: float = 0.0,
               on_wait: Callable[[PendingRequest], None] | None = None) -> IssuedCredentials | PendingRequest:
        key = self.key
        cached = self.cache.load(key, margin=self.refresh_margin)
        if cached is not None:
            return cached
        answer = self._from_pending(key)
        if answer is None:
            if not self.reason:
                raise InvalidRequest("missing_reason", "a reason is required to request new credentials "
                                                        "(--reason)", 422, field="reason")
            answer = self.client.request(self.template, self.params, reason=self.reason, ttl=self.ttl)
        if isinstance(answer, PendingRequest):
            self.cache.remember_pending(key, answer.id)
            if wait_seconds <= 0:
                return answer
            self.client.wait(answer.id, timeout=wait_seconds, on_wait=on_wait)
            answer = self.client.redeem(answer.id)
        self.cache.store(key, answer)
        return answer

    def _from_pending(self, key: str) -> IssuedCredentials | PendingRequest | None:
        request_id = self.cache.pending_id(key)
        if request_id is None:
            return None
        try:
            pending = self.client.get_request(request_id)
        except NotFound:
            self.cache.forget(key)
            return None
        if pending.status == "approved":
            return self.client.redeem(request_id)
        if pending.status == "pending":
            return pending
        if pending.status in ("denied", "cancelled"):
            self.cache.forget(key)
            raise ApprovalDenied(pending.status, f"request {pending.id} for '{pending.template}' was "
                                                 f"{pending.status}; it ends there", 409)
        # expired, issued (redeemed elsewhere) or failed: start afresh.
        self.cache.forget(key)
        if pending.status == "expired" and not self.reason:
            raise RequestExpired(None, f"request {pending.id} expired before it was approved", 409)
        return None


__all__ = ["CredentialCache", "REFRESH_MARGIN_SECONDS", "ScopeCredentials", "default_cache_dir", "scope_key"]
