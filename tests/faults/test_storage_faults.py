"""Database down or read-only: every request is a 503 and nothing is released.  The log write
failing after STS succeeded: credentials withheld, the intent reconciled at next start-up."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import pytest
from fastapi.testclient import TestClient

from broker.api.app import create_app
from broker.api.deps import build_container
from broker.aws.sts import StsMinter
from broker.runtime.devmode import DEV_ACCOUNTS
from broker.domain.revocation import session_is_named
from broker.errors import Conflict
from broker.ports import MintedCredentials, MintOrder
from broker.settings import BrokerSettings
from tests.conftest import TEST_SCOPES, build_harness, moto_sts_sessions
from tests.faults.conftest import closed_port, cut_database
from tests.revocation.conftest import S3_REQUEST, clear_deny_policy, read_deny_policy


def _assert_storage_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "credentials" not in response.json()
    assert "psycopg" not in response.text and "sqlite" not in response.text.lower()


def test_postgres_down_every_request_is_503_and_nothing_is_released(pg_admin_url, pg_url, moto_server, tmp_path):
    broker = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state")
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    events_before, sessions_before = broker.events(), len(moto_sts_sessions(moto_server.endpoint_url))
    cut_database(pg_admin_url, pg_url, allow=False)
    try:
        for method, path, body in (("post", "/v1/requests", S3_REQUEST), ("get", "/v1/events", None),
                                   ("post", "/v1/lockdown", {"environment": "dev", "reason": "x"})):
            who = "human:root" if "lockdown" in path or "events" in path else "agent:demo"
            response = getattr(broker.client, method)(path, headers=broker.auth(who),
                                                      **({"json": body} if body else {}))
            _assert_storage_unavailable(response)
        assert broker.client.get("/readyz").status_code == 503
    finally:
        cut_database(pg_admin_url, pg_url, allow=True)
    assert len(moto_sts_sessions(moto_server.endpoint_url)) == sessions_before      # STS never called
    assert broker.events() == events_before                                           # nothing half-written
    broker.container.database.engine.dispose()


def test_postgres_on_a_closed_port(moto_server, tmp_path, pg_url):
    good = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                         state_dir=tmp_path / "state")
    sessions_before = len(moto_sts_sessions(moto_server.endpoint_url))
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/nowhere"
    settings = BrokerSettings(database_url=url, scopes_dir=TEST_SCOPES, aws_endpoint_url=moto_server.endpoint_url,
                              signing_key_file=tmp_path / "state" / "log-signing-key.pem", accounts=DEV_ACCOUNTS)
    container = build_container(settings, clock=good.clock, run_migrations=False)   # start-up survives
    client = TestClient(create_app(container), raise_server_exceptions=False)
    _assert_storage_unavailable(client.post("/v1/requests", headers=good.auth("agent:demo"), json=S3_REQUEST))
    assert len(moto_sts_sessions(moto_server.endpoint_url)) == sessions_before
    good.container.database.engine.dispose()


def test_sqlite_read_only_every_request_is_503(moto_server, tmp_path):
    path = tmp_path / "b.db"
    writable = build_harness(db_url=f"sqlite:///{path}", scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                             state_dir=tmp_path / "state")
    assert writable.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    events_before = writable.events()
    writable.container.database.engine.dispose()
    sessions_before = len(moto_sts_sessions(moto_server.endpoint_url))
    settings = BrokerSettings(database_url=f"sqlite:///file:{path}?mode=ro&uri=true", scopes_dir=TEST_SCOPES,
                              aws_endpoint_url=moto_server.endpoint_url,
                              signing_key_file=writable.state_dir / "log-signing-key.pem", accounts=DEV_ACCOUNTS)
    container = build_container(settings, clock=writable.clock, run_migrations=False)
    client = TestClient(create_app(container), raise_server_exceptions=False)
    _assert_storage_unavailable(client.post("/v1/requests", headers=writable.auth("agent:demo"), json=S3_REQUEST))
    assert len(moto_sts_sessions(moto_server.endpoint_url)) == sessions_before
    container.database.engine.dispose()
    reopened = build_harness(db_url=f"sqlite:///{path}", scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                             state_dir=tmp_path / "state")
    assert reopened.events() == events_before
    reopened.container.database.engine.dispose()


@dataclass
class FaultAfterMint:
    """A real StsMinter (moto over HTTP), then a real fault: the database goes away before the log write."""

    inner: StsMinter
    fault: Callable[[], None]
    minted: list[str]

    def mint(self, order: MintOrder) -> MintedCredentials:
        credentials = self.inner.mint(order)
        self.minted.append(credentials.access_key_id)
        self.fault()
        return credentials


def test_log_write_failing_after_sts_withholds_credentials_and_start_up_revokes_the_orphan(
        pg_admin_url, pg_url, moto_server, tmp_path):
    clear_deny_policy(moto_server.endpoint_url)
    minted: list[str] = []
    minter = FaultAfterMint(StsMinter(endpoint_url=moto_server.endpoint_url, region="us-east-1"),
                            fault=lambda: cut_database(pg_admin_url, pg_url, allow=False), minted=minted)
    broker = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state", minter=minter)
    try:
        response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    finally:
        cut_database(pg_admin_url, pg_url, allow=True)
    _assert_storage_unavailable(response)
    assert len(minted) == 1 and minted[0] not in response.text          # STS did mint; nothing left the broker
    events = broker.events()
    assert [e["type"] for e in events] == ["requested"]                   # no "issued" without its grant
    request_id, grant_id = events[0]["request_id"], events[0]["grant_id"]
    broker.container.database.engine.dispose()

    broker.clock.advance(61)
    restarted = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                              state_dir=tmp_path / "state", clock=broker.clock)
    types = [e["type"] for e in restarted.events()]
    assert types == ["requested", "orphaned"]
    orphan = restarted.events()[-1]
    assert (orphan["request_id"], orphan["grant_id"], orphan["details"]["revoked"]) == (request_id, grant_id, True)
    assert session_is_named(read_deny_policy(moto_server.endpoint_url), grant_id=grant_id)
    view = restarted.get(f"/v1/requests/{request_id}", "agent:demo").json()
    assert view["status"] == "failed" and view["decided_reason"] == "orphaned"
    # The orphaned session really exists at (fake) AWS: its tag is the grant id the deny names.
    session = next(s for s in moto_sts_sessions(moto_server.endpoint_url) if s["access_key_id"] == minted[0])
    assert session["role_arn"].endswith("role/broker-target-s3-read")
    restarted.container.database.engine.dispose()


def test_a_connection_lost_while_sts_mints_is_retried_once_and_the_credentials_are_delivered(
        pg_admin_url, pg_url, moto_server, tmp_path, caplog):
    """A database restart (every connection cut, new ones welcome) between the two units of work: the
    record of the issuance is written on a fresh connection, and the caller gets the credentials."""
    minted: list[str] = []

    def restart_database() -> None:
        cut_database(pg_admin_url, pg_url, allow=False)
        cut_database(pg_admin_url, pg_url, allow=True)

    minter = FaultAfterMint(StsMinter(endpoint_url=moto_server.endpoint_url, region="us-east-1"),
                            fault=restart_database, minted=minted)
    broker = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state", minter=minter)
    try:
        response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
        assert response.status_code == 201, response.json().get("error")
        assert response.json()["credentials"]["access_key_id"] == minted[0]
        # The loss was seen (not hidden by a ping at checkout) and the retry is what delivered them.
        assert "retrying once" in caplog.text
        events = broker.events()
        assert [e["type"] for e in events] == ["requested", "issued"]
        assert events[-1]["access_key_id"] == minted[0]
        with broker.container.database.transaction() as repo:
            assert repo.unresolved_intents() == []  # nothing for reconciliation to revoke
    finally:
        broker.container.database.engine.dispose()


def test_a_retry_finds_the_issuance_already_recorded_and_writes_nothing_twice(broker):
    """The connection was lost at COMMIT and the commit had landed: the retry sees this exact grant
    recorded and logged, and neither refuses nor logs it again."""
    issued = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).json()
    service = broker.container.service
    with service.database.transaction() as repo:
        row = repo.get_request(issued["id"])
        recorded = repo.get_grant(issued["grant"]["id"])
    again = recorded
    before = broker.events()
    service._record_issued(row, again, actor="agent:demo", risks=[], retry=True)  # noqa: SLF001 - the retry's own step
    assert broker.events() == before
    # A different grant for the same request is a conflict, not a silent success.
    again = replace(recorded, access_key_id="ASIAOTHERKEY00000000")
    with pytest.raises(Conflict):
        service._record_issued(row, again, actor="agent:demo", risks=[], retry=True)  # noqa: SLF001
    assert broker.events() == before
