"""Webhook notifications: Slack-compatible bodies, never blocking, failures logged without secrets."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broker.runtime.webhook import WebhookNotifier, webhook_body
from tests.conftest import TEST_SCOPES, build_harness

SECRET_PATH = "/services/T000/B000/not-a-real-secret-xyz"


class Webhook:
    """A local HTTP endpoint recording what it receives; it can answer slowly or with an error."""

    def __init__(self, *, status: int = 200, delay: float = 0.0) -> None:
        self.received: list[dict] = []
        self.status, self.delay = status, delay
        self.released = threading.Event()  # set on close: a slow answer still pending is given up
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                outer.released.wait(outer.delay)
                outer.received.append(body)
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VIEW = {"id": "r-1", "template": "test-prod-ecs", "environment": "production", "requester": "agent:demo",
        "acts_for": "human:alice", "reason": "deploy <!channel> & more", "approvals_counted": 1,
        "approvals_required": 2, "ttl_seconds": 900, "links": {"page": "https://broker.example/ui/requests/r-1"}}


@pytest.mark.parametrize("event", ["pending", "approved", "denied", "expired"])
def test_body_is_slack_compatible_with_a_link_to_the_page(event):
    body = webhook_body(event=event, request=VIEW)
    assert isinstance(body["text"], str) and "https://broker.example/ui/requests/r-1" in body["text"]
    assert body["blocks"][-1]["elements"][0]["url"] == VIEW["links"]["page"]
    fields = json.dumps(body["blocks"])
    assert "<!channel>" not in fields and "&lt;!channel&gt;" in fields
    assert "agent:demo" in body["text"] and "human:alice" in body["text"]


DESTRUCTIVE = {**VIEW, "template": "prod-stack-recreate", "parameters": {"stack_name": "cost-explorer-api",
                                                                    "account": "123456789012"},
               "blast_radius": {"risk": [{"class": "destructive", "title": "destruction"}],
                                "headline": "Can delete stack on CloudFormation stack cost-explorer-api in "
                                            "production, plus 2 other actions."}}


def test_the_message_says_what_the_credentials_can_do_with_the_risk_and_the_parameters():
    body = webhook_body(event="pending", request=DESTRUCTIVE)
    headline = DESTRUCTIVE["blast_radius"]["headline"]
    assert (f"needs co-signing. DESTRUCTION: {headline} Parameters: account=123456789012, "
            "stack_name=cost-explorer-api.") in body["text"]
    assert body["headline"] == headline and body["risks"] == ["destruction"]
    assert body["parameters"] == {"account": "123456789012", "stack_name": "cost-explorer-api"}
    assert f"*DESTRUCTION* {headline}" in body["blocks"][0]["text"]["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1] for f in body["blocks"][1]["fields"]}
    assert fields["*Risk*"] == "destruction"
    assert fields["*Parameters*"] == "account=123456789012, stack_name=cost-explorer-api"
    # Approving stays on the page: the only action is a link.
    assert [e["type"] for e in body["blocks"][-1]["elements"]] == ["button"] and "url" in body["blocks"][-1]["elements"][0]


def test_every_risk_class_most_dangerous_first_and_unknown_reach_is_said():
    classes = [{"class": "permission-changing", "title": "permission changes and privilege escalation"},
               {"class": "destructive", "title": "destruction"}]
    body = webhook_body(event="pending", request={**DESTRUCTIVE, "blast_radius": {
        **DESTRUCTIVE["blast_radius"], "risk": classes}})
    assert body["risks"] == ["permission changes and privilege escalation", "destruction"]
    bare = webhook_body(event="pending", request=VIEW)
    assert bare["risks"] == [] and "not known: read the request page" in bare["text"]


def test_values_bound_to_the_caller_are_shown_apart_from_the_parameters():
    body = webhook_body(event="pending", request={**DESTRUCTIVE, "identity": {"workspace": "ws-a"}})
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1] for f in body["blocks"][1]["fields"]}
    assert fields["*Bound to the caller*"] == "workspace=ws-a" and body["identity"] == {"workspace": "ws-a"}
    assert "identity" not in webhook_body(event="pending", request=DESTRUCTIVE)


def test_a_denial_carries_its_reason():
    body = webhook_body(event="denied", request={**DESTRUCTIVE, "status": "denied",
                                                 "decided_reason": "wrong stack <@U1>"})
    assert "Denied because: wrong stack &lt;@U1&gt;." in body["text"]
    assert "<@U1>" not in json.dumps(body)


def test_notifications_reach_the_webhook(webhook):
    notifier = WebhookNotifier(webhook.url)
    for event in ("pending", "approved", "denied", "expired", "cosigned"):
        notifier.notify(event=event, request=VIEW)
    assert notifier.flush(5)
    assert [b["event"] for b in webhook.received] == ["pending", "approved", "denied", "expired"]
    assert notifier.sent == 4 and notifier.failed == 0


@pytest.mark.parametrize("make_url", [
    lambda hook: hook.url,                                           # answers 500
    lambda hook: f"http://127.0.0.1:{free_port()}{SECRET_PATH}",      # nobody listening
], ids=["http-500", "unreachable"])
def test_failures_are_logged_without_the_secret_url(make_url, caplog):
    hook = Webhook(status=500)
    try:
        notifier = WebhookNotifier(make_url(hook))
        with caplog.at_level(logging.WARNING, logger="broker.notify"):
            notifier.notify(event="pending", request=VIEW)
            assert notifier.flush(5)
        assert notifier.failed == 1 and notifier.sent == 0
        records = [r for r in caplog.records if r.name == "broker.notify"]
        assert records, "a failed webhook must be logged"
        text = " ".join(r.getMessage() for r in records)
        assert "r-1" in text
        assert SECRET_PATH not in text and "not-a-real-secret" not in text
    finally:
        hook.close()


# A webhook that answers after STALL seconds (or never, before the test ends), far beyond every bound below.
STALL = 20.0


def test_a_slow_webhook_never_blocks_the_caller():
    hook = Webhook(delay=STALL)
    try:
        notifier = WebhookNotifier(hook.url, timeout=0.5)
        started = time.monotonic()
        for _ in range(5):
            notifier.notify(event="pending", request=VIEW)
        # Five posts made by the caller would take at least 5 x 0.5 s (their timeouts), queued ones next to nothing.
        assert time.monotonic() - started < 2.0
        assert notifier.flush(10)  # 5 x 0.5 s: without the timeout the first alone takes STALL
        assert notifier.failed == 5  # each timed out after 0.5 s
    finally:
        hook.close()


@pytest.mark.parametrize("url", ["", "ftp://host/x", "not a url", "http:///nohost"])
def test_bad_webhook_urls_are_refused_at_start(url):
    with pytest.raises(ValueError):
        WebhookNotifier(url)


def test_broker_notifies_on_pending_and_approved_and_survives_a_dead_webhook(moto_server, tmp_path, webhook):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                            webhook_url=webhook.url, public_url="https://broker.example")
    try:
        notifier = harness.container.service.notifier
        assert isinstance(notifier, WebhookNotifier)
        created = harness.post("/v1/requests", "agent:demo", json={
            "template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy"})
        assert created.status_code == 202
        rid = created.json()["id"]
        for who in ("human:bob", "human:carol"):
            harness.post(f"/v1/requests/{rid}/approvals", who, json={"decision": "approve", "reason": "ok"})
        assert notifier.flush(5)
        assert [b["event"] for b in webhook.received] == ["pending", "approved"]
        assert f"https://broker.example/ui/requests/{rid}" in webhook.received[0]["text"]
        # The real request's blast radius: its headline, parameters and risk travel with the message.
        pending = webhook.received[0]
        assert pending["headline"] == ("Can update service on ECS service checkout in cluster prod in production, "
                                       "plus 1 other action.")
        assert pending["headline"] in pending["text"] and "service=checkout" in pending["text"]
        assert pending["parameters"]["service"] == "checkout"
        assert pending["risks"] == ["production traffic and availability"]
        # Requests' secrets never travel to the webhook.
        assert all("secret" not in json.dumps(b).lower() for b in webhook.received)

        # A webhook that hangs (answers after STALL, far beyond the bound) is not waited for...
        webhook.delay = STALL
        started = time.monotonic()
        again = harness.post("/v1/requests", "agent:demo", json={
            "template": "test-prod-ecs", "parameters": {"service": "billing"}, "reason": "deploy"})
        assert again.status_code == 202
        assert time.monotonic() - started < 6.0
        # ... nor is a dead one.
        webhook.close()
        assert harness.post("/v1/requests", "agent:demo", json={
            "template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy"}).status_code == 202
    finally:
        harness.container.database.engine.dispose()
