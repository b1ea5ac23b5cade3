"""Lockdown: refuses issuance (and redemption) for an environment; lifting needs two different admins."""

from __future__ import annotations

import pytest

from tests.conftest import moto_sts_sessions
from tests.revocation.conftest import S3_REQUEST

PROD_REQUEST = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "hotfix 7"}


def _lock(broker, environment: str = "dev", who: str = "human:root"):
    return broker.post("/v1/lockdown", who, json={"environment": environment, "reason": "incident 12"})


def _lift(broker, who: str, environment: str = "dev"):
    return broker.post(f"/v1/lockdown/{environment}/lift", who, json={"reason": "incident over"})


def test_lockdown_refuses_issuance_and_lifting_needs_two_admins(admins):
    broker = admins
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
    locked = _lock(broker)
    assert locked.status_code == 201, locked.text
    assert broker.get("/v1/lockdown", "agent:demo").json()["lockdowns"][0]["environment"] == "dev"

    sessions_before = len(moto_sts_sessions(broker.aws_endpoint))
    requests_before = broker.request_count()
    refused = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "environment_locked"
    assert "credentials" not in refused.json()
    assert len(moto_sts_sessions(broker.aws_endpoint)) == sessions_before
    assert broker.request_count() == requests_before
    last = broker.events()[-1]
    assert (last["type"], last["reason_code"], last["actor"]) == ("refused", "environment_locked", "agent:demo")

    # First admin asks; asking again alone does nothing; a different admin confirms.
    first = _lift(broker, "human:root")
    assert (first.status_code, first.json()["status"]) == (202, "lift_requested")
    alone = _lift(broker, "human:root")
    assert (alone.status_code, alone.json()["error"]["code"]) == (409, "second_admin_required")
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 403
    confirmed = _lift(broker, "human:ada")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json() | {} == {"environment": "dev", "status": "lifted", "requested_by": "human:root",
                                     "confirmed_by": "human:ada"}
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201

    kinds = [e["type"] for e in broker.events()]
    for kind in ("lockdown", "lockdown_lift_requested", "lockdown_lifted"):
        assert kind in kinds
    lifted = next(e for e in broker.events() if e["type"] == "lockdown_lifted")
    assert lifted["details"]["requested_by"] == "human:root" and lifted["details"]["confirmed_by"] == "human:ada"
    assert broker.get("/v1/lockdown", "human:rita").json() == {"lockdowns": []}


def test_a_lift_request_expires(admins):
    broker = admins
    _lock(broker)
    assert _lift(broker, "human:root").status_code == 202
    broker.clock.advance(3601)
    # The stale request no longer counts: this is a new first request, not a confirmation.
    again = _lift(broker, "human:ada")
    assert (again.status_code, again.json()["status"]) == (202, "lift_requested")
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 403


def test_lockdown_all_and_only_the_named_environment(admins):
    broker = admins
    assert _lock(broker, "production").status_code == 201
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201    # dev still open
    prod = broker.post("/v1/requests", "agent:demo", json=PROD_REQUEST)
    assert (prod.status_code, prod.json()["error"]["code"]) == (403, "environment_locked")
    assert _lock(broker, "all").status_code == 201
    assert broker.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 403
    twice = _lock(broker, "all")
    assert (twice.status_code, twice.json()["error"]["code"]) == (409, "already_locked_down")


def test_redeeming_an_approved_request_is_refused_during_lockdown(admins):
    broker = admins
    pending = broker.post("/v1/requests", "agent:demo", json=PROD_REQUEST)
    assert pending.status_code == 202, pending.text
    rid = pending.json()["id"]
    for who in ("human:bob", "human:carol"):
        answer = broker.post(f"/v1/requests/{rid}/approvals", who, json={"decision": "approve", "reason": "ok"})
        assert answer.status_code == 200, answer.text
    _lock(broker, "production")
    sessions_before = len(moto_sts_sessions(broker.aws_endpoint))
    redeemed = broker.post(f"/v1/requests/{rid}/credentials", "agent:demo")
    assert (redeemed.status_code, redeemed.json()["error"]["code"]) == (403, "environment_locked")
    assert "credentials" not in redeemed.json()
    assert len(moto_sts_sessions(broker.aws_endpoint)) == sessions_before
    refused = [e for e in broker.events() if e["request_id"] == rid][-1]
    assert (refused["type"], refused["reason_code"]) == ("refused", "environment_locked")
    # The approval still stands: once the lockdown is lifted (by two admins) it can be redeemed in time.
    assert broker.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "approved"


@pytest.mark.parametrize(("who", "path", "body", "status", "code"), [
    ("human:alice", "/v1/lockdown", {"environment": "dev", "reason": "x"}, 403, "admin_required"),
    ("human:rita", "/v1/lockdown", {"environment": "dev", "reason": "x"}, 403, "admin_required"),
    ("agent:demo", "/v1/lockdown", {"environment": "dev", "reason": "x"}, 403, "admin_required"),
    ("human:root", "/v1/lockdown", {"environment": "moon", "reason": "x"}, 422, "invalid_environment"),
    ("human:root", "/v1/lockdown/dev/lift", {"reason": "x"}, 409, "not_locked_down"),
    ("human:alice", "/v1/lockdown/dev/lift", {"reason": "x"}, 403, "admin_required"),
])
def test_lockdown_refusals(sqlite_broker, who, path, body, status, code):
    answer = sqlite_broker.post(path, who, json=body)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    assert sqlite_broker.get("/v1/lockdown", "human:root").json() == {"lockdowns": []}
    if code == "admin_required":
        last = sqlite_broker.events()[-1]
        assert (last["type"], last["actor"], last["reason_code"]) == ("refused", who, "admin_required")


def _waiting_on_a_lock(engine) -> bool:
    from sqlalchemy import text

    with engine.connect() as connection:
        return bool(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar())


def test_a_request_racing_a_lockdown_is_refused_once_the_lockdown_commits(pg_url, moto_server, tmp_path):
    """The issuance takes the log's lock before its gates read: a lockdown that is committing while
    the request runs is seen, never read-before-commit and then issued past.  PostgreSQL only: on
    SQLite every unit of work is BEGIN IMMEDIATE, which serializes them whole (that cannot race)."""
    from tests.conftest import TEST_SCOPES, build_harness

    broker = build_harness(db_url=pg_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state")
    try:
        _race_a_lockdown(broker)
    finally:
        broker.container.database.engine.dispose()


def _race_a_lockdown(broker) -> None:
    import json
    import threading
    import time

    from broker.usecases.lockdown import LOCKDOWN_KEY

    database = broker.container.database
    sessions_before = len(moto_sts_sessions(broker.aws_endpoint))
    answers = []
    with database.transaction() as repo:  # an administrator's lockdown, caught mid-commit
        repo.lock_log_head()
        repo.set_setting(LOCKDOWN_KEY.format(scope="dev"), json.dumps({"environment": "dev"}), now=broker.clock.now())
        racer = threading.Thread(target=lambda: answers.append(broker.post("/v1/requests", "agent:demo",
                                                                           json=S3_REQUEST)))
        racer.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(database.engine) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the request is blocked on the lock we hold
        assert _waiting_on_a_lock(database.engine), "the request never waited for the log's lock"
        assert racer.is_alive() and not answers
    racer.join(10)
    (refused,) = answers
    assert refused.status_code == 403, refused.json().get("error")  # never print an issued credential
    assert refused.json()["error"]["code"] == "environment_locked"
    assert len(moto_sts_sessions(broker.aws_endpoint)) == sessions_before


class LockdownWhileMinting:
    """STS answers, and meanwhile an administrator's lockdown commits (after unit of work A, before B)."""

    def __init__(self, inner) -> None:
        self.inner, self.broker, self.minted = inner, None, []

    def mint(self, order):
        credentials = self.inner.mint(order)
        self.minted.append(credentials.access_key_id)
        assert _lock(self.broker).status_code == 201
        return credentials


def test_a_lockdown_that_commits_while_sts_mints_withholds_the_credentials(db_url, moto_server, tmp_path):
    from broker.aws.sts import StsMinter
    from broker.domain.revocation import session_is_named
    from tests.conftest import TEST_SCOPES, build_harness
    from tests.revocation.conftest import clear_deny_policy, read_deny_policy

    clear_deny_policy(moto_server.endpoint_url)
    minter = LockdownWhileMinting(StsMinter(endpoint_url=moto_server.endpoint_url, region="us-east-1"))
    broker = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                           state_dir=tmp_path / "state", minter=minter)
    minter.broker = broker
    try:
        refused = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
        assert refused.status_code == 403, refused.json().get("error")
        assert refused.json()["error"]["code"] == "environment_locked"
        assert "credentials" not in refused.json() and minter.minted[0] not in refused.text
        events = broker.events()
        assert [e["type"] for e in events] == ["requested", "lockdown", "failed"]
        assert events[-1]["reason_code"] == "environment_locked"
        request_id = events[0]["request_id"]
        assert broker.get(f"/v1/requests/{request_id}", "agent:demo").json()["status"] == "failed"
        # The session STS minted is nobody's: reconciliation logs it as an orphan and denies it at AWS.
        broker.clock.advance(61)
        assert broker.container.revocations.reconcile_orphans() == [events[0]["grant_id"]]
        assert broker.events()[-1]["type"] == "orphaned"
        assert session_is_named(read_deny_policy(moto_server.endpoint_url), grant_id=events[0]["grant_id"])
    finally:
        broker.container.database.engine.dispose()
