"""One person holding two principal ids (an API-key id and an OIDC ``sub``) counts once (issue 15, also seen).

Decided: the directory links the ids of one person with a group ``person:NAME`` on each of them.  Linked
ids count as one approver, and the linked ids of the human an agent acts for cannot approve that
agent's request.  Ids the directory does not link are different people: README, *Approvers*, states the
operator's rule (give every id of a person the same ``person:`` group).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import TEST_SCOPES, build_harness
from tests.security.conftest import add_api_key

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy hotfix 7"}


@pytest.fixture
def linked(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state")
    now = datetime.now(UTC)
    with harness.container.database.transaction() as repo:
        # bob's API-key id and his single-sign-on id; alice's (agent:demo acts for human:alice) likewise.
        repo.upsert_principal(principal_id="human:bob", roles=("approver",), groups=("sre", "person:bob"), now=now)
        repo.upsert_principal(principal_id="human:b0b@example.com", roles=("approver",),
                              groups=("sre", "person:bob"), now=now)
        repo.upsert_principal(principal_id="human:alice", roles=("approver",), groups=("person:alice",), now=now)
        repo.upsert_principal(principal_id="human:alice@example.com", roles=("approver",),
                              groups=("sre", "person:alice"), now=now)
    add_api_key(harness, "human:b0b@example.com", "human:b0b@example.com")
    add_api_key(harness, "human:alice@example.com", "human:alice@example.com")
    yield harness
    harness.container.database.engine.dispose()


def _decide(harness, request_id: str, who: str):
    return harness.post(f"/v1/requests/{request_id}/approvals", who,
                        json={"decision": "approve", "reason": "looked at the diff"})


def test_two_ids_of_one_person_count_once(linked):
    request_id = linked.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    assert _decide(linked, request_id, "human:bob").status_code == 200
    second = _decide(linked, request_id, "human:b0b@example.com")
    assert second.status_code == 409 and second.json()["error"]["code"] == "already_decided", second.text
    state = linked.get(f"/v1/requests/{request_id}", "human:rita").json()
    assert state["status"] == "pending"
    redeemed = linked.post(f"/v1/requests/{request_id}/credentials", "agent:demo")
    assert redeemed.status_code == 409 and redeemed.json()["error"]["code"] == "approval_pending"
    # A different person completes it.
    assert _decide(linked, request_id, "human:carol").json()["status"] == "approved"


def test_the_agents_human_under_another_id_cannot_approve(linked):
    request_id = linked.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    answer = _decide(linked, request_id, "human:alice@example.com")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "approver_is_principal_human", answer.text


def test_ids_linked_after_both_approved_count_once_at_redemption(linked):
    """bob approves under two ids the directory does not link yet; the link made before redemption counts."""
    now = datetime.now(UTC)
    with linked.container.database.transaction() as repo:
        repo.upsert_principal(principal_id="human:b0b@example.com", roles=("approver",), groups=("sre",), now=now)
    request_id = linked.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    assert _decide(linked, request_id, "human:bob").status_code == 200
    assert _decide(linked, request_id, "human:b0b@example.com").json()["status"] == "approved"
    with linked.container.database.transaction() as repo:
        repo.upsert_principal(principal_id="human:b0b@example.com", roles=("approver",),
                              groups=("sre", "person:bob"), now=now)
    redeemed = linked.post(f"/v1/requests/{request_id}/credentials", "agent:demo")
    assert redeemed.status_code == 409 and redeemed.json()["error"]["code"] == "approval_void", redeemed.text
    assert not [e for e in linked.events() if e["type"] == "issued"]
