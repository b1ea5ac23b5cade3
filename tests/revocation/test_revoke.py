"""Revocation against moto: the role's deny policy names revoked sessions, then forgets expired ones."""

from __future__ import annotations

import pytest

from broker.domain.revocation import CLOCK_SKEW_MARGIN, KEY_TOKEN_ISSUE_TIME, session_is_named
from tests.revocation.conftest import S3_ROLE, issue, read_deny_policy


def _types(broker) -> list[str]:
    return [e["type"] for e in broker.events()]


def test_revoke_writes_the_session_into_the_roles_deny_policy_and_drops_it_after_expiry(broker):
    short = issue(broker, ttl_seconds=900)
    long = issue(broker, ttl_seconds=1800)
    assert read_deny_policy(broker.aws_endpoint) is None

    for grant in (short, long):
        answer = broker.post(f"/v1/grants/{grant.grant_id}/revoke", "human:alice", json={"reason": "leaked in CI"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["grant"]["revoked_at"] is not None

    policy = read_deny_policy(broker.aws_endpoint)
    for grant in (short, long):
        assert session_is_named(policy, grant_id=grant.grant_id)
        assert f"*:{grant.session_name}" in policy["Statement"][1]["Condition"]["StringLike"]["aws:userid"]
    revoked = [e for e in broker.events() if e["type"] == "revoked"]
    assert [e["grant_id"] for e in revoked] == [short.grant_id, long.grant_id]
    assert revoked[0]["actor"] == "human:alice" and revoked[0]["access_key_id"] == short.access_key_id
    assert revoked[0]["details"]["reason"] == "leaked in CI"

    # The short grant's credentials expire (plus the skew margin): a re-sync drops it, keeps the other.
    broker.clock.advance(900 + CLOCK_SKEW_MARGIN.total_seconds() + 60)
    synced = broker.post("/v1/revocations/sync", "human:root")
    assert synced.status_code == 200, synced.text
    policy = read_deny_policy(broker.aws_endpoint)
    assert not session_is_named(policy, grant_id=short.grant_id)
    assert session_is_named(policy, grant_id=long.grant_id)
    assert "revocations_expired" in _types(broker)

    broker.clock.advance(900)
    broker.post("/v1/revocations/sync", "human:root")
    assert read_deny_policy(broker.aws_endpoint) is None


def test_revoking_twice_or_an_expired_grant_is_a_conflict(broker):
    grant = issue(broker, ttl_seconds=900)
    assert broker.post(f"/v1/grants/{grant.grant_id}/revoke", "agent:demo", json={"reason": "done"}).status_code == 200
    again = broker.post(f"/v1/grants/{grant.grant_id}/revoke", "human:root", json={"reason": "again"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "grant_already_revoked")
    other = issue(broker, ttl_seconds=900)
    broker.clock.advance(1000)
    late = broker.post(f"/v1/grants/{other.grant_id}/revoke", "human:root", json={"reason": "late"})
    assert (late.status_code, late.json()["error"]["code"]) == (409, "grant_expired")


@pytest.mark.parametrize(("principal", "status", "code"), [
    ("human:root", 200, None),              # admin
    ("human:alice", 200, None),             # the human agent:demo acts for
    ("agent:demo", 200, None),              # the agent giving up its own grant
    ("human:rita", 403, "not_allowed_to_revoke"),   # reviewer: read only
    ("human:bob", 403, "not_allowed_to_revoke"),    # an approver, but not accountable for agent:demo
    ("agent:other", 404, "grant_not_found"),        # another agent: not even told the grant exists
])
def test_who_may_revoke_a_grant(sqlite_broker, principal, status, code):
    grant = issue(sqlite_broker)
    answer = sqlite_broker.post(f"/v1/grants/{grant.grant_id}/revoke", principal, json={"reason": "check"})
    assert answer.status_code == status, answer.text
    if code:
        assert answer.json()["error"]["code"] == code
        assert read_deny_policy(sqlite_broker.aws_endpoint) is None
    else:
        assert session_is_named(read_deny_policy(sqlite_broker.aws_endpoint), grant_id=grant.grant_id)


def test_unknown_grant_and_missing_reason(sqlite_broker):
    missing = sqlite_broker.post("/v1/grants/nope/revoke", "human:root", json={"reason": "x"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "grant_not_found")
    grant = issue(sqlite_broker)
    no_reason = sqlite_broker.post(f"/v1/grants/{grant.grant_id}/revoke", "human:root", json={})
    assert no_reason.status_code == 422


@pytest.mark.parametrize(("body", "narrowing"), [
    ({"agent": "agent:demo"}, {"aws:SourceIdentity": "agent.demo"}),
    ({"template": "test-s3-read"}, {"aws:PrincipalTag/broker-template": "test-s3-read"}),
    ({"role_arn": S3_ROLE}, None),
])
def test_revoke_all_writes_the_token_issue_time_deny(broker, body, narrowing):
    grants = [issue(broker), issue(broker)]
    answer = broker.post("/v1/revocations", "human:root", json={**body, "reason": "agent compromised"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["roles"] == [S3_ROLE]
    assert sorted(result["grants_revoked"]) == sorted(g.grant_id for g in grants)
    statement = read_deny_policy(broker.aws_endpoint)["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Action"] == "*"
    assert statement["Condition"]["DateLessThan"] == {KEY_TOKEN_ISSUE_TIME: result["issued_before"]}
    assert statement["Condition"].get("StringEquals") == narrowing
    event = next(e for e in broker.events() if e["type"] == "revoked_all")
    assert event["actor"] == "human:root" and event["details"]["issued_before"] == result["issued_before"]
    # Live grants are now revoked: the agent's live-grant budget is free again.
    with broker.container.database.transaction() as repo:
        now = broker.clock.now()
        assert repo.issuance_counts(agent="agent:demo", template="test-s3-read", since=now,
                                    now=now)["agent_live_grants"] == 0


@pytest.mark.parametrize(("principal", "body", "status", "code"), [
    ("human:alice", {"agent": "agent:demo"}, 200, None),           # accountable human, own agent
    ("human:alice", {"agent": "agent:other"}, 403, "not_allowed_to_revoke"),
    ("human:alice", {"template": "test-s3-read"}, 403, "not_allowed_to_revoke"),
    ("human:rita", {"agent": "agent:demo"}, 403, "not_allowed_to_revoke"),
    ("human:root", {"role_arn": "arn:aws:iam::123456789012:role/not-ours"}, 404, "role_not_managed"),
    ("human:root", {"agent": "agent:demo", "template": "test-s3-read"}, 422, "invalid_revoke_target"),
    ("human:root", {}, 422, "invalid_revoke_target"),
])
def test_who_may_revoke_everything(sqlite_broker, principal, body, status, code):
    issue(sqlite_broker)
    answer = sqlite_broker.post("/v1/revocations", principal, json={**body, "reason": "check"})
    assert answer.status_code == status, answer.text
    if code:
        assert answer.json()["error"]["code"] == code
        assert read_deny_policy(sqlite_broker.aws_endpoint) is None
    if status == 403:
        refused = [e for e in sqlite_broker.events() if e["type"] == "refused"]
        assert refused and refused[-1]["actor"] == principal and refused[-1]["reason_code"] == code


def test_revoke_and_revoke_all_share_one_policy(sqlite_broker):
    one = issue(sqlite_broker)
    sqlite_broker.post(f"/v1/grants/{one.grant_id}/revoke", "human:root", json={"reason": "a"})
    sqlite_broker.post("/v1/revocations", "human:root", json={"template": "test-s3-read", "reason": "b"})
    policy = read_deny_policy(sqlite_broker.aws_endpoint)
    # The revoke-all covers the session revoked before it: its entry is dropped (issue 22).
    assert [s["Sid"] for s in policy["Statement"]] == ["BrokerRevokeAllTemplate0"]
    sqlite_broker.clock.advance(2)
    two = issue(sqlite_broker)                      # issued after the cutoff: the revoke-all spares it
    sqlite_broker.post(f"/v1/grants/{two.grant_id}/revoke", "human:root", json={"reason": "c"})
    policy = read_deny_policy(sqlite_broker.aws_endpoint)
    sids = [s["Sid"] for s in policy["Statement"]]
    assert sids == ["BrokerRevokedGrants", "BrokerRevokedSessions", "BrokerRevokeAllTemplate0"]
    assert session_is_named(policy, grant_id=two.grant_id) and not session_is_named(policy, grant_id=one.grant_id)
