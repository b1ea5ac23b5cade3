"""Clock skew between replicas (issue 22, 5): two replicas on one PostgreSQL database, one 90 s ahead.

The drill: the fast replica let a 60-per-minute limit pass 81, and its orphan sweep took over the other
replica's in-flight issuances.  Each replica measures its clock against the database's; beyond the bound
the fast one is not ready, issues nothing and does not sweep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.storage.models import MintIntentRow
from tests.conftest import TEST_SCOPES, build_harness
from tests.faults.conftest import Fault
from tests.revocation.conftest import S3_REQUEST

BOUND = {"max_clock_skew_seconds": 5}


class HostClock:
    """This host's clock, ``ahead`` seconds off: a replica whose NTP is broken (time passes, unlike FrozenClock)."""

    def __init__(self, ahead: float = 0) -> None:
        self.offset = timedelta(seconds=ahead)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def _replica(url, proxy, tmp_path, name: str, *, ahead: float = 0, **overrides):
    return build_harness(db_url=url, scopes=TEST_SCOPES, aws_endpoint=proxy.url, state_dir=tmp_path / name,
                         clock=HostClock(ahead), **{**BOUND, **overrides})


def test_a_replica_90_s_ahead_is_not_ready_and_cannot_stretch_a_rate_limit(pg_migrated_url, fault_proxy, tmp_path):
    limit = {"agent_requests_per_minute": 3}
    good = _replica(pg_migrated_url, fault_proxy, tmp_path, "good", **limit)
    fast = _replica(pg_migrated_url, fault_proxy, tmp_path, "fast", ahead=90, **limit)
    try:
        assert good.client.get("/readyz").status_code == 200
        ready = fast.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "clock_skewed"
        for _ in range(3):
            assert good.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
        assert good.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 429
        # The fast replica's window (its now - 60 s) would not see the three: it must not decide at all.
        response = fast.post("/v1/requests", "agent:demo", json=S3_REQUEST)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "clock_skewed"
        assert [e["type"] for e in good.events()].count("issued") == 3
    finally:
        good.container.database.engine.dispose()
        fast.container.database.engine.dispose()


def test_a_fast_replica_does_not_take_over_in_flight_issuances(pg_migrated_url, fault_proxy, tmp_path):
    good = _replica(pg_migrated_url, fault_proxy, tmp_path, "good")
    fast = _replica(pg_migrated_url, fault_proxy, tmp_path, "fast", ahead=90)
    try:
        # An issuance on the good replica whose STS call is (as far as anyone knows) still under way.
        fault_proxy.faults["sts"] = Fault(drop=True)
        assert good.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 503
        fault_proxy.faults.pop("sts")
        with good.container.database.transaction() as repo:
            (intent,) = repo.unresolved_intents()
        # To the fast replica's clock the intent is 90 s old (past the 60 s grace): its sweep must not touch it.
        assert fast.container.revocations.sweep()["skipped"] == "clock_skewed"
        assert "orphaned" not in [e["type"] for e in good.events()]
        with good.container.database.transaction() as repo:
            assert [i.grant_id for i in repo.unresolved_intents()] == [intent.grant_id]
        # The good replica reconciles it once it really is past the grace period (61 s pass: the intent is moved
        # back, since the database's clock cannot be moved forward).
        with good.container.database.transaction() as repo:
            row = repo.session.get(MintIntentRow, intent.grant_id)
            row.created_at = row.created_at - timedelta(seconds=61)
            repo.session.add(row)
        assert good.container.revocations.sweep()["orphans"] == [intent.grant_id]
    finally:
        good.container.database.engine.dispose()
        fast.container.database.engine.dispose()
