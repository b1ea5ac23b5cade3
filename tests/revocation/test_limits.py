"""Rate limits and budgets (broker/usecases/limits.py): 429 with a stable code, Retry-After, a log entry."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

import pytest

from broker.domain.principals import Principal, Role
from tests.conftest import TEST_SCOPES, build_harness
from tests.revocation.conftest import S3_REQUEST

LOGS_REQUEST = {"template": "test-logs", "parameters": {"log_group": "/aws/lambda/checkout"}, "reason": "read logs"}


@pytest.fixture
def limited(moto_server, tmp_path, request):
    limits = request.param
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", **limits)
    yield harness
    harness.container.database.engine.dispose()


def _refusal(response, code: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    assert "credentials" not in response.json()
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("limited", [{"agent_requests_per_minute": 3}], indirect=True)
def test_agent_rate_limit_refuses_the_flooder_only(limited):
    for _ in range(3):
        assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    before = limited.request_count()
    over = limited.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    _refusal(over, "rate_limited")
    assert int(over.headers["retry-after"]) == 61  # all three at this instant: they count until 60 s on, inclusive
    assert limited.request_count() == before
    last = limited.events()[-1]
    assert (last["type"], last["reason_code"], last["actor"]) == ("refused", "rate_limited", "agent:demo")
    # Another agent is not affected.
    assert limited.post("/v1/requests", "agent:other", json=S3_REQUEST).status_code == 201
    # A minute later the window has moved on.
    limited.clock.advance(61)
    assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201


@pytest.mark.parametrize("limited", [{"template_requests_per_minute": 2}], indirect=True)
def test_template_rate_limit_counts_all_agents(limited):
    assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    assert limited.post("/v1/requests", "agent:other", json=S3_REQUEST).status_code == 201
    _refusal(limited.post("/v1/requests", "agent:other", json=S3_REQUEST), "template_rate_limited")
    assert limited.post("/v1/requests", "agent:demo", json=LOGS_REQUEST).status_code == 201


@pytest.mark.parametrize("limited", [{"agent_max_live_grants": 2}], indirect=True)
def test_live_grant_budget_frees_up_on_expiry_and_revocation(limited):
    first = limited.post("/v1/requests", "agent:demo", json={**S3_REQUEST, "ttl_seconds": 900}).json()
    limited.post("/v1/requests", "agent:demo", json={**S3_REQUEST, "ttl_seconds": 1800})
    over = limited.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    _refusal(over, "too_many_live_grants")
    assert int(over.headers["retry-after"]) > 60         # until the first grant expires
    revoked = limited.post(f"/v1/grants/{first['grant']['id']}/revoke", "agent:demo", json={"reason": "done"})
    assert revoked.status_code == 200, revoked.text
    assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201


@pytest.mark.parametrize("limited", [{"agent_requests_per_minute": 0, "template_requests_per_minute": 0,
                                      "agent_max_live_grants": 0}], indirect=True)
def test_zero_disables_a_limit(limited):
    for _ in range(4):
        assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201


def test_negative_limits_are_configuration_errors():
    from broker.usecases.limits import RateLimitGate

    with pytest.raises(ValueError):
        RateLimitGate.from_settings(agent_requests_per_minute=-1, template_requests_per_minute=1,
                                    agent_max_live_grants=1)


def test_a_gate_with_no_limit_binding_the_template_reads_nothing_and_takes_no_lock():
    """The pending-request limit alone binds only templates that need approval: for any other the gate is
    a no-op (no count, no lock); for one that does, it counts under the log's lock."""
    from broker.storage.template_files import load_catalog
    from broker.usecases.limits import RateLimitGate

    class Recording:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def lock_log_head(self):
            self.calls.append("lock")

        def issuance_counts(self, **_counted):
            self.calls.append("count")
            return {"agent_pending_requests": 0}

    gate = RateLimitGate.from_settings(agent_requests_per_minute=0, template_requests_per_minute=0,
                                       agent_max_live_grants=0, agent_max_pending_requests=5)
    catalog = load_catalog(TEST_SCOPES)
    principal = Principal(id="agent:demo", roles=frozenset({Role.AGENT}))
    for name, calls in (("test-s3-read", []), ("test-prod-ecs", ["lock", "count"])):
        repo = Recording()
        gate(repo, principal, catalog.get(name), datetime(2026, 1, 2, tzinfo=UTC))
        assert repo.calls == calls, name


PROD_REQUEST = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy"}


@pytest.mark.parametrize("limited", [{"agent_max_live_grants": 1}], indirect=True)
def test_live_grant_budget_binds_at_redemption_too(limited):
    pending = limited.post("/v1/requests", "agent:demo", json=PROD_REQUEST)
    assert pending.status_code == 202, pending.text
    rid = pending.json()["id"]
    for who in ("human:bob", "human:carol"):
        assert limited.post(f"/v1/requests/{rid}/approvals", who,
                            json={"decision": "approve", "reason": "ok"}).status_code == 200
    # Meanwhile the agent spends its budget on a dev grant.
    dev = limited.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    assert dev.status_code == 201, dev.text
    _refusal(limited.post(f"/v1/requests/{rid}/credentials", "agent:demo"), "too_many_live_grants")
    # The approval still stands; with the budget freed (the dev grant revoked), the redemption goes through.
    revoked = limited.post(f"/v1/grants/{dev.json()['grant']['id']}/revoke", "agent:demo", json={"reason": "done"})
    assert revoked.status_code == 200, revoked.text
    redeemed = limited.post(f"/v1/requests/{rid}/credentials", "agent:demo")
    assert redeemed.status_code == 201, redeemed.text


class HeldMinter:
    """Holds the first issuance between its two units of work (STS minting) until told to go on."""

    def __init__(self, inner) -> None:
        self.inner, self.in_flight, self.go = inner, threading.Event(), threading.Event()

    def mint(self, order):
        if not self.in_flight.is_set():
            self.in_flight.set()
            assert self.go.wait(20)
        return self.inner.mint(order)


def test_the_live_grant_budget_counts_issuances_in_flight(db_url, moto_server, tmp_path):
    """Two requests at once with a budget of one live grant: the second sees the first in flight (past
    its gate, its grant not yet recorded) and is refused; it does not slip past the limit."""
    from broker.aws.sts import StsMinter

    minter = HeldMinter(StsMinter(endpoint_url=moto_server.endpoint_url, region="us-east-1"))
    broker = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state", minter=minter, agent_max_live_grants=1)
    try:
        first: list = []
        racer = threading.Thread(target=lambda: first.append(broker.post("/v1/requests", "agent:demo",
                                                                          json=S3_REQUEST)))
        racer.start()
        assert minter.in_flight.wait(20)
        _refusal(broker.post("/v1/requests", "agent:demo", json=S3_REQUEST), "too_many_live_grants")
        minter.go.set()
        racer.join(20)
        assert first[0].status_code == 201, first[0].json().get("error")
        with broker.container.database.transaction() as repo:
            assert len(repo.find_grants(agent="agent:demo", revoked=False)) == 1
    finally:
        minter.go.set()
        broker.container.database.engine.dispose()


@pytest.mark.parametrize("limited", [{"template_requests_per_minute": 2, "agent_max_live_grants": 0}],
                         indirect=True)
def test_retry_after_is_when_the_window_frees_a_slot(limited):
    assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201   # t
    limited.clock.advance(5)
    assert limited.post("/v1/requests", "agent:other", json=S3_REQUEST).status_code == 201  # t + 5
    for _ in range(2):  # newer requests for another template are not this template's
        assert limited.post("/v1/requests", "agent:demo", json=LOGS_REQUEST).status_code == 201
    limited.clock.advance(10)
    over = limited.post("/v1/requests", "agent:demo", json=S3_REQUEST)                       # t + 15
    _refusal(over, "template_rate_limited")
    assert int(over.headers["retry-after"]) == 46  # the request made at t counts until t + 60 inclusive
    limited.clock.advance(45)
    _refusal(limited.post("/v1/requests", "agent:demo", json=S3_REQUEST), "template_rate_limited")
    limited.clock.advance(1)
    assert limited.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201


@pytest.mark.parametrize("limited", [{"agent_max_live_grants": 1}], indirect=True)
def test_retry_after_for_the_live_grant_budget_is_the_first_expiry(limited):
    first = limited.post("/v1/requests", "agent:demo", json={**S3_REQUEST, "ttl_seconds": 900})
    assert first.status_code == 201
    limited.clock.advance(100)
    over = limited.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    _refusal(over, "too_many_live_grants")
    expiration = datetime.fromisoformat(first.json()["grant"]["expiration"].replace("Z", "+00:00"))
    assert int(over.headers["retry-after"]) == math.ceil((expiration - limited.clock.now()).total_seconds())
    assert 790 <= int(over.headers["retry-after"]) <= 810
