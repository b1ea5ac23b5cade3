"""The approver pages as a decision tool, in headless Chromium at a laptop's and a phone's size.

The shipped templates (scopes/): the pending list tells three production requests apart (badges,
parameter values, headline, relative times with the exact time on hover); a request page says what
the credentials can do in its first sentence and offers the decision without scrolling, with no
horizontal scrolling on a 390 px phone and an Approve button the pointer really reaches; once the
viewer has decided, or the request is no longer pending, no control is offered.  Screenshots go to
tests/artifacts/screenshots (gitignored).
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_SCOPES, build_harness
from tests.live_server import serve
from tests.ui.conftest import DESKTOP, PHONE, Approver

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

STACK = {"template": "prod-stack-recreate", "parameters": {"stack_name": "cost-explorer-api"},
         "reason": "INC-4411: the stack is wedged in UPDATE_ROLLBACK_FAILED; recreate it from the last template"}
ECS_API = {"template": "ecs-update-service-prod", "parameters": {"cluster": "prod", "service": "api"},
           "reason": "roll out api 2.3.1 (CHG-118)"}
ECS_BILLING = {"template": "ecs-update-service-prod", "parameters": {"cluster": "prod", "service": "billing"},
               "reason": "roll out billing 0.9.4 (CHG-119)"}
HEADLINE = "Can delete stack on CloudFormation stack cost-explorer-api in production, plus 2 other actions."
SIZES = {"desktop": DESKTOP, "phone": PHONE}


@pytest.fixture
def site(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=REPO_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True,
                            agent_max_pending_requests=50)
    with serve(harness.client.app) as server:
        yield harness, server
    harness.container.database.engine.dispose()


def ask(harness, payload: dict) -> str:
    created = harness.post("/v1/requests", "agent:demo", json=payload)
    assert created.status_code == 202, created.text
    return created.json()["id"]


def in_view(page, selector: str) -> dict:
    """Where an element is, and whether the pointer at its centre reaches it (nothing lies on top)."""
    return page.evaluate("""(selector) => {
        const element = document.querySelector(selector);
        const box = element.getBoundingClientRect();
        const x = box.left + box.width / 2, y = box.top + box.height / 2;
        const hit = document.elementFromPoint(x, y);
        return {top: box.top, bottom: box.bottom, left: box.left, right: box.right,
                width: window.innerWidth, height: window.innerHeight,
                reachable: hit === element || element.contains(hit)};
    }""", selector)


@pytest.mark.parametrize("size", SIZES)
def test_the_pending_list_tells_requests_apart(chromium, site, size):
    harness, server = site
    ids = [ask(harness, payload) for payload in (STACK, ECS_API, ECS_BILLING)]
    harness.clock.advance(6 * 60)
    bob = Approver(chromium, server.url, harness.keys["human:bob"], viewport=SIZES[size])
    try:
        bob.sign_in()
        page = bob.page
        assert "3 pending" in page.inner_text("#totals")
        rows = page.locator("table.pending tbody tr")
        assert rows.count() == 3
        texts = {rid: page.locator(f"tr:has(a[href='/ui/requests/{rid}'])").inner_text() for rid in ids}
        stack = texts[ids[0]]
        assert "DESTRUCTION" in stack and "PRODUCTION" in stack.upper()
        assert "stack_name=cost-explorer-api" in stack and HEADLINE in stack
        assert "service=api" in texts[ids[1]] and "service=billing" in texts[ids[2]]
        assert "PRODUCTION TRAFFIC" in texts[ids[1]] and "DESTRUCTION" not in texts[ids[1]]
        # Relative times, the exact time on hover; no microsecond ISO stamps on the page.
        expires = page.locator(f"tr:has(a[href='/ui/requests/{ids[0]}']) time")
        assert expires.inner_text() == "in 24 min"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", expires.get_attribute("title"))
        assert not re.search(r"\d\d:\d\d:\d\d\.\d{6}", page.inner_text("main"))
        assert bob.overflow() == 0
        bob.screenshot(f"pending-list-{size}", full_page=True)
    finally:
        bob.close()


@pytest.mark.parametrize("size", SIZES)
def test_the_request_page_states_the_danger_and_offers_the_decision_above_the_fold(chromium, site, size):
    harness, server = site
    rid = ask(harness, STACK)
    bob = Approver(chromium, server.url, harness.keys["human:bob"], viewport=SIZES[size])
    try:
        bob.sign_in(f"/ui/requests/{rid}")
        page = bob.page
        assert page.inner_text("#headline") == HEADLINE
        headline = in_view(page, "#headline")
        assert 0 <= headline["top"] and headline["bottom"] <= headline["height"]
        # The decision box, its reason field and Approve: all on the first screen, and the pointer reaches Approve.
        for selector in ("#decision-reason", "#approve", "#deny"):
            where = in_view(page, selector)
            assert where["bottom"] <= where["height"] and where["right"] <= where["width"], (selector, where)
            assert where["reachable"], selector
        page.click("#approve", trial=True)  # actionability: visible, stable, enabled, receives the pointer
        assert bob.overflow() == 0
        assert "expires in 30 min" in page.inner_text(".byline")
        bob.screenshot(f"request-{size}")
        # The details read as sentences and a table, not a key/value dump.
        sentences = page.locator("#sentences li").all_inner_texts()
        assert sentences[0] == ("[DESTRUCTIVE] Can delete stack on CloudFormation stack cost-explorer-api "
                                "(cloudformation:DeleteStack).")
        assert page.locator("#actions tbody tr").count() == 3
        assert page.locator("#actions tbody tr").first.locator(".badge").inner_text().lower() == "destructive"
        assert page.locator("dl.tree").count() == 0
        bob.screenshot(f"request-{size}-full", full_page=True)
    finally:
        bob.close()


def test_no_decision_controls_once_decided_or_no_longer_pending(chromium, site):
    harness, server = site
    rid = ask(harness, STACK)
    bob = Approver(chromium, server.url, harness.keys["human:bob"])
    carol = Approver(chromium, server.url, harness.keys["human:carol"])
    rita = Approver(chromium, server.url, harness.keys["human:rita"])
    try:
        bob.sign_in(f"/ui/requests/{rid}")
        bob.decide(rid, "approve", "checked the stack name against INC-4411")
        assert bob.page.locator("#approve, #deny, #decision-reason").count() == 0
        assert "You approved this request" in bob.page.inner_text("#decision")

        rita.sign_in(f"/ui/requests/{rid}")  # a reviewer reads, never decides
        assert rita.page.locator("#approve, #deny").count() == 0
        assert "You cannot decide" in rita.page.inner_text("#decision")

        carol.sign_in(f"/ui/requests/{rid}")
        carol.decide(rid, "approve", "second pair of eyes")
        assert carol.page.inner_text("#status") == "approved"
        for who in (carol, bob):
            who.goto(f"/ui/requests/{rid}")
            assert who.page.locator("#approve, #deny, #decision-reason").count() == 0
        assert "No decision needed" in bob.page.inner_text("#decision")
        assert "window closes in 15 min" in bob.page.inner_text("#decision")
        bob.screenshot("request-approved")
    finally:
        for who in (bob, carol, rita):
            who.close()


def test_the_pending_list_pages_and_shows_every_agents_count(chromium, site):
    harness, server = site
    first = ask(harness, STACK)
    for i in range(26):
        harness.clock.advance(1)
        ask(harness, {**ECS_API, "reason": f"rollout {i}"})
    bob = Approver(chromium, server.url, harness.keys["human:bob"], viewport=PHONE)
    try:
        bob.sign_in()
        totals = bob.page.inner_text("#totals")
        assert "27 pending" in totals and "showing 1–25" in totals
        assert bob.page.locator(f"a[href='/ui/requests/{first}']").count() == 0
        with bob.page.expect_navigation():
            bob.page.click("#older")
        assert bob.page.locator("table.pending tbody tr").count() == 2
        assert bob.page.locator(f"a[href='/ui/requests/{first}']").count() == 1  # the oldest is not lost
        assert "Page 2 of 2" in bob.page.inner_text("nav.pages") and bob.overflow() == 0
    finally:
        bob.close()
