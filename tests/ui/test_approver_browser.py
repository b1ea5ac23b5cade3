"""The approvers' pages in a real headless browser (Playwright driving Debian's chromium).

Flow: an agent asks for a production scope; two approvers sign in with their keys, read the
request (blast radius, exact policy, TTL) and approve it with a reason; the agent redeems.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import TEST_SCOPES, build_harness
from tests.live_server import serve
from tests.ui.conftest import Approver

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"},
        "reason": "roll out checkout 1.2.3 <b>now</b>"}


@pytest.fixture
def site(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True)
    with serve(harness.client.app) as server:
        yield harness, server
    harness.container.database.engine.dispose()


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
        bob.screenshot("request-test-prod-ecs-full", full_page=True)

        bob.decide(rid, "approve", "change ticket CHG-7 checked")
        assert "Your approval was recorded." in bob.page.inner_text("main")
        assert bob.page.inner_text("#status") == "pending"
        assert bob.page.inner_text("#counted") == "1"
        assert "change ticket CHG-7 checked" in bob.page.inner_text("#approvals")

        # Bob has decided: no controls are offered to him any more.
        assert bob.page.locator("#approve, #deny, #decision-reason").count() == 0
        assert "You approved this request" in bob.page.inner_text("#decision")

        # Alice is the human the agent acts for: the page offers her no Approve (she may still veto), and
        # the broker refuses her approval when posted anyway.
        alice.sign_in(f"/ui/requests/{rid}")
        assert "You cannot approve" in alice.page.inner_text("#decision")
        assert alice.page.locator("#approve").count() == 0 and alice.page.locator("#deny").count() == 1
        token = alice.page.locator("form input[name=csrf_token]").first.get_attribute("value")
        refused = alice.context.request.post(f"/ui/requests/{rid}/decision", max_redirects=0,
                                             form={"decision": "approve", "reason": "it is mine", "csrf_token": token})
        assert refused.status == 403 and "approver_is_principal_human" in refused.text()
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
