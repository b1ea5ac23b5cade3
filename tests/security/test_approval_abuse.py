"""Approval abuse against the real API, on ``test-prod-ecs`` (two approvals from group:sre).

Attacks on the two-person rule: self-approval, approval by the agent's own human, one human
counted twice (same key, or two keys), an approval replayed onto another request, approval
after expiry, an approver removed after approving, principals with the wrong roles (an agent
holding the approver role, an admin who is not an approver), redemption races and redemption
by someone else.  Each must be refused, and must leave the request unapproved / unissued.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlmodel import func, select

from broker.domain.records import Approval
from broker.storage.models import GrantRow, RequestRow
from tests.conftest import moto_sts_sessions
from tests.security.attack_tally import record
from tests.security.conftest import reset_principals

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy hotfix 7"}


@pytest.fixture
def abuse(security_broker):
    """The shared broker (see conftest: extra principals, bob's second key); principals reset after."""
    yield security_broker
    reset_principals(security_broker)


def _open(harness, who: str = "agent:demo", **overrides) -> dict:
    response = harness.post("/v1/requests", who, json={**PROD, **overrides})
    assert response.status_code == 202, response.text
    return response.json()


def _decide(harness, request_id: str, who: str, decision: str = "approve"):
    return harness.post(f"/v1/requests/{request_id}/approvals", who,
                        json={"decision": decision, "reason": "looked at the diff"})


def _state(harness, request_id: str) -> dict:
    response = harness.get(f"/v1/requests/{request_id}", "human:rita")
    assert response.status_code == 200, response.text
    return response.json()


def _grants(harness, request_id: str) -> int:
    with harness.container.database.transaction() as repo:
        return int(repo.session.exec(select(func.count()).select_from(GrantRow)
                                     .where(GrantRow.request_id == request_id)).one())


def _approved(harness, who: str = "agent:demo") -> dict:
    created = _open(harness, who)
    assert _decide(harness, created["id"], "human:bob").status_code == 200
    second = _decide(harness, created["id"], "human:carol")
    assert second.status_code == 200 and second.json()["status"] == "approved", second.text
    return created


def _refused(response, status: int, code: str, attack: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    record(f"approval abuse: {attack}", refused=True)


# ----------------------------------------------------------------------------- who may co-sign
@pytest.mark.parametrize(("requester", "approver", "status", "code"), [
    ("agent:selfish", "agent:selfish", 403, "self_approval"),
    ("agent:demo", "human:alice", 403, "approver_is_principal_human"),      # the agent's own human
    ("agent:other", "human:bob", 403, "approver_is_principal_human"),
    ("agent:demo", "agent:sneaky", 403, "agent_cannot_approve"),             # an agent with the approver role
    ("agent:demo", "human:boss", 403, "not_an_approver"),                    # admin in sre, not an approver
    ("agent:demo", "human:root", 403, "not_an_approver"),                    # admin
    ("agent:demo", "human:dave", 403, "not_an_approver"),                    # approver outside group sre
    ("agent:demo", "human:rita", 403, "not_an_approver"),                    # reviewer
    ("agent:demo", "agent:other", 404, "request_not_found"),                 # another agent cannot even see it
], ids=["self", "agents_human", "other_agents_human", "agent_with_approver_role", "admin_in_group", "admin",
        "approver_wrong_group", "reviewer", "other_agent"])
def test_who_may_not_cosign(abuse, requester, approver, status, code):
    created = _open(abuse, requester)
    _refused(_decide(abuse, created["id"], approver), status, code, "ineligible co-signer")
    state = _state(abuse, created["id"])
    assert state["status"] == "pending" and state["approvals"] == []


def test_control_two_eligible_humans_approve(abuse):
    """Positive control: the refusals above are about who signs, not a broken flow."""
    created = _approved(abuse)
    redeemed = abuse.post(f"/v1/requests/{created['id']}/credentials", "agent:demo")
    assert redeemed.status_code == 201, redeemed.text


# ----------------------------------------------------------------------------- double counting
@pytest.mark.parametrize(("first", "second"), [
    ("human:bob", "human:bob"),          # same key twice
    ("human:bob", "human:bob#2"),        # same human, another API key
], ids=["same_key", "second_key"])
@pytest.mark.parametrize("second_decision", ["approve", "deny"])
def test_one_human_counts_once(abuse, first, second, second_decision):
    created = _open(abuse)
    assert _decide(abuse, created["id"], first).status_code == 200
    _refused(_decide(abuse, created["id"], second, second_decision), 409, "already_decided", "double counting")
    state = _state(abuse, created["id"])
    assert state["status"] == "pending"
    assert state["approvals_counted"] == 1 and len(state["approvals"]) == 1
    assert abuse.post(f"/v1/requests/{created['id']}/credentials", "agent:demo").json()["error"]["code"] == \
        "approval_pending"


# ----------------------------------------------------------------------------- replay
def test_approvals_of_one_request_do_not_count_for_another(abuse):
    approved = _approved(abuse)
    other = _open(abuse, parameters={"service": "billing"})
    assert other["binding_digest"] != approved["binding_digest"]
    # Replay bob's signed approval of A onto B, as a row in the database (what an attacker with
    # write access to the approvals table, or a bug mixing ids, would produce).
    with abuse.container.database.transaction() as repo:
        original = next(a for a in repo.approvals_for(approved["id"]) if a.approver == "human:bob")
        repo.add_approval(Approval(request_id=other["id"], approver=original.approver, decision=original.decision,
                                   binding_digest=original.binding_digest, reason=original.reason,
                                   created_at=original.created_at))
    assert _state(abuse, other["id"])["approvals_counted"] == 0
    # carol's genuine approval is then the only one that counts: B stays pending
    response = _decide(abuse, other["id"], "human:carol")
    assert response.status_code == 200 and response.json()["status"] == "pending", response.text
    _refused(abuse.post(f"/v1/requests/{other['id']}/credentials", "agent:demo"), 409, "approval_pending",
             "approval replay")
    assert _state(abuse, other["id"])["status"] == "pending"
    with abuse.container.database.transaction() as repo:
        rows = repo.approvals_for(other["id"])
    assert {(a.approver, a.binding_digest == other["binding_digest"]) for a in rows} == {
        ("human:bob", False), ("human:carol", True)}


def test_parameters_changed_after_approval_void_it(abuse):
    approved = _approved(abuse)
    with abuse.container.database.transaction() as repo:
        row = repo.session.get(RequestRow, approved["id"])
        row.parameters = '{"account": "444455556666", "service": "billing"}'
        repo.session.add(row)
    before = len(moto_sts_sessions(abuse.aws_endpoint))
    _refused(abuse.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo"), 409, "approval_void",
             "approval replay")
    assert _grants(abuse, approved["id"]) == 0 and len(moto_sts_sessions(abuse.aws_endpoint)) == before


# ----------------------------------------------------------------------------- expiry and removal
def test_approval_after_the_wait_expired_is_refused(abuse):
    created = _open(abuse)
    assert _decide(abuse, created["id"], "human:bob").status_code == 200
    abuse.clock.advance(1801)
    _refused(_decide(abuse, created["id"], "human:carol"), 409, "request_expired", "approval after expiry")
    assert _state(abuse, created["id"])["status"] == "expired"


def test_redemption_after_the_redeem_window_is_refused(abuse):
    approved = _approved(abuse)
    abuse.clock.advance(601)
    _refused(abuse.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo"), 409, "request_expired",
             "approval after expiry")
    assert _grants(abuse, approved["id"]) == 0


@pytest.mark.parametrize("removal", ["disabled", "left_group", "lost_approver_role"])
def test_removed_approver_voids_the_approval(abuse, removal):
    approved = _approved(abuse)
    with abuse.container.database.transaction() as repo:
        if removal == "disabled":
            assert repo.disable_principal("human:carol")
        else:
            repo.upsert_principal(principal_id="human:carol",
                                  roles=["approver"] if removal == "left_group" else ["reviewer"],
                                  groups=[] if removal == "left_group" else ["sre"], now=datetime.now(UTC))
    before = len(moto_sts_sessions(abuse.aws_endpoint))
    _refused(abuse.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo"), 409, "approval_void",
             "removed approver")
    assert _grants(abuse, approved["id"]) == 0 and len(moto_sts_sessions(abuse.aws_endpoint)) == before


# ----------------------------------------------------------------------------- redemption
@pytest.mark.parametrize(("who", "status", "code"), [
    ("human:alice", 403, "not_requester"),     # the agent's own human
    ("human:bob", 403, "not_requester"),       # an approver of this very request
    ("human:root", 403, "not_requester"),      # admin
    ("agent:selfish", 403, "not_requester"),   # another agent that can see the request (approver role)
    ("agent:other", 404, "request_not_found"),
])
def test_only_the_requesting_agent_redeems(abuse, who, status, code):
    approved = _approved(abuse)
    _refused(abuse.post(f"/v1/requests/{approved['id']}/credentials", who), status, code, "redeem by another")
    assert _state(abuse, approved["id"])["status"] == "approved" and _grants(abuse, approved["id"]) == 0


def test_redemption_race_issues_exactly_once(abuse):
    approved = _approved(abuse)
    sessions_before = len(moto_sts_sessions(abuse.aws_endpoint))
    barrier = threading.Barrier(20)
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def redeem() -> None:
        barrier.wait()
        response = abuse.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo")
        with lock:
            results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=redeem) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 20
    statuses = sorted(status for status, _ in results)
    assert statuses.count(201) == 1, statuses
    losers = [body["error"]["code"] for status, body in results if status != 201]
    assert all(status == 409 for status in statuses if status != 201), results
    assert set(losers) <= {"request_already_redeemed"}, losers
    for _ in losers:
        record("approval abuse: redemption race", refused=True)
    assert _grants(abuse, approved["id"]) == 1
    assert len(moto_sts_sessions(abuse.aws_endpoint)) == sessions_before + 1
    assert [e["type"] for e in abuse.events() if e["request_id"] == approved["id"]].count("issued") == 1
