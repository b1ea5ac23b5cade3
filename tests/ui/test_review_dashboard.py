"""The reviewers' dashboard (/ui/review): figures from aggregate SQL on a known log (SQLite and
PostgreSQL), who may see it, the SVG charts and their policy, the links to GET /v1/events, and the
page in headless Chromium at a laptop's and a phone's size (screenshots in tests/artifacts)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.domain.principals import Principal, Role
from broker.errors import Forbidden, InvalidInput
from broker.usecases.review import ReviewDashboard
from tests.conftest import TEST_SCOPES, FrozenClock, build_harness
from tests.live_server import serve
from tests.ui.conftest import DESKTOP, PHONE, Approver
from tests.ui.test_pages import sign_in

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}
PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out 1.2.3"}
RITA = Principal(id="human:rita", roles=frozenset({Role.REVIEWER}))


def known_log(harness) -> None:
    """Issued 3 (one production, co-signed in 200 s; one revoked), refused 2, denied 1, one lockdown."""
    first = harness.post("/v1/requests", "agent:demo", json=S3)
    assert first.status_code == 201
    assert harness.post("/v1/requests", "agent:other", json=S3).status_code == 201
    for bad in ({**S3, "parameters": {"prefix": "../x"}}, {**S3, "template": "no-such-scope"}):
        assert harness.post("/v1/requests", "agent:demo", json=bad).status_code in (404, 422)
    rid = harness.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    harness.post(f"/v1/requests/{rid}/approvals", "human:bob", json={"decision": "approve", "reason": "ok"})
    harness.clock.advance(200)
    harness.post(f"/v1/requests/{rid}/approvals", "human:carol", json={"decision": "approve", "reason": "ok"})
    assert harness.post(f"/v1/requests/{rid}/credentials", "agent:demo").status_code == 201
    denied = harness.post("/v1/requests", "agent:demo", json={**PROD, "parameters": {"service": "billing"}}).json()
    harness.post(f"/v1/requests/{denied['id']}/approvals", "human:bob", json={"decision": "deny", "reason": "no"})
    revoked = harness.post(f"/v1/grants/{first.json()['grant']['id']}/revoke", "agent:demo", json={"reason": "done"})
    assert revoked.status_code == 200, revoked.text
    assert harness.post("/v1/lockdown", "human:root", json={"environment": "staging", "reason": "drill"}).status_code \
        == 201


# Mid-hour, so the known log's few minutes fall in one hour's bucket whatever the wall clock says.
START = datetime(2026, 12, 2, 12, 20, tzinfo=UTC)


@pytest.fixture
def logged(db_url, moto_server, tmp_path):
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state", dev_mode=True, clock=FrozenClock(START))
    known_log(harness)
    yield harness
    harness.container.database.engine.dispose()


def test_the_figures_of_a_known_log(logged):
    figures = ReviewDashboard(database=logged.container.database, clock=logged.clock).figures(
        principal=RITA, range_name="24h")
    assert figures.totals == {"issued": 3, "refused": 2, "denied": 1, "expired": 0}
    assert figures.bucket_unit == "hour" and len(figures.buckets) == 25
    assert sum(figures.over_time["issued"]) == 3 and figures.over_time["issued"][-1] == 3
    assert figures.refusals_by_reason == {"invalid_parameter": 1, "template_not_found": 1}
    assert figures.wait_buckets["1-5 min"] == 1 and sum(figures.wait_buckets.values()) == 1
    assert figures.median_wait_seconds == pytest.approx(200, abs=0.01)
    assert figures.live_grants == [
        {"agent": "agent:demo", "template": "test-prod-ecs", "environment": "production", "grants": 1},
        {"agent": "agent:other", "template": "test-s3-read", "environment": "dev", "grants": 1}]
    assert figures.risky_total == 1
    assert [(g["template"], g["environment"]) for g in figures.risky_grants] == [("test-prod-ecs", "production")]
    assert (figures.revocations["revoked"], figures.revocations["lockdown"]) == (1, 1)
    assert [e["type"] for e in figures.revocation_entries] == ["lockdown", "revoked"]
    # Each chart's link lists exactly the entries it counted.
    for kind, expected in (("issued", 3), ("refused", 2), ("approved", 1), ("revoked", 1)):
        link = urlsplit(figures.events_link(type=kind))
        assert link.path == "/v1/events"
        answer = logged.get(link.path, "human:rita", params={k: v[0] for k, v in parse_qs(link.query).items()})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["events"]) == expected, kind
    # Older entries fall out of a shorter range.
    logged.clock.advance(2 * 86400)
    assert ReviewDashboard(database=logged.container.database, clock=logged.clock).figures(
        principal=RITA, range_name="24h").totals["issued"] == 0


def test_the_page_and_its_charts_share_one_computation_for_a_few_seconds(logged):
    dashboard = ReviewDashboard(database=logged.container.database, clock=logged.clock, fresh_for=30)
    page = dashboard.figures(principal=RITA, range_name="24h")
    assert logged.post("/v1/requests", "agent:demo", json=S3).status_code == 201
    logged.clock.advance(10)
    assert dashboard.figures(principal=RITA, range_name="24h", parts=["over_time"]) is page   # the chart's
    with pytest.raises(Forbidden):                                    # authorization is never cached
        dashboard.figures(principal=Principal(id="human:bob", roles=frozenset({Role.APPROVER})), range_name="24h")
    logged.clock.advance(21)
    assert dashboard.figures(principal=RITA, range_name="24h").totals["issued"] == 4


def test_only_reviewers_and_admins_and_only_the_offered_ranges(logged):
    dashboard = ReviewDashboard(database=logged.container.database, clock=logged.clock)
    with pytest.raises(Forbidden):
        dashboard.figures(principal=Principal(id="human:bob", roles=frozenset({Role.APPROVER})))
    assert dashboard.figures(principal=Principal(id="human:root", roles=frozenset({Role.ADMIN})),
                             parts=["live_grants"]).live_grants
    for bad in ("999999d", "7", ""):
        with pytest.raises(InvalidInput) as caught:
            dashboard.figures(principal=RITA, range_name=bad or "x")
        assert caught.value.code == "invalid_range"


@pytest.fixture
def site(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True)
    known_log(harness)
    yield harness
    harness.container.database.engine.dispose()


def test_the_page_and_its_charts_over_http(site):
    assert site.client.get("/ui/review", follow_redirects=False).headers["location"].startswith("/ui/sign-in")
    assert site.client.get("/ui/review/charts/refusals.svg").status_code == 401
    sign_in(site, site.keys["human:bob"])                     # an approver, not a reviewer
    assert site.client.get("/ui/review").status_code == 403
    assert "role_required" in site.client.get("/ui/review").text
    site.client.cookies.clear()
    sign_in(site, site.keys["human:rita"])
    page = site.client.get("/ui/review?range=24h")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text
    for name in ("over-time", "refusals", "time-to-approve", "live-grants", "revocations"):
        assert f'src="/ui/review/charts/{name}.svg?range=24h"' in page.text
        chart = site.client.get(f"/ui/review/charts/{name}.svg?range=24h")
        assert chart.status_code == 200 and chart.headers["content-type"].startswith("image/svg+xml")
        assert chart.headers["content-security-policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
        assert "<script" not in chart.text and chart.text.startswith("<svg")
    assert "template_not_found" in site.client.get("/ui/review/charts/refusals.svg?range=24h").text
    assert site.client.get("/ui/review/charts/nope.svg").status_code == 404
    assert site.client.get("/ui/review?range=999999d").status_code == 422
    assert re.search(r'href="/v1/events\?type=refused&amp;since=[^"]+"', page.text)


@pytest.mark.browser
@pytest.mark.timeout(180)
@pytest.mark.parametrize("size", {"desktop": DESKTOP, "phone": PHONE})
def test_the_dashboard_in_a_browser(chromium, site, size):
    with serve(site.client.app) as server:
        rita = Approver(chromium, server.url, site.keys["human:rita"],
                        viewport={"desktop": DESKTOP, "phone": PHONE}[size])
        violations: list[str] = []
        rita.page.on("console", lambda msg: violations.append(msg.text))
        try:
            rita.sign_in("/ui/review")
            rita.goto("/ui/review?range=24h")
            page = rita.page
            page.wait_for_load_state("load")
            drawn = page.evaluate("[...document.querySelectorAll('img.chart')].map(i => [i.id, i.naturalWidth])")
            assert len(drawn) == 5 and all(width > 0 for _, width in drawn), drawn
            assert "3 issued" in page.inner_text("#totals") and "2 refused" in page.inner_text("#totals")
            assert page.locator("#refusal-table tbody tr").count() == 2
            assert "Median wait 3 min" in page.inner_text("#median-wait")
            assert rita.overflow() == 0
            assert not [v for v in violations if "Content Security Policy" in v], violations
            rita.screenshot(f"review-{size}", full_page=True)
        finally:
            rita.close()


def test_suppressed_refusals_count_once_in_the_figures(budgeted):
    from tests.conftest import REFUSAL_BUDGET

    flood = 5
    for _ in range(REFUSAL_BUDGET + flood):
        assert budgeted.post("/v1/requests", "agent:demo", json={**S3, "template": "no-such-x"}).status_code == 404
    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals() == 1
    figures = ReviewDashboard(database=budgeted.container.database, clock=budgeted.clock).figures(
        principal=RITA, range_name="24h")
    assert figures.refusals_by_reason == {"template_not_found": REFUSAL_BUDGET + flood}
    assert figures.totals["refused"] == REFUSAL_BUDGET + flood
    report = budgeted.get("/v1/events/report", "human:rita", params={"since": "24h"}).json()
    assert report["refused_total"] == REFUSAL_BUDGET + flood  # the report and the dashboard agree
