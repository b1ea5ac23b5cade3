"""Co-signing of production scopes end to end over the HTTP API, on SQLite and PostgreSQL, against moto."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import TEST_SCOPES, build_harness

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out checkout 1.2.3"}


def approve(broker, request_id: str, who: str, reason: str = "looks right", decision: str = "approve"):
    return broker.post(f"/v1/requests/{request_id}/approvals", who, json={"decision": decision, "reason": reason})


def redeem(broker, request_id: str, who: str = "agent:demo"):
    return broker.post(f"/v1/requests/{request_id}/credentials", who)


def open_pending(broker, parameters: dict | None = None) -> dict:
    response = broker.post("/v1/requests", "agent:demo",
                           json={**PROD, **({"parameters": parameters} if parameters else {})})
    assert response.status_code == 202, response.text
    return response.json()


def error_code(response) -> str:
    return response.json()["error"]["code"]


def request_events(broker, request_id: str) -> list[dict]:
    return [e for e in broker.events() if e.get("request_id") == request_id]


def test_acceptance_sequence(broker):
    pending = open_pending(broker)
    rid = pending["id"]
    assert pending["status"] == "pending"
    assert "credentials" not in pending
    assert pending["approvals_required"] == 2
    assert pending["links"]["page"].endswith(f"/ui/requests/{rid}")

    early = redeem(broker, rid)
    assert early.status_code == 409
    assert error_code(early) == "approval_pending"

    own_human = approve(broker, rid, "human:alice")
    assert own_human.status_code == 403
    assert error_code(own_human) == "approver_is_principal_human"

    first = approve(broker, rid, "human:bob")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "pending"
    assert first.json()["approvals_counted"] == 1

    again = approve(broker, rid, "human:bob", reason="once more")
    assert again.status_code == 409
    assert error_code(again) == "already_decided"
    seen = broker.get(f"/v1/requests/{rid}", "human:bob").json()
    assert seen["status"] == "pending"
    assert seen["approvals_counted"] == 1

    second = approve(broker, rid, "human:carol")
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "approved"
    assert second.json()["approvals_counted"] == 2
    assert second.json()["redeem_by"] is not None

    issued = redeem(broker, rid)
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["status"] == "issued"
    assert body["credentials"]["access_key_id"] == body["grant"]["access_key_id"]
    assert issued.headers["cache-control"] == "no-store"
    # The TTL starts at redemption: the grant expires ttl_seconds after it was issued, not after the request.
    assert body["grant"]["ttl_seconds"] == 900

    twice = redeem(broker, rid)
    assert twice.status_code == 409
    assert error_code(twice) == "request_already_redeemed"

    steps = [(e["type"], e["actor"], e.get("reason_code")) for e in request_events(broker, rid)]
    assert steps == [
        ("requested", "agent:demo", None),
        ("pending", "agent:demo", None),
        ("refused", "agent:demo", "approval_pending"),
        ("refused", "human:alice", "approver_is_principal_human"),
        ("cosigned", "human:bob", None),
        ("refused", "human:bob", "already_decided"),
        ("cosigned", "human:carol", None),
        ("approved", "human:carol", None),
        ("redeeming", "agent:demo", None),
        ("issued", "agent:demo", None),
        ("refused", "agent:demo", "request_already_redeemed"),
    ]
    approved = next(e for e in request_events(broker, rid) if e["type"] == "approved")
    assert [a["approver"] for a in approved["approvals"]] == ["human:bob", "human:carol"]
    assert {a["binding_digest"] for a in approved["approvals"]} == {pending["binding_digest"]}
    dump = json.dumps(broker.events())
    assert body["credentials"]["secret_access_key"] not in dump
    assert body["credentials"]["session_token"] not in dump


def test_pending_request_expires(broker):
    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "human:bob").status_code == 200
    broker.clock.advance(1800 + 1)
    late = approve(broker, rid, "human:carol")
    assert late.status_code == 409
    assert error_code(late) == "request_expired"
    # The expiry was committed even though the approval was refused.
    assert broker.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "expired"
    assert redeem(broker, rid).status_code == 409
    types = [e["type"] for e in request_events(broker, rid)]
    assert types.count("expired") == 1
    assert types.index("expired") < len(types) - 1  # refusals after it are logged too


def test_pending_request_is_still_open_just_before_its_deadline(broker):
    rid = open_pending(broker)["id"]
    broker.clock.advance(1800 - 1)
    assert approve(broker, rid, "human:bob").status_code == 200


def test_approved_request_not_redeemed_in_time_expires(broker):
    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "human:bob").status_code == 200
    assert approve(broker, rid, "human:carol").json()["status"] == "approved"
    broker.clock.advance(600 + 1)
    late = redeem(broker, rid)
    assert late.status_code == 409
    assert error_code(late) == "request_expired"
    view = broker.get(f"/v1/requests/{rid}", "agent:demo").json()
    assert view["status"] == "expired"
    expired = [e for e in request_events(broker, rid) if e["type"] == "expired"]
    assert len(expired) == 1 and expired[0]["details"]["was"] == "approved"


def test_sweep_expires_stale_requests(broker):
    rid = open_pending(broker)["id"]
    broker.clock.advance(1800 + 1)
    assert broker.container.service.expire_stale() == 1
    assert broker.container.service.expire_stale() == 0
    assert broker.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "expired"
    listed = broker.get("/v1/requests", "human:bob").json()["requests"]
    assert rid not in {r["id"] for r in listed}


def test_deny_with_reason_ends_the_request(broker):
    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "human:bob").status_code == 200
    denied = approve(broker, rid, "human:carol", reason="not during the freeze", decision="deny")
    assert denied.status_code == 200, denied.text
    assert denied.json()["status"] == "denied"
    assert denied.json()["decided_reason"] == "not during the freeze"
    assert error_code(redeem(broker, rid)) == "request_denied"
    assert error_code(approve(broker, rid, "human:dave")) in {"request_denied", "not_an_approver"}
    event = next(e for e in request_events(broker, rid) if e["type"] == "denied")
    assert event["actor"] == "human:carol"
    assert event["details"]["reason"] == "not during the freeze"


def test_the_agents_own_human_may_veto_but_not_approve(broker):
    rid = open_pending(broker)["id"]
    assert error_code(approve(broker, rid, "human:alice")) == "approver_is_principal_human"
    vetoed = approve(broker, rid, "human:alice", reason="absolutely not", decision="deny")
    assert vetoed.status_code == 200, vetoed.text
    assert vetoed.json()["status"] == "denied"
    assert error_code(approve(broker, rid, "human:bob")) == "request_denied"
    assert error_code(redeem(broker, rid)) == "request_denied"
    denied = [e for e in request_events(broker, rid) if e["type"] == "denied"]
    assert len(denied) == 1 and denied[0]["actor"] == "human:alice"


def test_the_requesting_agent_cannot_deny_it_cancels(broker):
    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "agent:demo", decision="deny").status_code == 403


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1001, "bad\x00byte"])
def test_a_decision_needs_a_real_reason(broker, reason):
    rid = open_pending(broker)["id"]
    response = approve(broker, rid, "human:bob", reason=reason)
    assert response.status_code == 422
    assert broker.get(f"/v1/requests/{rid}", "human:bob").json()["approvals"] == []


@pytest.mark.parametrize("decision", ["APPROVE", "yes", "approve ", "", "override"])
def test_unknown_decisions_are_refused(broker, decision):
    rid = open_pending(broker)["id"]
    response = approve(broker, rid, "human:bob", decision=decision)
    assert response.status_code == 422


def test_requester_cancels(broker):
    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "human:bob").status_code == 200
    stranger = broker.post(f"/v1/requests/{rid}/cancel", "human:carol")
    assert stranger.status_code == 403
    cancelled = broker.post(f"/v1/requests/{rid}/cancel", "agent:demo")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert error_code(approve(broker, rid, "human:carol")) == "request_cancelled"
    assert error_code(redeem(broker, rid)) == "request_cancelled"
    assert broker.post(f"/v1/requests/{rid}/cancel", "agent:demo").status_code == 409
    assert "cancelled" in [e["type"] for e in request_events(broker, rid)]


def test_cancel_after_expiry_is_refused_and_expiry_is_kept(broker):
    rid = open_pending(broker)["id"]
    broker.clock.advance(1800 + 1)
    response = broker.post(f"/v1/requests/{rid}/cancel", "agent:demo")
    assert response.status_code == 409
    assert error_code(response) == "request_expired"
    assert broker.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "expired"


@pytest.mark.parametrize(("who", "status", "code"), [
    ("human:dave", 403, "not_an_approver"),      # an approver, but not in group sre
    ("human:rita", 403, "not_an_approver"),      # a reviewer
    ("agent:demo", 403, "not_an_approver"),      # the requester itself
    ("agent:other", 404, "request_not_found"),   # another agent cannot even see it
])
def test_only_the_templates_approvers_may_cosign(broker, who, status, code):
    rid = open_pending(broker)["id"]
    response = approve(broker, rid, who)
    assert response.status_code == status
    assert error_code(response) == code
    assert broker.get(f"/v1/requests/{rid}", "human:bob").json()["approvals"] == []


def test_an_approval_is_not_usable_on_another_request(broker):
    checkout = open_pending(broker, {"service": "checkout"})
    billing = open_pending(broker, {"service": "billing"})
    assert checkout["binding_digest"] != billing["binding_digest"]
    for who in ("human:bob", "human:carol"):
        assert approve(broker, checkout["id"], who).status_code == 200
    assert error_code(redeem(broker, billing["id"])) == "approval_pending"

    # Even copied into the other request's rows, the checkout approvals do not count for billing.
    from datetime import UTC, datetime

    from broker.domain.records import Approval

    with broker.container.database.transaction() as repo:
        for who in ("human:bob", "human:carol"):
            repo.add_approval(Approval(request_id=billing["id"], approver=who, decision="approve",
                                       binding_digest=checkout["binding_digest"], reason="copied",
                                       created_at=datetime.now(UTC)))
    assert error_code(redeem(broker, billing["id"])) == "approval_pending"
    view = broker.get(f"/v1/requests/{billing['id']}", "human:bob").json()
    assert view["status"] == "pending"
    assert view["approvals_counted"] == 0


def test_forged_approvals_with_another_binding_do_not_count_towards_approval(broker):
    checkout = open_pending(broker, {"service": "checkout"})
    billing = open_pending(broker, {"service": "billing"})
    from datetime import UTC, datetime

    from broker.domain.records import Approval

    with broker.container.database.transaction() as repo:
        repo.add_approval(Approval(request_id=billing["id"], approver="human:bob", decision="approve",
                                   binding_digest=checkout["binding_digest"], reason="copied",
                                   created_at=datetime.now(UTC)))
    after = approve(broker, billing["id"], "human:carol")
    assert after.status_code == 200
    assert after.json()["status"] == "pending"
    assert after.json()["approvals_counted"] == 1


def test_removed_approver_no_longer_counts_at_redemption(broker):
    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "human:bob").status_code == 200
    assert approve(broker, rid, "human:carol").json()["status"] == "approved"
    with broker.container.database.transaction() as repo:
        assert repo.disable_principal("human:bob")
    response = redeem(broker, rid)
    assert response.status_code == 409
    assert error_code(response) == "approval_void"
    assert broker.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "approved"
    refused = [e for e in request_events(broker, rid) if e["type"] == "refused"]
    assert refused[-1]["reason_code"] == "approval_void"
    assert "issued" not in [e["type"] for e in request_events(broker, rid)]


def test_approver_moved_out_of_the_group_no_longer_counts(broker):
    from datetime import UTC, datetime

    rid = open_pending(broker)["id"]
    assert approve(broker, rid, "human:bob").status_code == 200
    assert approve(broker, rid, "human:carol").json()["status"] == "approved"
    with broker.container.database.transaction() as repo:
        repo.upsert_principal(principal_id="human:carol", roles=["approver"], groups=["dba"],
                              now=datetime.now(UTC))
    assert error_code(redeem(broker, rid)) == "approval_void"


@pytest.fixture
def editable_scopes(tmp_path):
    scopes = tmp_path / "scopes"
    shutil.copytree(TEST_SCOPES, scopes)
    return scopes


@pytest.mark.parametrize("edit", [
    lambda text: text.replace("ecs:UpdateService, ecs:DescribeServices", "ecs:UpdateService, ecs:DescribeServices,"
                              " ecs:ListServices"),
    lambda text: text.replace("ttl: {default: 900, max: 900}", "ttl: {default: 900, max: 1800}"),
    lambda text: text.replace("Update one ECS service in production.", "Update one ECS service (edited)."),
], ids=["actions", "ttl", "description"])
def test_template_edited_after_approval_voids_it(db_url, moto_server, tmp_path, editable_scopes, edit):
    harness = build_harness(db_url=db_url, scopes=editable_scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    try:
        rid = open_pending(harness)["id"]
        assert approve(harness, rid, "human:bob").status_code == 200
        assert approve(harness, rid, "human:carol").json()["status"] == "approved"
    finally:
        harness.container.database.engine.dispose()
    path = editable_scopes / "prod-ecs.yaml"
    edited = edit(path.read_text())
    assert edited != path.read_text()
    path.write_text(edited)

    rebuilt = build_harness(db_url=db_url, scopes=editable_scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    try:
        assert rebuilt.keys == harness.keys
        response = redeem(rebuilt, rid)
        assert response.status_code == 409, response.text
        assert error_code(response) == "approval_void"
        assert "issued" not in [e["type"] for e in request_events(rebuilt, rid)]
    finally:
        rebuilt.container.database.engine.dispose()


def test_unedited_template_after_rebuild_still_redeems(db_url, moto_server, tmp_path, editable_scopes):
    """The control for the test above: a rebuild alone does not void anything."""
    harness = build_harness(db_url=db_url, scopes=editable_scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    rid = open_pending(harness)["id"]
    assert approve(harness, rid, "human:bob").status_code == 200
    assert approve(harness, rid, "human:carol").status_code == 200
    harness.container.database.engine.dispose()
    rebuilt = build_harness(db_url=db_url, scopes=editable_scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    try:
        assert redeem(rebuilt, rid).status_code == 201
    finally:
        rebuilt.container.database.engine.dispose()


def test_only_the_requesting_agent_redeems(broker):
    rid = open_pending(broker)["id"]
    for who in ("human:bob", "human:carol"):
        assert approve(broker, rid, who).status_code == 200
    for who in ("human:bob", "human:alice"):
        response = redeem(broker, rid, who)
        assert response.status_code == 403
        assert error_code(response) == "not_requester"
    assert redeem(broker, rid, "agent:other").status_code == 404
    assert redeem(broker, rid).status_code == 201


def test_pending_list_is_for_approvers(broker):
    rid = open_pending(broker)["id"]
    listed = broker.get("/v1/requests", "human:bob")
    assert listed.status_code == 200
    entry = next(r for r in listed.json()["requests"] if r["id"] == rid)
    assert entry["requester"] == "agent:demo" and entry["acts_for"] == "human:alice"
    assert entry["blast_radius"]
    assert broker.get("/v1/requests", "agent:demo").status_code == 403


def test_approving_a_request_whose_template_changed_is_refused(db_url, moto_server, tmp_path, editable_scopes):
    harness = build_harness(db_url=db_url, scopes=editable_scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    rid = open_pending(harness)["id"]
    harness.container.database.engine.dispose()
    path = editable_scopes / "prod-ecs.yaml"
    path.write_text(path.read_text().replace("ttl: {default: 900, max: 900}", "ttl: {default: 900, max: 1800}"))
    rebuilt = build_harness(db_url=db_url, scopes=editable_scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    try:
        response = approve(rebuilt, rid, "human:bob")
        assert response.status_code == 409
        assert error_code(response) == "template_changed"
        assert rebuilt.get(f"/v1/requests/{rid}", "human:bob").json()["approvals"] == []
    finally:
        rebuilt.container.database.engine.dispose()
