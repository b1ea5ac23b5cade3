"""Revocation under faults (issue 22, 1 and 2): the orphan deny that runs out of room, and a slow or failing IAM.

STS and IAM are moto behind :class:`~tests.faults.conftest.FaultProxy`: STS answers lost (the session exists,
the broker never learns of it: an orphan), IAM slowed or failing.  A burst of orphans is one real lost answer
copied in the database (300 real round trips would take a minute; what the sweep sees is the same)."""

from __future__ import annotations

import threading
import time
import uuid

from broker.domain.sts_rules import source_identity_for
from broker.domain.revocation import KEY_SOURCE_IDENTITY, KEY_TOKEN_ISSUE_TIME, session_is_named
from broker.storage.models import MintIntentRow, RequestRow
from tests.conftest import TEST_SCOPES, build_harness
from tests.faults.conftest import Fault
from tests.revocation.conftest import S3_REQUEST, S3_ROLE, issue, read_deny_policy


def _harness(tmp_path, proxy, **overrides):
    return build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES, aws_endpoint=proxy.url,
                         state_dir=tmp_path / "state", **overrides)


def lose_sts_answers(broker, proxy, count: int) -> list[str]:
    """``count`` issuances whose STS answer was lost: one for real through the proxy, the rest its copies."""
    proxy.faults["sts"] = Fault(drop=True)
    response = broker.post("/v1/requests", "agent:demo", json=S3_REQUEST)
    proxy.faults.pop("sts")
    assert response.status_code == 503 and response.json()["error"]["code"] == "sts_timeout", response.text
    with broker.container.database.transaction() as repo:
        (intent,) = repo.unresolved_intents()
        request = repo.session.get(RequestRow, intent.request_id)
        grant_ids = [intent.grant_id]
        for _ in range(count - 1):
            grant_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
            repo.session.add(RequestRow(**{**request.model_dump(), "id": request_id, "grant_id": grant_id,
                                           "session_name": f"orphan-{grant_id[:20]}"}))
            repo.session.add(MintIntentRow(grant_id=grant_id, request_id=request_id, role_arn=intent.role_arn,
                                           source_identity=intent.source_identity, created_at=intent.created_at))
            grant_ids.append(grant_id)
    return grant_ids


def _types(broker) -> list[str]:
    return [e["type"] for e in broker.events()]


def test_300_orphans_are_all_logged_and_denied_and_admins_can_still_revoke(tmp_path, fault_proxy):
    broker = _harness(tmp_path, fault_proxy)
    live = issue(broker)                                   # a legitimate session on the same role
    orphans = lose_sts_answers(broker, fault_proxy, 300)
    broker.clock.advance(61)
    started = time.monotonic()
    result = broker.container.revocations.sweep()
    took = time.monotonic() - started      # printed, not asserted
    assert sorted(result["orphans"]) == sorted(orphans)
    events = broker.events()
    assert sum(e["type"] == "orphaned" for e in events) == 300
    assert "revocation_failed" not in _types(broker)
    with broker.container.database.transaction() as repo:
        assert repo.unresolved_intents() == []
    # The 300 session entries would not fit in 10,240 characters: one "issued before now" deny for the
    # agent they belong to took their place (aws:TokenIssueTime, narrowed by SourceIdentity).
    policy = read_deny_policy(fault_proxy.upstream)
    (statement,) = policy["Statement"]
    assert KEY_TOKEN_ISSUE_TIME in statement["Condition"]["DateLessThan"]
    assert statement["Condition"]["StringEquals"] == {KEY_SOURCE_IDENTITY: source_identity_for("agent:demo")}
    (fallback,) = [e for e in events if e["type"] == "revoked_all"]
    assert fallback["actor"] == "broker" and fallback["reason_code"] == "revocation_policy_full"
    assert fallback["details"]["grants"] == [live.grant_id]   # the record says what AWS now denies
    with broker.container.database.transaction() as repo:
        assert repo.get_grant(live.grant_id).revoked_by == "broker"
    print(f"300 orphans reconciled in {took:.2f} s")

    # Admins can still revoke on that role: a grant issued since, and everything on the role.
    broker.clock.advance(2)
    later = issue(broker)
    answer = broker.post(f"/v1/grants/{later.grant_id}/revoke", "human:root", json={"reason": "leaked"})
    assert answer.status_code == 200, answer.text
    assert session_is_named(read_deny_policy(fault_proxy.upstream), grant_id=later.grant_id)
    answer = broker.post("/v1/revocations", "human:root", json={"role_arn": S3_ROLE, "reason": "incident"})
    assert answer.status_code == 200, answer.text
    broker.container.database.engine.dispose()


def test_a_role_full_of_revoked_grants_still_takes_one_more(tmp_path, fault_proxy):
    """No 422 revocation_policy_too_large while a role-wide deny can do it: the admin's revoke falls back."""
    broker = _harness(tmp_path, fault_proxy)
    orphans = lose_sts_answers(broker, fault_proxy, 254)     # 257 sessions fit the role: still one per entry
    broker.clock.advance(61)
    broker.container.revocations.sweep()
    assert "revoked_all" not in _types(broker)
    assert session_is_named(read_deny_policy(fault_proxy.upstream), grant_id=orphans[0])
    grants = [issue(broker) for _ in range(5)]
    for grant in grants:
        answer = broker.post(f"/v1/grants/{grant.grant_id}/revoke", "human:root", json={"reason": "leaked"})
        assert answer.status_code in (200, 409), answer.text   # 409: a fallback before it revoked it already
        assert answer.status_code != 422
    assert "revoked_all" in _types(broker)
    assert "revocation_failed" not in _types(broker)
    broker.container.database.engine.dispose()


def test_iam_failing_is_one_failure_entry_per_sweep_then_the_sweep_backs_off(tmp_path, fault_proxy):
    broker = _harness(tmp_path, fault_proxy)
    lose_sts_answers(broker, fault_proxy, 3)
    broker.clock.advance(61)
    fault_proxy.faults["iam"] = Fault(status=503)
    revocations = broker.container.revocations
    try:
        revocations.sweep()
    except Exception as exc:  # noqa: BLE001 - the sweep says IAM failed
        assert getattr(exc, "code", None) == "revocation_unavailable"
    assert _types(broker).count("revocation_failed") == 1      # one entry, not one per orphan
    calls = fault_proxy.hits["iam"]
    assert revocations.sweep()["skipped"] == "iam_backoff"    # backing off: IAM is left alone, nothing logged
    assert fault_proxy.hits["iam"] == calls and _types(broker).count("revocation_failed") == 1
    fault_proxy.faults.pop("iam")
    revocations.iam_backoff.retry_at = 0                        # the pause is over
    assert len(revocations.sweep()["orphans"]) == 3
    assert _types(broker).count("orphaned") == 3
    broker.container.database.engine.dispose()


def test_hanging_iam_does_not_stall_issuance(tmp_path, fault_proxy):
    """An admin revocation waits for IAM (held for as long as the test wants) without holding the log's lock:
    issuance goes on meanwhile, and the revocation completes once IAM answers."""
    broker = _harness(tmp_path, fault_proxy)
    victim = issue(broker)
    released = threading.Event()
    fault_proxy.faults["iam"] = Fault(hold=released)
    answers: list = []
    revoker = threading.Thread(target=lambda: answers.append(broker.post(
        f"/v1/grants/{victim.grant_id}/revoke", "human:root", json={"reason": "leaked"})), daemon=True)
    revoker.start()
    try:
        while fault_proxy.hits.get("iam", 0) == 0:
            time.sleep(0.01)
        issued: list = []
        issuer = threading.Thread(target=lambda: issued.extend(
            broker.post("/v1/requests", "agent:other", json=S3_REQUEST).status_code for _ in range(3)), daemon=True)
        issuer.start()
        issuer.join(4)   # under the IAM client's 5 s read timeout: waiting on the revocation would not end sooner
        assert issued == [201, 201, 201], "issuance waited for the revocation's IAM call"
        assert revoker.is_alive() and not answers                 # ... which is still waiting for IAM
    finally:
        released.set()
        fault_proxy.faults.pop("iam")
    revoker.join(30)
    assert answers and answers[0].status_code == 200, answers[0].text
    assert session_is_named(read_deny_policy(fault_proxy.upstream), grant_id=victim.grant_id)
    assert _types(broker)[-1] == "revoked"
    broker.container.database.engine.dispose()


def test_two_replicas_revoking_on_one_role_wait_for_each_other_and_lose_nothing(pg_migrated_url, fault_proxy,
                                                                                 tmp_path):
    """The per-role lock holds across replicas (PostgreSQL advisory lock): while one replica waits for a slow IAM,
    the other's revocation on the same role waits for it (not for the lock timeout), and the role's policy ends
    up naming both sessions (neither write is lost)."""
    replicas = [build_harness(db_url=pg_migrated_url, scopes=TEST_SCOPES, aws_endpoint=fault_proxy.url,
                              state_dir=tmp_path / name, db_lock_timeout_ms=300) for name in ("a", "b")]
    try:
        grants = [issue(replica) for replica in replicas]
        fault_proxy.faults["iam"] = Fault(delay=0.5)             # every IAM call: list, get, put
        answers: dict[int, object] = {}
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, replicas[i].post(
            f"/v1/grants/{grants[i].grant_id}/revoke", "human:root", json={"reason": "leaked"})), daemon=True)
            for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        fault_proxy.faults.pop("iam")
        assert [answers[i].status_code for i in (0, 1)] == [200, 200], [answers[i].text for i in (0, 1)]
        policy = read_deny_policy(fault_proxy.upstream)
        assert all(session_is_named(policy, grant_id=g.grant_id) for g in grants)
    finally:
        for replica in replicas:
            replica.container.database.engine.dispose()
