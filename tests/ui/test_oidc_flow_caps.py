"""Unauthenticated writes on the approver sign-in are bounded: outstanding OIDC flows are capped per client
address and in total (broker/storage/ui_oidc_flows.py); beyond a cap the page answers 429 and writes nothing.
Against the fake identity provider, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from broker.api.ui import oidc
from broker.storage import ui_oidc_flows
from broker.storage.ui_oidc_flows import BEGIN_LOCK_KEY, FLOW_CAPS, flow_caps, flow_source
from tests.conftest import FrozenClock, another_writer
from tests.ui.oidc_idp import running_idp
from tests.ui.test_oidc_sign_in import at_provider, begin, flow_rows, make_site, session_rows

PER_ADDRESS, TOTAL = ui_oidc_flows.MAX_FLOWS_PER_ADDRESS, ui_oidc_flows.MAX_FLOWS


@pytest.fixture
def provider():
    with running_idp() as idp:
        yield idp


@pytest.fixture
def site(provider, db_url, moto_server, tmp_path):
    harness = make_site(provider, db_url=db_url, moto_server=moto_server, tmp_path=tmp_path)
    yield harness
    harness.container.database.engine.dispose()


@pytest.fixture
def small_caps(monkeypatch):
    """Caps small enough to reach in a test: 2 per address, 5 in total."""
    monkeypatch.setattr(ui_oidc_flows, "FLOW_CAPS", flow_caps(per_address=2, total=5))


def browser(harness, address: str) -> TestClient:
    """A browser of its own, connecting from ``address`` (the server sees it as the peer)."""
    return TestClient(harness.client.app, client=(address, 50000))


def start(client) -> int:
    return client.get("/ui/login/oidc", params={"next": "/ui/requests"}, follow_redirects=False).status_code


def assert_capped(response, code: str, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    assert f"({code})" in response.text and 'role="alert"' in response.text    # a sentence and the code
    assert "Sign in with" in response.text                                       # ... on the sign-in page
    assert response.headers["retry-after"] == str(retry_after)
    assert "location" not in response.headers and "broker_ui_oidc_flow" not in response.headers.get("set-cookie", "")


def test_the_caps_are_20_per_address_and_10000_in_total():
    assert [(cap.code, cap.maximum, cap.per_address) for cap in FLOW_CAPS] == [
        ("oidc_too_many_sign_ins_from_address", 20, True), ("oidc_too_many_sign_ins", 10_000, False)]
    with pytest.raises(ValueError):
        flow_caps(per_address=0, total=10)


def test_one_address_may_have_20_flows_outstanding(site):
    flooder = browser(site, "203.0.113.7")
    assert [start(flooder) for _ in range(PER_ADDRESS)] == [303] * PER_ADDRESS
    capped = flooder.get("/ui/login/oidc", follow_redirects=False)
    assert_capped(capped, "oidc_too_many_sign_ins_from_address", retry_after=600)
    assert "Too many sign-ins from your network address" in capped.text
    assert len(flow_rows(site)) == PER_ADDRESS                     # nothing written beyond the cap
    assert {row.client_address for row in flow_rows(site)} == {"203.0.113.7"}
    # Another address is not held up by it.
    assert start(browser(site, "198.51.100.9")) == 303
    # IPv6 counts by /64: the next address in the prefix is the same source.
    assert [start(browser(site, f"2001:db8::{i:x}")) for i in range(1, PER_ADDRESS + 2)] == [303] * PER_ADDRESS + [429]
    assert start(browser(site, "2001:db8:0:1::1")) == 303          # another /64


def test_the_total_cap_holds_whatever_the_number_of_addresses(site, small_caps, caplog, monkeypatch):
    monkeypatch.setattr(oidc, "_capped_logged_at", [float("-inf")])
    with caplog.at_level(logging.INFO, logger="broker.ui.oidc"):
        answers = [start(browser(site, f"192.0.2.{i}")) for i in range(1, 8)]
    assert answers == [303] * 5 + [429] * 2
    assert_capped(browser(site, "192.0.2.99").get("/ui/login/oidc", follow_redirects=False),
                  "oidc_too_many_sign_ins", retry_after=600)
    assert len(flow_rows(site)) == 5
    # Said once (not once a request), and counted by the HTTP metric.
    assert [r.levelname for r in caplog.records if "not begun (oidc_too_many_sign_ins)" in r.getMessage()] == [
        "WARNING"]
    metrics = site.client.get("/metrics").text
    assert 'method="GET",route="/login/oidc",status="429"} 3.0' in metrics


def test_expired_flows_do_not_count(site, small_caps):
    flooder = browser(site, "203.0.113.7")
    assert [start(flooder) for _ in range(3)] == [303, 303, 429]
    site.clock.advance(450)
    assert_capped(flooder.get("/ui/login/oidc", follow_redirects=False),
                  "oidc_too_many_sign_ins_from_address", retry_after=150)
    site.clock.advance(150)                                         # the two flows expire now
    assert start(flooder) == 303
    assert len(flow_rows(site)) == 1                                # and the new one purged them


def test_a_finished_flow_frees_its_slot(site, small_caps, provider):
    same_address = browser(site, "testclient")                      # site.client's address, another browser
    mine = begin(site.client)
    assert start(same_address) == 303 and start(same_address) == 429
    assert site.client.get(at_provider(provider, mine), follow_redirects=False).status_code == 200
    assert start(same_address) == 303


# The other writer holds for up to HOLD_SECONDS (it lets go when the test's block ends); 20 answers that wait for
# nothing come well within ANSWERED_WITHIN, even on a loaded machine, and one that waited would not (SQLite: it
# waits until the writer lets go or its busy timeout, 30 s, ends; PostgreSQL: its lock timeout, 5 s, fails it).
HOLD_SECONDS, ANSWERED_WITHIN = 40, 15


def writer_holding_the_flows(harness):
    """Another unit of work that holds, for HOLD_SECONDS at most, what a write to ui_oidc_flows waits for."""
    # PostgreSQL: reads of the flows still pass; writes, and the serialized re-check, wait.
    return another_writer(harness.container.database.engine, seconds=HOLD_SECONDS, postgres_statements=(
        "LOCK TABLE ui_oidc_flows IN EXCLUSIVE MODE", f"SELECT pg_advisory_xact_lock({BEGIN_LOCK_KEY})"))


def test_beyond_the_cap_nothing_is_written_nor_waited_for(site, small_caps):
    flooder = browser(site, "203.0.113.7")
    assert [start(flooder) for _ in range(2)] == [303, 303]
    before = [row.model_dump() for row in flow_rows(site)]
    with writer_holding_the_flows(site):
        started = time.monotonic()
        answers = [start(flooder) for _ in range(20)]
        elapsed = time.monotonic() - started
    assert answers == [429] * 20
    # Had a refused begin written (or taken the write lock), it would have waited for the other writer.
    assert elapsed < ANSWERED_WITHIN, elapsed
    assert [row.model_dump() for row in flow_rows(site)] == before
    assert session_rows(site) == []


def test_concurrent_begins_do_not_pass_the_cap_together(site, small_caps):
    """Count-then-insert is one step (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), across threads."""
    browsers = [browser(site, "203.0.113.7") for _ in range(8)]
    barrier = threading.Barrier(len(browsers))
    answers: list[int] = []

    def run(client) -> None:
        barrier.wait()
        answers.append(start(client))

    threads = [threading.Thread(target=run, args=(client,)) for client in browsers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == [303] * 2 + [429] * 6
    assert len(flow_rows(site)) == 2


def test_a_real_sign_in_completes_once_the_flood_has_expired(provider, db_url, moto_server, tmp_path, small_caps):
    # NOTE: the broker's clock starts just over a flow lifetime in the past and moves to the present, where the
    # identity provider's ID tokens are issued (they are checked against the wall clock too).
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=605))
    site = make_site(provider, db_url=db_url, moto_server=moto_server, tmp_path=tmp_path, clock=clock)
    try:
        assert [start(browser(site, f"192.0.2.{i}")) for i in range(1, 4) for _ in range(2)] == [303] * 5 + [429]
        assert start(site.client) == 429                            # the flood holds every slot
        site.clock.advance(605)
        callback = site.client.get(at_provider(provider, begin(site.client)), follow_redirects=False)
        assert callback.status_code == 200, callback.text
        assert "broker_ui_session" in callback.headers["set-cookie"]
        assert [row.principal_id for row in session_rows(site)] == ["human:bob"]
        assert flow_rows(site) == []                                # the flood's flows were purged
    finally:
        site.container.database.engine.dispose()


@pytest.mark.parametrize("address, source", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8::ffff:1:2", "2001:db8::/64"),
    ("2001:DB8:0:0:1::", "2001:db8::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),                          # IPv4-mapped: the IPv4 address
    ("fe80::1%eth0", "fe80::/64"),
    (None, "unknown"),
    ("", "unknown"),
    ("testclient", "testclient"),                                   # not an IP (a test client, a unix socket)
    ("x" * 300, "x" * 64),
])
def test_flow_source(address, source):
    assert flow_source(address) == source


def test_callbacks_naming_no_flow_are_answered_from_a_read(site):
    """Forged or replayed callbacks (no such state) take no write transaction: while another writer holds what
    a flow write waits for, they are still answered at once, and nothing is written."""
    client = browser(site, "198.51.100.9")
    before = [row.model_dump() for row in flow_rows(site)]
    with writer_holding_the_flows(site):
        started = time.monotonic()
        answers = [client.get("/ui/oidc/callback", params={"state": f"forged-{n}", "code": "x"},
                              follow_redirects=False).status_code for n in range(20)]
        elapsed = time.monotonic() - started
    assert set(answers) == {401}
    assert elapsed < ANSWERED_WITHIN, elapsed
    assert [row.model_dump() for row in flow_rows(site)] == before and session_rows(site) == []
