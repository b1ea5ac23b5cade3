"""Prometheus metrics, served at ``GET /metrics``.

Each container has its own ``CollectorRegistry`` (never the process-global one), so that
every app a test builds starts from zero.  Nothing here touches the use cases:

* counters are fed by a log observer (``broker.storage.observed``): one increment per entry of
  a *committed* unit of work, so a count is never ahead of the log;
* the HTTP histogram is an ASGI middleware, labelled by route template, never by raw path;
* the STS histogram wraps the ``CredentialMinter``;
* with ``server_timing`` set, every response carries ``Server-Timing: app;dur=..., sts;dur=...,
  lock;dur=...`` (milliseconds): the time the app took up to the response's start, the part of it
  spent in AssumeRole calls, and how long its units of work held the log's lock (the serial point of
  every replica and worker).  ``app - sts`` is the broker's own overhead, measured from outside;
* the log lock's hold time per unit of work is a histogram too.

Counters are per process; sum them over replicas.  Label values are bounded: a template
label is a catalog name or ``other`` (a refused request may name any template), a reason
code is a snake_case error code or ``other``.  No principal id is ever a label value.

``broker_requests_refused_total`` counts every refusal, logged one by one or not (the refusal
budget, ``broker.usecases.refusal_budget``): a ``refused`` entry and a ``refusals_suppressed`` entry count one
each (their template and reason code), and a count of suppressed refusals carried in an entry's
details counts by its reason codes, with ``template="other"`` (the budget does not record which
template a suppressed refusal named), less the ones its ``refusals_suppressed`` entry counted
already.  Suppressed refusals reach the counter when their count reaches the log: on the
principal's next logged refusal, in ``broker serve``'s minute sweep, or at shutdown.

Metric names (all prefixed ``broker_``) are listed in ``METRIC_NAMES``.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from broker.domain.events import REFUSAL_TYPES, EventType
from broker.ports import CredentialMinter, MintedCredentials, MintOrder
from broker.usecases.refusal_budget import carried_refusals

OTHER = "other"
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# The STS seconds of the HTTP request being served (a list the middleware owns; threads the
# request runs on share it, as starlette copies the context into its worker threads).
_STS_SECONDS: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("broker_sts_seconds",
                                                                                  default=None)
# The log lock's hold times of the HTTP request being served (the same way).
_LOCK_SECONDS: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("broker_lock_seconds",
                                                                                   default=None)


@dataclass(frozen=True)
class EventCounter:
    """One counter fed by log entries of one type."""

    name: str
    help: str
    by_reason: bool = False


# Log entry type -> the counter it increments (labels: template, plus reason_code where set).
EVENT_COUNTERS: Mapping[EventType, EventCounter] = {
    EventType.ISSUED: EventCounter("broker_credentials_issued_total", "Credentials issued (issued entry committed)."),
    EventType.REFUSED: EventCounter("broker_requests_refused_total", "Refusals, logged one by one or counted by the "
                            "refusal budget; suppressed ones have template=other.", by_reason=True),
    EventType.PENDING: EventCounter("broker_requests_pending_total", "Requests opened to wait for co-signers."),
    EventType.APPROVED: EventCounter("broker_requests_approved_total", "Requests that reached their co-signatures."),
    EventType.DENIED: EventCounter("broker_requests_denied_total", "Requests denied by a co-signer."),
    EventType.FAILED: EventCounter("broker_issuance_failed_total", "Issuances that failed (STS); nothing was returned.",
                           by_reason=True),
    EventType.REVOKED: EventCounter("broker_grants_revoked_total", "Grants revoked."),
    EventType.EXPIRED: EventCounter("broker_requests_expired_total", "Requests that expired unapproved or unredeemed."),
    EventType.CANCELLED: EventCounter("broker_requests_cancelled_total", "Requests cancelled."),
}
# Every refusal, whatever entry records it, is counted by the `refused` counter.
REFUSALS = EventType.REFUSED
LOG_ENTRIES = "broker_log_entries_total"
LOG_LAST_SEQ = "broker_log_last_seq"
HTTP_DURATION = "broker_http_request_duration_seconds"
STS_DURATION = "broker_sts_assume_role_duration_seconds"
LOCK_HOLD = "broker_log_lock_hold_seconds"
# An alarm: the broker refused to sign a checkpoint (broker.usecases.checkpoints), by reason.
CHECKPOINT_REFUSALS = "broker_log_checkpoint_refusals_total"
METRIC_NAMES = (*(c.name for c in EVENT_COUNTERS.values()), LOG_ENTRIES, LOG_LAST_SEQ, HTTP_DURATION, STS_DURATION,
                CHECKPOINT_REFUSALS, LOCK_HOLD)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOCK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class BrokerMetrics:
    """The broker's metrics on a registry of its own."""

    def __init__(self, *, known_template: Callable[[str], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._known_template = known_template
        self._counters = {
            kind: Counter(spec.name.removesuffix("_total"), spec.help,
                          ("template", "reason_code") if spec.by_reason else ("template",), registry=self.registry)
            for kind, spec in EVENT_COUNTERS.items()
        }
        self.log_entries = Counter(LOG_ENTRIES.removesuffix("_total"), "Issuance log entries appended by this "
                                   "process, by type.", ("type",), registry=self.registry)
        self.log_last_seq = Gauge(LOG_LAST_SEQ, "Highest log seq this process appended.", registry=self.registry)
        self.http_duration = Histogram(HTTP_DURATION, "HTTP request latency by route template.",
                                       ("method", "route", "status"), buckets=HTTP_BUCKETS, registry=self.registry)
        self._last_seq = 0
        self._seq_lock = threading.Lock()
        self.checkpoint_refusals = Counter(
            CHECKPOINT_REFUSALS.removesuffix("_total"), "Checkpoints the broker refused to sign because the stored "
            "log does not extend the last signed one (an alarm: investigate the database).", ("reason",),
            registry=self.registry)
        self.sts_duration = Histogram(STS_DURATION, "AWS STS AssumeRole latency (with retries).", ("outcome",),
                                      buckets=STS_BUCKETS, registry=self.registry)
        self.lock_hold = Histogram(LOCK_HOLD, "How long a unit of work held the issuance log's lock, from taking "
                                   "it to the end of its commit.", buckets=LOCK_BUCKETS, registry=self.registry)

    def observe_lock_hold(self, seconds: float) -> None:
        """A committed unit of work held the log's lock ``seconds`` (fed by the Database)."""
        self.lock_hold.observe(seconds)
        request_lock = _LOCK_SECONDS.get()
        if request_lock is not None:
            request_lock.append(seconds)

    # --- fed by the log observer -------------------------------------------------------------
    def observe_entries(self, entries: Sequence[Mapping[str, Any]]) -> None:
        for entry in entries:
            kind = str(entry.get("type"))
            self.log_entries.labels(type=_code_label(kind)).inc()
            if kind in REFUSAL_TYPES:
                kind = REFUSALS
            counter = self._counters.get(kind)
            if counter is not None:
                labels = {"template": self._template_label(entry.get("template"))}
                if EVENT_COUNTERS[kind].by_reason:
                    labels["reason_code"] = _code_label(entry.get("reason_code"))
                counter.labels(**labels).inc()
            # Refusals the budget counted instead of logging (on a refusal's entry or a summary).
            carrying = kind in (REFUSALS, EventType.REFUSALS_SUPPRESSED_SUMMARY)
            carried = carried_refusals(entry.get("details")) if carrying else {}
            for code, count in carried.items():
                self._counters[REFUSALS].labels(template=OTHER, reason_code=_code_label(code)).inc(count)
        with self._seq_lock:  # request threads observe concurrently; the gauge only moves up
            self._last_seq = max(self._last_seq, *(int(entry["seq"]) for entry in entries))
            self.log_last_seq.set(self._last_seq)

    def checkpoint_refused(self, reason: str) -> None:
        self.checkpoint_refusals.labels(reason=_code_label(reason)).inc()

    def _template_label(self, name: object) -> str:
        if isinstance(name, str) and self._known_template(name):
            return name
        return OTHER

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _code_label(code: object) -> str:
    """An entry type or error code as a label value; anything unexpected becomes ``other``."""
    return code if isinstance(code, str) and _CODE.match(code) else OTHER


class TimedMinter:
    """A ``CredentialMinter`` that times each AssumeRole into ``broker_sts_assume_role_duration_seconds``."""

    def __init__(self, inner: CredentialMinter, histogram: Histogram) -> None:
        self.inner = inner
        self._histogram = histogram

    def mint(self, order: MintOrder) -> MintedCredentials:
        started = time.perf_counter()
        outcome = "error"
        try:
            minted = self.inner.mint(order)
            outcome = "ok"
            return minted
        finally:
            elapsed = time.perf_counter() - started
            self._histogram.labels(outcome=outcome).observe(elapsed)
            request_sts = _STS_SECONDS.get()
            if request_sts is not None:
                request_sts.append(elapsed)


class HttpLatency:
    """Pure ASGI middleware: request latency by method, route template and status."""

    def __init__(self, app, metrics: BrokerMetrics, server_timing: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.server_timing = server_timing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        sts_seconds: list[float] = []
        lock_seconds: list[float] = []
        token = _STS_SECONDS.set(sts_seconds)
        lock_token = _LOCK_SECONDS.set(lock_seconds)

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.server_timing:
                    app_ms = (time.perf_counter() - started) * 1000
                    timing = (f"app;dur={app_ms:.3f}, sts;dur={sum(sts_seconds) * 1000:.3f}, "
                              f"lock;dur={sum(lock_seconds) * 1000:.3f}").encode()
                    message = {**message, "headers": [*message.get("headers", ()), (b"server-timing", timing)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            _STS_SECONDS.reset(token)
            _LOCK_SECONDS.reset(lock_token)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            # NOTE: the method comes from the caller, unauthenticated: a fixed set of labels only.
            method = method if method in KNOWN_METHODS else "other"
            self.metrics.http_duration.labels(method=method, route=route,
                                              status=str(status)).observe(time.perf_counter() - started)


def instrument(app, container) -> BrokerMetrics:
    """Add the latency middleware to ``app`` and return the container's metrics."""
    metrics = container.metrics
    app.add_middleware(HttpLatency, metrics=metrics, server_timing=container.settings.server_timing)
    return metrics
