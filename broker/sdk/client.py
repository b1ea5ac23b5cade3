"""``BrokerClient``: the agent's way to ask the broker for short-lived AWS credentials.

Configuration comes from arguments or the environment:

==========================  =====================================================
``BROKER_URL``              the broker, e.g. ``http://127.0.0.1:8080``
``BROKER_TOKEN``            the agent's API key or OIDC token
``BROKER_TOKEN_FILE``       a file holding the token (re-read on every request)
``BROKER_TOKEN_COMMAND``    a command that prints an OIDC token (run per request)
==========================  =====================================================

The client speaks only the HTTP API's JSON; it imports nothing of the server.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from broker.sdk.errors import (ApprovalDenied, ApprovalTimeout, BrokerAPIError, BrokerUnreachable,
                               ConfigurationError, RequestExpired, error_from_response)
from broker.sdk.models import IssuedCredentials, PendingRequest, credentials_from_body, iso_time, parse_time
from broker.sdk.waiting import WaitProgress

log = logging.getLogger("broker.sdk")

# Where every command looks when nothing names a broker (what `broker dev` serves); the SDK itself needs a URL.
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
TOKEN_COMMAND_TIMEOUT = 30.0
# Seconds between chunks of a streamed answer: the export of a large log takes longer than one call may.
STREAM_READ_TIMEOUT = 120.0
# Request states after which waiting is pointless (the request will never be approved).
FINAL_REFUSALS = {"denied": ApprovalDenied, "cancelled": ApprovalDenied, "failed": ApprovalDenied,
                  "expired": RequestExpired}


# ----------------------------------------------------------------------------- the broker's URL
def checked_url(url: str) -> str:
    """``url`` without a trailing slash, or a clear error for the usual mistakes (no scheme, ``/v1``)."""
    text = str(url).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        guess = f" (did you mean http://{text}?)" if "://" not in text else ""
        raise ConfigurationError("invalid_broker_url", f"the broker URL {text!r} needs http:// or https://{guess}")
    if parts.path.rstrip("/").endswith("/v1"):
        raise ConfigurationError("invalid_broker_url", f"the broker URL names the server, not the API: use "
                                 f"{text.removesuffix('/v1')} (without /v1)")
    if parts.query or parts.fragment:
        raise ConfigurationError("invalid_broker_url", f"the broker URL {text!r} must not have a query or fragment")
    return text


def unreachable_message(url: str, exc: Exception) -> str:
    """Why a call got no HTTP answer, naming the http/https mix-up when that is what happened."""
    said = str(exc).lower()
    if url.startswith("https://") and ("wrong version number" in said or "record layer" in said
                                       or "packet length" in said):
        return f"the broker at {url} does not speak TLS: use http://{url.removeprefix('https://')}"
    if url.startswith("https://") and "certificate" in said:
        return f"the broker at {url} presented a certificate this machine does not trust"
    if url.startswith("http://") and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return (f"the broker at {url} closed the connection without an HTTP answer: if it serves HTTPS, use "
                f"https://{url.removeprefix('http://')}")
    return f"cannot reach the broker at {url} ({exc.__class__.__name__}): is it running? (broker dev starts one)"


# ----------------------------------------------------------------------------- tokens
class TokenSource:
    """Where the agent's bearer token comes from: a literal, a file, or a command printing an OIDC token."""

    def __init__(self, *, token: str | None = None, token_file: str | Path | None = None,
                 token_command: str | None = None) -> None:
        given = [x for x in (token, token_file, token_command) if x]
        if len(given) > 1:
            raise ConfigurationError(None, "give one of token, token file or token command, not several")
        self._token, self._file, self._command = token, token_file, token_command
        # The last tokens handed out (a file's or a command's change): what a caller must scrub from output.
        self._recent: collections.deque[str] = collections.deque(maxlen=4)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "TokenSource":
        env = os.environ if environ is None else environ
        for name, kwarg in (("BROKER_TOKEN", "token"), ("BROKER_TOKEN_FILE", "token_file"),
                            ("BROKER_TOKEN_COMMAND", "token_command")):
            if env.get(name):
                return cls(**{kwarg: env[name]})
        return cls()

    @property
    def configured(self) -> bool:
        return bool(self._token or self._file or self._command)

    def token(self) -> str:
        value = self._read()
        if value not in self._recent:
            self._recent.append(value)
        return value

    def recent(self) -> tuple[str, ...]:
        """The tokens this source handed out lately (none before the first request): never to be shown."""
        return tuple(self._recent)

    def _read(self) -> str:
        if self._token:
            return self._token.strip()
        if self._file:
            try:
                value = Path(self._file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigurationError(None, f"cannot read the token file {self._file}") from exc
            if not value:
                raise ConfigurationError(None, f"the token file {self._file} is empty")
            return value
        if self._command:
            return _run_token_command(self._command)
        raise ConfigurationError(None, "no broker token: set BROKER_TOKEN, BROKER_TOKEN_FILE or BROKER_TOKEN_COMMAND")

    def identity_hash(self) -> str:
        """A stable digest naming who the token is (for cache keys); never the token itself."""
        if self._command:
            basis = "command:" + self._command   # OIDC tokens rotate; the command names the identity
        elif self._file:
            basis = "token:" + self.token()
        else:
            basis = "token:" + (self._token or "")
        return hashlib.sha256(basis.encode()).hexdigest()


def _run_token_command(command: str) -> str:
    try:
        # NOTE: no shell: the command line is split like a credential_process line.
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=TOKEN_COMMAND_TIMEOUT,
                              check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(None, "the token command could not be run") from exc
    if done.returncode != 0 or not done.stdout.strip():
        # NOTE: stderr/stdout are not echoed: they could hold a token.
        raise ConfigurationError(None, f"the token command exited with {done.returncode} and printed no token")
    return done.stdout.strip().splitlines()[-1].strip()


# ----------------------------------------------------------------------------- the client
class BrokerClient:
    """HTTP client of the broker API v1 (one per agent identity; thread-safe like ``httpx.Client``)."""

    def __init__(self, url: str | None = None, *, token: str | None = None, token_file: str | Path | None = None,
                 token_command: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic) -> None:
        url = url or os.environ.get("BROKER_URL")
        if not url:
            # NOTE: the SDK does not guess (the CLI falls back to DEFAULT_URL, where `broker dev` serves).
            raise ConfigurationError(None, f"no broker URL: pass url= or set BROKER_URL (broker dev: {DEFAULT_URL})")
        if any((token, token_file, token_command)):
            self.tokens = TokenSource(token=token, token_file=token_file, token_command=token_command)
        else:
            self.tokens = TokenSource.from_environment()
        if not self.tokens.configured:
            raise ConfigurationError(None, "no broker token: set BROKER_TOKEN, BROKER_TOKEN_FILE or "
                                           "BROKER_TOKEN_COMMAND (or pass token=)")
        self.url = checked_url(url)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"User-Agent": "agent-broker-sdk/1"})
        self._sleep, self._monotonic = sleep, monotonic

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "BrokerClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _send(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
              auth: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens.token()}"} if auth else {}
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(None, unreachable_message(self.url, exc)) from exc
        self._raise_for_error(response)
        return response

    def _raise_for_error(self, response: httpx.Response) -> None:
        """The one decoder of the API's error answers: ``{"error": ...}`` as its typed exception."""
        if response.status_code == 400 and self.url.startswith("http://") and b"HTTPS" in response.content[:300]:
            raise BrokerUnreachable(None, f"the broker at {self.url} speaks HTTPS: use https://"
                                          f"{self.url.removeprefix('http://')}")
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise error_from_response(response.status_code, body)

    @contextmanager
    def stream(self, path: str, *, params: Mapping[str, Any] | None = None,
               read_timeout: float = STREAM_READ_TIMEOUT) -> Iterator[Iterator[bytes]]:
        """A long GET answer (the log export) as byte chunks, once the broker answered 2xx (errors as ``call``'s)."""
        headers = {"Authorization": f"Bearer {self.tokens.token()}"}
        query = {k: v for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        try:
            with self._http.stream("GET", path, params=query, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_error(response)
                yield response.iter_bytes()
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(None, unreachable_message(self.url, exc)) from exc

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise BrokerAPIError("malformed_response", "the broker's answer was not JSON", response.status_code) \
                from exc

    def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """Any API call (``/v1/...``): its JSON answer, or the typed error of the API's ``{"error": ...}``."""
        return self._json(method, path, json=json, params={k: v for k, v in (params or {}).items() if v is not None})

    def whoami(self) -> dict[str, Any]:
        """Who the broker says this token is: id, roles, acts_for, groups, auth_method."""
        return self._json("GET", "/v1/whoami")

    def my_requests(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """This principal's own requests (as requester, or as the human an agent acts for), newest first."""
        return list(self.call("GET", "/v1/requests/mine", params={"status": status}).get("requests", []))

    def grants(self, *, agent: str | None = None, access_key_id: str | None = None,
               include_expired: bool = False) -> list[dict[str, Any]]:
        """Grants (issued sessions) this principal may see; live ones unless ``include_expired``."""
        params = {"agent": agent, "access_key_id": access_key_id, "include_expired": include_expired or None}
        return list(self.call("GET", "/v1/grants", params=params).get("grants", []))

    def revoke_grant(self, grant_id: str, *, reason: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/grants/{quote(grant_id, safe='')}/revoke", json={"reason": reason})

    # ------------------------------------------------------------------ agent use cases
    def request(self, template: str, params: Mapping[str, Any] | None = None, *, reason: str,
                ttl: int | None = None) -> IssuedCredentials | PendingRequest:
        """Ask for a scope: credentials now (non-production) or a pending request (needs co-signers)."""
        body: dict[str, Any] = {"template": template, "parameters": dict(params or {}), "reason": reason}
        if ttl is not None:
            body["ttl_seconds"] = int(ttl)
        response = self._send("POST", "/v1/requests", json=body)
        answer = response.json()
        if response.status_code == 201 and answer.get("credentials"):
            return credentials_from_body(answer)
        return PendingRequest.from_view(answer)

    def get_request(self, request_id: str) -> PendingRequest:
        return PendingRequest.from_view(self._json("GET", f"/v1/requests/{request_id}"))

    def request_view(self, request_id: str) -> dict[str, Any]:
        """The full request as the API shows it (policy, approvals, blast radius, grant)."""
        return self._json("GET", f"/v1/requests/{request_id}")

    def redeem(self, request_id: str) -> IssuedCredentials:
        """Collect the credentials of an approved request (once; only the requesting agent)."""
        return credentials_from_body(self._json("POST", f"/v1/requests/{request_id}/credentials"))

    def cancel(self, request_id: str) -> PendingRequest:
        return PendingRequest.from_view(self._json("POST", f"/v1/requests/{request_id}/cancel"))

    def wait(self, request_id: str, *, timeout: float = 900.0, initial_delay: float = 1.0, max_delay: float = 15.0,
             on_wait: Callable[[PendingRequest], None] | None = None,
             on_progress: Callable[[str], None] | None = None) -> PendingRequest:
        """Wait until the request is approved (returns it; then ``redeem``), with exponential backoff.

        Raises ``ApprovalDenied`` (denied, cancelled, failed; the message carries the denial's reason),
        ``RequestExpired``, or ``ApprovalTimeout`` whose message says who must approve and where.
        ``on_wait`` hears of every change.  Each co-signature is told as it arrives, with the time since
        the request and the time left before it expires, then the outcome (``broker.sdk.waiting``): as a
        warning of the ``broker.sdk`` logger (so on stderr by default) and to ``on_progress``.
        """
        deadline = self._monotonic() + max(0.0, timeout)
        delay, last_seen = max(0.05, initial_delay), None
        progress = WaitProgress(request_id)
        while True:
            pending = self.get_request(request_id)
            for line in progress.lines(pending.view, now=datetime.now(UTC)):
                log.warning("%s", line)
                if on_progress is not None:
                    on_progress(line)
            if pending.status in ("approved", "issued"):
                return pending
            refusal = FINAL_REFUSALS.get(pending.status)
            if refusal is not None:
                reason = pending.view.get("decided_reason")
                said = f": {reason}" if reason else ""
                raise refusal(pending.status if refusal is ApprovalDenied else None,
                              f"request {pending.id} for '{pending.template}' was {pending.status}{said}", 409)
            state = (pending.status, pending.approvals_counted)
            if state != last_seen:
                last_seen = state
                log.warning("waiting for approval: %s", pending.message())
                if on_wait is not None:
                    on_wait(pending)
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise ApprovalTimeout(None, f"gave up waiting after {timeout:.0f}s: {pending.message()}", 0)
            # Full jitter keeps many waiting agents from polling in step.
            self._sleep(min(remaining, delay * (0.5 + random.random() / 2)))
            delay = min(max_delay, delay * 2)

    def boto3_session(self, template: str, params: Mapping[str, Any] | None = None, *, reason: str,
                      ttl: int | None = None, region: str | None = None, endpoint_url: str | None = None,
                      **options: Any):
        """A ``boto3.Session`` for the scope whose credentials refresh through the broker (see ``broker.sdk.boto``)."""
        from broker.sdk.boto import boto3_session

        return boto3_session(self, template, params, reason=reason, ttl=ttl, region=region,
                             endpoint_url=endpoint_url, **options)

    # ------------------------------------------------------------------ approvers and reviewers
    def pending_requests(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/requests").get("requests", []))

    def decide(self, request_id: str, decision: str, reason: str) -> dict[str, Any]:
        """Co-sign (``approve``) or refuse (``deny``) a pending request as this principal."""
        return self._json("POST", f"/v1/requests/{request_id}/approvals",
                          json={"decision": decision, "reason": reason})

    def templates(self) -> list[dict[str, Any]]:
        body = self._json("GET", "/v1/templates")
        return list(body.get("templates", body) if isinstance(body, dict) else body)

    def template(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/templates/{name}")

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self._json("GET", "/v1/events", params=params).get("events", []))

    def checkpoint(self) -> dict[str, Any]:
        return self._json("POST", "/v1/events/checkpoints")

    def export_events(self, since: str | None = None) -> Iterator[str]:
        """The log export (NDJSON lines, ending with a signed checkpoint)."""
        with self.stream("/v1/events/export", params={"since": since}) as chunks:
            pending = b""
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode("utf-8") for line in lines)
            if pending:
                yield pending.decode("utf-8")

    def ready(self) -> bool:
        """Whether the broker answers ``/readyz`` with 200 (no token needed)."""
        try:
            self._send("GET", "/readyz", auth=False)
        except BrokerAPIError:
            return False
        return True

    def public_key_pem(self) -> bytes:
        return self._send("GET", "/v1/events/public-key", auth=False).content


__all__ = ["DEFAULT_URL", "BrokerClient", "checked_url", "IssuedCredentials", "PendingRequest", "TokenSource", "credentials_from_body",
           "iso_time", "parse_time"]
