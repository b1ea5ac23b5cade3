"""Someone with write access to the database edits an approved request before it is redeemed (issue 15 item 2).

Two humans approved ``test-prod-ecs`` for ``checkout``.  Whatever is then changed in the stored row, STS
receives exactly the policy and role re-rendered from the template and parameters the approvals bind, or
nothing: a row that disagrees with that rendering is refused, the request ends ``failed`` with the code
``stored_request_altered`` and a ``failed`` entry in the log; a change to what the approvals bind
(parameters, TTL, template) voids them (``approval_void``).  moto's record of every session it minted
(``/moto-api/data.json``) shows what STS received.
"""

from __future__ import annotations

import json

import pytest
from sqlmodel import func, select

from broker.storage.models import GrantRow, RequestRow
from tests.conftest import moto_sts_sessions
from tests.security.attack_tally import record
from tests.security.conftest import reset_principals

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy hotfix 7"}
STAR = json.dumps({"Version": "2012-10-17", "Statement": [{"Sid": "S0", "Effect": "Allow", "Action": ["*"],
                                                             "Resource": ["*"]}]}, separators=(",", ":"))
ADMIN_ROLE = "arn:aws:iam::123456789012:role/broker-target-admin"


@pytest.fixture
def tamper(security_broker):
    yield security_broker
    reset_principals(security_broker)


def _approved(harness) -> dict:
    created = harness.post("/v1/requests", "agent:demo", json=PROD)
    assert created.status_code == 202, created.text
    request_id = created.json()["id"]
    for approver in ("human:bob", "human:carol"):
        answer = harness.post(f"/v1/requests/{request_id}/approvals", approver,
                              json={"decision": "approve", "reason": "looked at the diff"})
        assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "approved"
    return created.json()


def _edit(harness, request_id: str, **columns) -> None:
    with harness.container.database.transaction() as repo:
        row = repo.session.get(RequestRow, request_id)
        for name, value in columns.items():
            setattr(row, name, value)
        repo.session.add(row)


def _grants(harness, request_id: str) -> int:
    with harness.container.database.transaction() as repo:
        return int(repo.session.exec(select(func.count()).select_from(GrantRow)
                                     .where(GrantRow.request_id == request_id)).one())


def _entries(harness, request_id: str) -> list[dict]:
    return [e for e in harness.events() if e["request_id"] == request_id]


# What the stored row says that the approvals do not bind directly (derived from what they bind).
ALTERED = {
    "policy": {"policy": STAR},
    "role": {"role_arn": ADMIN_ROLE},
    "policy and its digest": {"policy": STAR, "policy_digest": "sha256:" + "0" * 64},
    "session tags": {"session_tags": json.dumps([["broker:agent", "agent:someone-else"]])},
    "source identity": {"source_identity": "human.root"},
    "session name": {"session_name": "innocent-looking-name"},
    "requester": {"requester": "agent:other"},
    "acts for": {"acts_for": "human:dave"},
    "grant id": {"grant_id": "00000000-0000-0000-0000-000000000000"},
    "binding digest": {"binding_digest": "sha256:" + "1" * 64},
    "parameters outside the template": {"parameters": json.dumps({"account": "123456789012", "service": "*"})},
    "ttl beyond the template": {"ttl_seconds": 43200},
    # Text that is no request's value at all: read as unreadable (broker.storage.records), never as a value.
    "session tags not JSON": {"session_tags": "[[\"broker:agent\", "},
    "parameters not an object": {"parameters": json.dumps(["service", "checkout"])},
    "session tag not a string": {"session_tags": json.dumps([["broker:agent", 1]])},
    "identity not JSON": {"identity": "{not json"},
}


@pytest.mark.parametrize("columns", list(ALTERED.values()), ids=list(ALTERED))
def test_an_altered_row_is_never_minted(tamper, columns):
    approved = _approved(tamper)
    rendered_policy = approved["policy"]
    _edit(tamper, approved["id"], **columns)
    before = moto_sts_sessions(tamper.aws_endpoint)

    redeemed = tamper.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo")

    if "requester" in columns:   # the row now names another agent: agent:demo no longer even sees it
        assert redeemed.status_code == 404, redeemed.text
    else:
        assert redeemed.status_code == 409, redeemed.text
        assert redeemed.json()["error"]["code"] in {"stored_request_altered", "approval_void"}, redeemed.text
    after = moto_sts_sessions(tamper.aws_endpoint)
    assert len(after) == len(before), "STS was called"
    assert all(json.loads(s["policy"] or "{}") != json.loads(STAR) for s in after)
    assert _grants(tamper, approved["id"]) == 0
    assert json.dumps(rendered_policy)  # what was approved stays what the log shows
    record("stored-row tampering: altered before redemption", refused=True)


@pytest.mark.parametrize("columns", [ALTERED["policy"], ALTERED["role"], ALTERED["session tags"],
                                     ALTERED["source identity"], ALTERED["session name"],
                                     ALTERED["session tags not JSON"], ALTERED["parameters not an object"],
                                     ALTERED["session tag not a string"], ALTERED["identity not JSON"]],
                         ids=["policy", "role", "session tags", "source identity", "session name",
                              "session tags not JSON", "parameters not an object", "session tag not a string",
                              "identity not JSON"])
def test_a_row_disagreeing_with_its_approved_rendering_fails_and_is_logged(tamper, columns):
    approved = _approved(tamper)
    _edit(tamper, approved["id"], **columns)

    redeemed = tamper.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo")

    assert redeemed.status_code == 409, redeemed.text
    assert redeemed.json()["error"]["code"] == "stored_request_altered"
    state = tamper.get(f"/v1/requests/{approved['id']}", "human:rita").json()
    assert state["status"] == "failed" and state["decided_reason"] == "stored_request_altered"
    kinds = [(e["type"], e["reason_code"]) for e in _entries(tamper, approved["id"])]
    assert ("failed", "stored_request_altered") in kinds and not any(k == "issued" for k, _ in kinds)
    failed = next(e for e in _entries(tamper, approved["id"]) if e["type"] == "failed")
    assert failed["policy_digest"] == approved["policy_digest"] and failed["details"]["altered"]
    # And a second try does not get further: the request is failed for good.
    again = tamper.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo")
    assert again.status_code == 409 and _grants(tamper, approved["id"]) == 0


def test_the_untouched_control_is_minted_with_the_rendered_policy_and_role(tamper):
    approved = _approved(tamper)
    redeemed = tamper.post(f"/v1/requests/{approved['id']}/credentials", "agent:demo")
    assert redeemed.status_code == 201, redeemed.text
    session = next(s for s in moto_sts_sessions(tamper.aws_endpoint)
                   if s["access_key_id"] == redeemed.json()["credentials"]["access_key_id"])
    assert json.loads(session["policy"]) == approved["policy"]
    assert session["role_arn"] == approved["role_arn"]


def test_sts_gets_the_plan_even_for_a_row_that_got_past_the_stored_row_check():
    """Below the stored-row check, minting reads the plan alone: handed a request whose policy and role text differ
    from its plan (an edit the check above had missed), STS still gets the policy and role rendered from the
    template.  (On fakes: through the API the check above refuses such a row first.)"""
    from dataclasses import replace

    from broker.domain.mint_plan import plan_mint
    from broker.usecases.caller import caller_identity
    from tests.usecases.fakes import AGENT, ask, world

    w = world()
    ask(w, "test-s3-read", {"prefix": "reports"})
    (row,) = w.store.state["requests"].values()
    template = w.service.catalog.get(row.template)
    plan = plan_mint(template, request_id=row.id, grant_id=row.grant_id, requester=row.requester,
                     acts_for=row.acts_for, parameters=row.parameters, ttl_seconds=row.ttl_seconds,
                     identity=caller_identity(AGENT))
    w.store.state["requests"][row.id] = replace(row, status="issuing")
    edited = replace(row, policy=STAR, role_arn=ADMIN_ROLE)

    w.service._mint_and_record(edited, template, plan, actor=AGENT.id)  # noqa: SLF001 - the step below the check

    order = w.minter.orders[-1]
    assert (order.policy_json, order.role_arn) == (plan.policy.json, plan.role_arn) == (row.policy, row.role_arn)
    assert order.policy_json != STAR
    record("stored-row tampering: minting reads the plan, not the row", refused=True)


# Text edited into values no request holds, column by column: what approvers and reviewers read still answers.
ODD = {
    "policy not JSON": {"policy": "{not json"},
    "parameter not a string": {"parameters": json.dumps({"service": 5})},
    "session tag not a string": {"session_tags": json.dumps([[1, "x"]])},
    "identity not an object": {"identity": json.dumps([1, 2])},
}


@pytest.mark.parametrize("columns", list(ODD.values()), ids=list(ODD))
def test_an_edited_pending_row_still_shows_to_approvers(tamper, columns):
    created = tamper.post("/v1/requests", "agent:demo", json=PROD)
    assert created.status_code == 202, created.text
    _edit(tamper, created.json()["id"], **columns)

    shown = tamper.get(f"/v1/requests/{created.json()['id']}", "human:bob")
    listed = tamper.get("/v1/requests?status=pending", "human:bob")

    assert shown.status_code == 200, shown.text
    assert listed.status_code == 200, listed.text
    assert created.json()["id"] in {r["id"] for r in listed.json()["requests"]}
    # Approving it binds to the stored digest: counted or not, the answer is an answer, never a 500.
    decided = tamper.post(f"/v1/requests/{created.json()['id']}/approvals", "human:bob",
                          json={"decision": "approve", "reason": "looked at it"})
    assert decided.status_code < 500, decided.text
