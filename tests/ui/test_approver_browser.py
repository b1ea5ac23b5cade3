"""The approvers' pages in a real headless browser (Playwright driving Debian's chromium).

Flow: an agent asks for a production scope; two approvers sign in with their keys, read the
request (blast radius, exact policy, TTL) and approve it with a reason; the agent redeems.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import IN_CI, TEST_SCOPES, build_harness
from tests.live_server import serve

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = os.environ.get("BROKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path("/tmp/broker-approver-request.png")
PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"},
        "reason": "roll out checkout 1.2.3 <b>now</b>"}


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        message = f"chromium is required for the browser tests and is missing at {CHROMIUM}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def site(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True)
    with serve(harness.client.app) as server:
        yield harness, server
    harness.container.database.engine.dispose()


class Approver:
    """One person's browser context; records every page's HTML for the no-secrets check."""

    def __init__(self, browser, base_url: str, key: str) -> None:
        self.context = browser.new_context(base_url=base_url)
        self.page = self.context.new_page()
        self.key = key
        self.seen_html: list[str] = []

    def goto(self, path: str) -> None:
        self.page.goto(path)
        self.record()

    def record(self) -> None:
        self.seen_html.append(self.page.content())

    def sign_in(self, next_path: str = "/ui/requests") -> None:
        self.goto(next_path)
        assert "/ui/sign-in" in self.page.url  # not signed in yet: sent to the sign-in page
        self.page.fill("#key", self.key)
        with self.page.expect_navigation():
            self.page.click("main button[type=submit]")
        self.record()
        assert self.page.url.endswith(next_path), self.page.inner_text("main")

    def decide(self, request_id: str, decision: str, reason: str) -> None:
        self.goto(f"/ui/requests/{request_id}")
        self.page.fill("#decision-reason", reason)
        with self.page.expect_navigation():
            self.page.click(f"#{decision}")
        self.record()

    def sign_out(self) -> None:
        with self.page.expect_navigation():
            self.page.click("header form.signout button")
        self.record()
        assert "/ui/sign-in" in self.page.url

    def close(self) -> None:
        self.context.close()


def test_two_approvers_approve_in_the_browser_and_the_agent_redeems(chromium, site):
    harness, server = site
    created = harness.post("/v1/requests", "agent:demo", json=PROD)
    assert created.status_code == 202, created.text
    rid = created.json()["id"]

    bob = Approver(chromium, server.url, harness.keys["human:bob"])
    carol = Approver(chromium, server.url, harness.keys["human:carol"])
    alice = Approver(chromium, server.url, harness.keys["human:alice"])
    try:
        # Bob: pending list -> the request -> reads it -> approves with a reason.
        bob.sign_in()
        row = bob.page.locator("table.list tbody tr")
        assert row.count() == 1
        assert "agent:demo" in row.inner_text() and "human:alice" in row.inner_text()
        with bob.page.expect_navigation():
            bob.page.click(f"a[href='/ui/requests/{rid}']")
        bob.record()
        page = bob.page
        assert page.inner_text("#agent") == "agent:demo"
        assert page.inner_text("#acts-for") == "human:alice"
        assert page.inner_text("#reason") == PROD["reason"]  # shown as text, not as markup
        assert page.locator("#reason b").count() == 0
        assert page.inner_text("#ttl").startswith("900 seconds")
        blast = page.inner_text("#blast-radius")
        assert "Can update service on ECS service checkout in cluster prod" in blast
        assert "ecs:UpdateService" in blast and "Write" in blast
        api_view = harness.get(f"/v1/requests/{rid}", "human:bob").json()
        import json

        assert json.loads(page.inner_text("#policy")) == api_view["policy"]
        assert page.inner_text("#binding") == api_view["binding_digest"]
        page.set_viewport_size({"width": 1200, "height": 1800})
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        bob.decide(rid, "approve", "change ticket CHG-7 checked")
        assert "Your approval was recorded." in bob.page.inner_text("main")
        assert bob.page.inner_text("#status") == "pending"
        assert bob.page.inner_text("#counted") == "1"
        assert "change ticket CHG-7 checked" in bob.page.inner_text("#approvals")

        # Alice is the human the agent acts for: the page says so and the broker refuses her approval.
        alice.sign_in(f"/ui/requests/{rid}")
        assert "you cannot approve it" in alice.page.inner_text("main")
        alice.decide(rid, "approve", "it is mine")
        assert "approver_is_principal_human" in alice.page.inner_text(".error")
        assert harness.get(f"/v1/requests/{rid}", "human:bob").json()["approvals_counted"] == 1

        # Carol approves too: the request is approved.
        carol.sign_in(f"/ui/requests/{rid}")
        carol.decide(rid, "approve", "second pair of eyes")
        assert carol.page.inner_text("#status") == "approved"
        assert carol.page.inner_text("#counted") == "2"
        carol.goto("/ui/requests")
        assert "No requests are waiting for approval." in carol.page.inner_text("main")
        carol.sign_out()
        carol.goto("/ui/requests")
        assert "/ui/sign-in" in carol.page.url  # the session is gone

        # The agent redeems over the API.
        redeemed = harness.post(f"/v1/requests/{rid}/credentials", "agent:demo")
        assert redeemed.status_code == 201, redeemed.text
        creds = redeemed.json()["credentials"]
        bob.goto(f"/ui/requests/{rid}")
        assert bob.page.inner_text("#status") == "issued"

        # No key, secret or session token ever appeared in a page.
        # (The sign-in form's double-submit CSRF cookie is meant to be on its page; the session cookie is not.)
        cookies = [c["value"] for who in (bob, alice) for c in who.context.cookies() if c["name"] == "broker_ui_session"]
        assert len(cookies) == 2
        forbidden = [*harness.keys.values(), creds["secret_access_key"], creds["session_token"], *cookies]
        pages = [html for who in (bob, carol, alice) for html in who.seen_html]
        assert len(pages) >= 10
        for html in pages:
            for value in forbidden:
                assert value not in html
            assert "brk_" not in html
    finally:
        for who in (bob, carol, alice):
            who.close()


def test_forms_without_the_csrf_token_are_refused(chromium, site):
    harness, server = site
    rid = harness.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    bob = Approver(chromium, server.url, harness.keys["human:bob"])
    try:
        bob.sign_in(f"/ui/requests/{rid}")
        token = bob.page.locator("form input[name=csrf_token]").first.get_attribute("value")
        assert token and len(token) >= 32
        # The browser context's own cookies, so only the token is missing or wrong.
        for form in ({"decision": "approve", "reason": "no token"},
                     {"decision": "approve", "reason": "wrong token", "csrf_token": "x" * len(token)},
                     {"decision": "approve", "reason": "empty token", "csrf_token": ""}):
            response = bob.context.request.post(f"/ui/requests/{rid}/decision", form=form, max_redirects=0)
            assert response.status == 403
            assert "csrf_failed" in response.text()
        # Another origin posting with the right token is refused too.
        response = bob.context.request.post(f"/ui/requests/{rid}/decision", max_redirects=0,
                                            form={"decision": "approve", "reason": "x", "csrf_token": token},
                                            headers={"Origin": "https://evil.example"})
        assert response.status == 403
        # The sign-in form is protected as well (login CSRF).
        response = bob.context.request.post("/ui/sign-in", form={"key": harness.keys["human:carol"]},
                                            max_redirects=0)
        assert response.status == 403
        assert harness.get(f"/v1/requests/{rid}", "human:bob").json()["approvals"] == []

        # With the token, the same request succeeds (so the refusals above were about the token).
        response = bob.context.request.post(f"/ui/requests/{rid}/decision", max_redirects=0,
                                            form={"decision": "approve", "reason": "ok", "csrf_token": token})
        assert response.status == 303
        assert harness.get(f"/v1/requests/{rid}", "human:bob").json()["approvals_counted"] == 1
    finally:
        bob.close()


def test_pages_send_security_headers_and_load_without_csp_violations(chromium, site):
    harness, server = site
    bob = Approver(chromium, server.url, harness.keys["human:bob"])
    violations: list[str] = []
    bob.page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        bob.sign_in()
        response = bob.page.goto("/ui/sign-in?next=/ui/requests")
        headers = response.headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        # The stylesheet applied (CSP allows 'self' styles): the header bar is dark.
        color = bob.page.evaluate("getComputedStyle(document.querySelector('header.top')).backgroundColor")
        assert color == "rgb(23, 32, 46)"
        assert not violations, violations
        assert re.search(r"<script", bob.page.content()) is None
    finally:
        bob.close()
