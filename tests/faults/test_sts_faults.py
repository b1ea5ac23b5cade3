"""STS throttled, slow, down or answering an error: bounded retries on throttling only, then 503;
no credential, no "issued", the failure logged; a lost answer becomes an orphan and is revoked."""

from __future__ import annotations

import time

from broker.aws.sts import StsMinter, aws_client
from broker.domain.revocation import session_is_named
from tests.conftest import TEST_SCOPES, build_harness
from tests.faults.conftest import closed_port
from tests.revocation.conftest import S3_REQUEST, clear_deny_policy, read_deny_policy

# A stalled STS answers after STALL_SECONDS; a request with a 0.5 s read timeout has failed within TIMED_OUT_WITHIN.
STALL_SECONDS, TIMED_OUT_WITHIN = 20.0, 6.0


def _harness(tmp_path, moto_server, sts_url: str, *, read_timeout: float = 5.0, attempts: int = 3, clock=None,
             state: str = "state"):
    client = aws_client("sts", endpoint_url=sts_url, region="us-east-1", connect_timeout=1.0,
                        read_timeout=read_timeout)
    minter = StsMinter(endpoint_url=sts_url, region="us-east-1", max_attempts=attempts, base_delay=0.05,
                       client=client)
    return build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                         aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / state, minter=minter,
                         clock=clock)


def _assert_failed_without_credentials(broker, response, *, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert "credentials" not in body and "secret" not in response.text.lower()
    types = [e["type"] for e in broker.events()]
    assert types == ["requested", "failed"]
    failed = broker.events()[-1]
    assert failed["reason_code"] == code and failed["access_key_id"] is None
    view = broker.get(f"/v1/requests/{failed['request_id']}", "agent:demo").json()
    assert view["status"] == "failed" and "grant" not in view
    return failed


def test_sts_throttled_is_retried_with_jitter_then_503(tmp_path, moto_server, faulty_sts):
    faulty_sts.mode = "throttle"
    broker = _harness(tmp_path, moto_server, faulty_sts.url, attempts=4)
    response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    _assert_failed_without_credentials(broker, response, status=503, code="sts_throttled")
    assert len(faulty_sts.hits) == 4                       # bounded: exactly max_attempts calls
    assert "Rate exceeded" not in response.text             # AWS's text never reaches the caller


def test_sts_error_is_not_retried(tmp_path, moto_server, faulty_sts):
    faulty_sts.mode = "error"
    broker = _harness(tmp_path, moto_server, faulty_sts.url)
    response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    _assert_failed_without_credentials(broker, response, status=503, code="sts_error")
    assert len(faulty_sts.hits) == 1
    assert "secret-name" not in response.text and "not authorized" not in response.text


def test_sts_down_fails_fast(tmp_path, moto_server):
    broker = _harness(tmp_path, moto_server, f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    assert time.monotonic() - started < 5
    _assert_failed_without_credentials(broker, response, status=503, code="sts_unavailable")
    with broker.container.database.transaction() as repo:
        assert repo.unresolved_intents() == []               # nothing reached STS: nothing to reconcile


def test_sts_slow_times_out_and_the_possible_session_is_reconciled_as_an_orphan(tmp_path, moto_server,
                                                                                faulty_sts):
    # NOTE: the stall is far beyond the bound, and the bound far beyond the read timeout: only a missing timeout,
    # not a loaded machine, takes the request past it (the stalled answer is never waited for: the test is quick).
    faulty_sts.mode, faulty_sts.stall_seconds = "stall", STALL_SECONDS
    clear_deny_policy(moto_server.endpoint_url)
    broker = _harness(tmp_path, moto_server, faulty_sts.url, read_timeout=0.5)
    started = time.monotonic()
    response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    assert time.monotonic() - started < TIMED_OUT_WITHIN     # the read timeout, not the stall, decided
    failed = _assert_failed_without_credentials(broker, response, status=503, code="sts_timeout")
    assert len(faulty_sts.hits) == 1                         # a lost answer is never retried (no double mint)
    with broker.container.database.transaction() as repo:
        assert [i.grant_id for i in repo.unresolved_intents()] == [failed["grant_id"]]

    # Next start-up (after the grace period): logged as an orphan and denied on the role in (fake) AWS.
    broker.clock.advance(61)
    restarted = _harness(tmp_path, moto_server, faulty_sts.url, clock=broker.clock, state="state2")
    orphan = restarted.events()[-1]
    assert (orphan["type"], orphan["grant_id"], orphan["reason_code"]) == ("orphaned", failed["grant_id"],
                                                                         "orphaned_mint")
    assert session_is_named(read_deny_policy(moto_server.endpoint_url), grant_id=failed["grant_id"])
    with restarted.container.database.transaction() as repo:
        assert repo.unresolved_intents() == []
    assert "issued" not in [e["type"] for e in restarted.events()]


def test_a_young_intent_is_not_an_orphan_yet(tmp_path, moto_server, faulty_sts):
    """Another replica may be mid-mint: intents younger than the grace period are left alone."""
    faulty_sts.mode, faulty_sts.stall_seconds = "stall", STALL_SECONDS  # the read timeout decides, however slow
    broker = _harness(tmp_path, moto_server, faulty_sts.url, read_timeout=0.3)
    broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    restarted = _harness(tmp_path, moto_server, faulty_sts.url, clock=broker.clock, state="state2")
    assert "orphaned" not in [e["type"] for e in restarted.events()]
    with restarted.container.database.transaction() as repo:
        assert len(repo.unresolved_intents()) == 1
