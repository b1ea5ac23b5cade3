"""Webhook notifications for approvers (Slack-compatible JSON), sent off the request path.

A message says what the credentials can do (the blast radius's headline), the request's risks and
its parameter values, and links to the approver page; approving stays on the page.

``WebhookNotifier.notify`` only puts a message on a small bounded queue; one daemon
thread posts it with a short timeout.  A slow, failing or unreachable webhook never
blocks or fails a request: a full queue drops the message and every failure is
logged (logger ``broker.runtime.webhook``) without the URL's path or query (Slack webhook
URLs carry their secret there) and without the remote answer's body.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx

from broker.domain.events import EventType

log = logging.getLogger("broker.notify")

# The events humans are told about, with the headline each one gets.
HEADLINES: dict[str, str] = {
    EventType.PENDING: "needs co-signing",
    EventType.APPROVED: "was approved and can be redeemed",
    EventType.DENIED: "was denied",
    EventType.EXPIRED: "expired",
}
MAX_QUEUE = 1000


def risk_labels(request: dict[str, Any]) -> list[str]:
    """The request's risk classes in words, most dangerous first (the blast radius's ``risk``)."""
    blast = request.get("blast_radius") or {}
    return [str(finding.get("title") or finding.get("class")) for finding in blast.get("risk") or []
            if isinstance(finding, dict)]


def webhook_body(*, event: str, request: dict[str, Any]) -> dict[str, Any]:
    """The Slack-compatible message for one event: plain ``text`` plus ``blocks`` with the same facts.

    It says what the credentials can do (the blast radius's headline), the risks and the parameter
    values, so an approver knows from the message alone whether to open the page now.  Approving stays
    on the page: the message carries a link, never an approve action.
    """
    page = (request.get("links") or {}).get("page", "")
    headline = HEADLINES.get(event, event)
    agent, human = request.get("requester", "?"), request.get("acts_for") or "nobody"
    blast = request.get("blast_radius") or {}
    what = blast.get("headline") or "What these credentials can do is not known: read the request page."
    risks = risk_labels(request)
    risk = [entry for entry in request.get("risk") or blast.get("risk") or [] if isinstance(entry, dict)]
    parameters = {str(k): str(v) for k, v in sorted((request.get("parameters") or {}).items())}
    shown_parameters = ", ".join(f"{k}={v}" for k, v in parameters.items()) or "none"
    risk_text = ", ".join(r.upper() for r in risks)
    denied = request.get("decided_reason") if event == EventType.DENIED else None
    text = (f"Credential request {request.get('id', '?')} for scope {request.get('template', '?')} "
            f"({request.get('environment', '?')}) {headline}. {risk_text + ': ' if risk_text else ''}{what} "
            f"Parameters: {shown_parameters}. Agent {agent} acting for {human}."
            f"{' Denied because: ' + str(denied)[:300] + '.' if denied else ''} Review: {page}")
    facts = [
        ("Scope", f"{request.get('template', '?')} ({request.get('environment', '?')})"),
        ("Risk", ", ".join(risks) or "none flagged"),
        ("Parameters", shown_parameters),
        ("Agent", agent),
        ("Acts for", human),
        ("Reason", str(request.get("reason", ""))[:300]),
        ("Approvals", f"{request.get('approvals_counted', 0)} of {request.get('approvals_required', 0)}"),
        ("TTL", f"{request.get('ttl_seconds', '?')} s"),
    ]
    bound = {str(k): str(v) for k, v in sorted((request.get("identity") or {}).items())}
    if bound:
        # Values bound to the caller's identity: the agent did not choose them (README: self-scoped templates).
        facts.insert(3, ("Bound to the caller", ", ".join(f"{k}={v}" for k, v in bound.items())))
    if denied:
        facts.append(("Denied because", str(denied)[:300]))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Credential request {headline}*\n"
                                     f"{'*' + _plain(risk_text) + '* ' if risk_text else ''}{_plain(what)}"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_plain(v)}"} for k, v in facts]},
    ]
    if risk:
        lines = [f"• *{_plain(str(entry.get('title', '?')).upper())}*: {_plain(entry.get('sentence', ''))} "
                 f"({_plain(', '.join(map(str, entry.get('actions', [])[:6])))})" for entry in risk]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
            "*Risk, most dangerous first*\n" + "\n".join(lines))[:2900]}})
    if page:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open the request"}, "url": page}]})
    return {"text": _plain(text), "blocks": blocks, "event": event, "request_id": request.get("id"),
            "template": request.get("template"), "environment": request.get("environment"),
            "headline": what, "risks": risks, "parameters": parameters,
            "risk": [{key: entry.get(key) for key in ("class", "title", "sentence", "actions")} for entry in risk],
            **({"identity": bound} if bound else {})}


def _plain(value: object) -> str:
    # Slack mrkdwn control characters would let a requester's reason format or link the message.
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def redacted(url: str) -> str:
    """What a log line may say about a webhook URL: scheme and host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


class WebhookNotifier:
    """Implements :class:`broker.ports.Notifier` by POSTing to one webhook URL."""

    def __init__(self, url: str, *, timeout: float = 2.0, transport: httpx.BaseTransport | None = None) -> None:
        if urlsplit(url).scheme not in ("https", "http") or not urlsplit(url).hostname:
            raise ValueError("the webhook URL must be an http(s) URL")
        self._url = url
        self._timeout = timeout
        self._transport = transport
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=MAX_QUEUE)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0

    def notify(self, *, event: str, request: dict[str, Any]) -> None:
        if event not in HEADLINES:
            return
        try:
            body = webhook_body(event=event, request=request)
            self._ensure_worker()
            self._queue.put_nowait(body)
        except queue.Full:
            self.failed += 1
            log.warning("webhook queue full: %s notification for request %s dropped", event, request.get("id"))
        except Exception as exc:  # noqa: BLE001 - a notifier must never fail a request
            self.failed += 1
            log.warning("webhook notification for request %s not queued: %s", request.get("id"),
                        exc.__class__.__name__)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message was attempted (tests and shutdown)."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="broker-webhook", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout, transport=self._transport, follow_redirects=False) as client:
            while True:
                body = self._queue.get()
                try:
                    self._send(client, body)
                finally:
                    self._queue.task_done()

    def _send(self, client: httpx.Client, body: dict[str, Any]) -> None:
        try:
            response = client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("webhook %s unreachable for %s of request %s: %s", redacted(self._url), body["event"],
                        body["request_id"], exc.__class__.__name__)
            return
        if response.status_code >= 300:
            self.failed += 1
            log.warning("webhook %s answered %s for %s of request %s", redacted(self._url), response.status_code,
                        body["event"], body["request_id"])
            return
        self.sent += 1
