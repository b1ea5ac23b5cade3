"""`GET /v1/events/report` (`broker audit report`) on a known log: every count pinned.

Each request counts once (approved, pending, denied), co-signatures are counted apart, approvers are
counted as approvers (never as agent rows), and destructive and high-risk grants are listed from
what their ``issued`` entries say.  SQLite and PostgreSQL, against moto.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import TEST_SCOPES, build_harness

STACK_TEMPLATE = """
name: test-prod-stack
description: Delete and recreate one stack in production.
environment: production
role: "arn:aws:iam::444455556666:role/broker-target-test-stack"
destructive: true
parameters:
  stack_name: {type: string, enum: ["cost-explorer-api", "billing-api"]}
statements:
  - actions: ["cloudformation:DeleteStack", "cloudformation:CreateStack", "cloudformation:DescribeStacks"]
    resources: ["arn:aws:cloudformation:us-east-1:444455556666:stack/{stack_name}/*"]
ttl: {default: 900, max: 900}
requesters: ["agent:*"]
approval: {approvals: 2, approvers: ["group:sre"], expires_after: 1800, redeem_within: 600}
"""
STACK = {"template": "test-prod-stack", "parameters": {"stack_name": "cost-explorer-api"}, "reason": "recreate"}
ECS = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out 1.2.3"}
S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}


@pytest.fixture
def broker(db_url, moto_server, tmp_path):
    scopes = tmp_path / "scopes"
    shutil.copytree(TEST_SCOPES, scopes)
    (scopes / "stack.yaml").write_text(STACK_TEMPLATE)
    harness = build_harness(db_url=db_url, scopes=scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state")
    yield harness
    harness.container.database.engine.dispose()


def ask(broker, agent: str, payload: dict) -> str:
    response = broker.post("/v1/requests", agent, json=payload)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def decide(broker, request_id: str, who: str, decision: str = "approve", status: int = 200) -> None:
    response = broker.post(f"/v1/requests/{request_id}/approvals", who, json={"decision": decision, "reason": "ok"})
    assert response.status_code == status, response.text


def approved_and_redeemed(broker, agent: str, payload: dict, *, wait: float) -> None:
    request_id = ask(broker, agent, payload)
    decide(broker, request_id, "human:bob")
    broker.clock.advance(wait)
    decide(broker, request_id, "human:carol")
    assert broker.post(f"/v1/requests/{request_id}/credentials", agent).status_code == 201


def test_each_count_of_the_report_on_a_known_log(broker):
    approved_and_redeemed(broker, "agent:demo", STACK, wait=60)          # destructive, production
    approved_and_redeemed(broker, "agent:demo", STACK, wait=180)         # destructive, production
    approved_and_redeemed(broker, "agent:demo", ECS, wait=30)            # production (high risk)
    denied = ask(broker, "agent:demo", ECS)
    decide(broker, denied, "human:alice", status=403)                    # the agent's own human: refused
    decide(broker, denied, "human:carol", "deny")
    waiting = ask(broker, "agent:other", ECS)                            # agent:other acts for bob
    decide(broker, waiting, "human:alice")                               # 1 of 2: still pending
    assert broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201  # dev, no risk

    response = broker.get("/v1/events/report", "human:rita", params={"since": "7d"})
    assert response.status_code == 200, response.text
    report = response.json()

    rows = {(r["agent"], r["template"]): r for r in report["by_agent_and_template"]}
    assert set(rows) == {("agent:demo", "test-prod-stack"), ("agent:demo", "test-prod-ecs"),
                         ("agent:other", "test-prod-ecs"), ("agent:demo", "test-s3-read")}
    counted = ("issued", "approvals", "cosignatures", "denied", "pending", "refused")
    assert {key: tuple(row[c] for c in counted) for key, row in rows.items()} == {
        ("agent:demo", "test-prod-stack"): (2, 2, 4, 0, 0, 0),
        ("agent:demo", "test-prod-ecs"): (1, 1, 2, 1, 0, 0),
        ("agent:other", "test-prod-ecs"): (0, 0, 1, 0, 1, 0),
        ("agent:demo", "test-s3-read"): (1, 0, 0, 0, 0, 0),
    }
    assert sum(r["approvals"] for r in rows.values()) == 3 and sum(r["pending"] for r in rows.values()) == 1
    assert rows[("agent:demo", "test-prod-stack")]["median_time_to_approve_seconds"] == pytest.approx(120)

    assert report["approvers"] == [
        {"approver": "human:alice", "approved": 1, "denied": 0, "refused": 1},
        {"approver": "human:bob", "approved": 3, "denied": 0, "refused": 0},
        {"approver": "human:carol", "approved": 3, "denied": 1, "refused": 0},
    ]
    destructive = report["destructive_grants"]
    assert [(g["template"], g["actor"], g["environment"]) for g in destructive] == [
        ("test-prod-stack", "agent:demo", "production")] * 2
    assert all("destructive" in g["risks"] and g["access_key_id"].startswith("ASIA") for g in destructive)
    assert [(g["template"], g["environment"], g["risks"]) for g in report["high_risk_grants"]] == [
        ("test-prod-ecs", "production", ["production-traffic"])]
    # The approver's refused decision is a refusal in the log (and the report's list), not the agent's.
    assert [(r["actor"], r["reason_code"]) for r in report["refusals"]] == [
        ("human:alice", "approver_is_principal_human")]


def test_the_risky_grants_chart_links_to_exactly_its_grants(broker):
    """The dashboard's destructive and high-risk grants link to ``GET /v1/events?type=issued&risk=risky``,
    which lists exactly them; ``risk=destructive`` lists the report's destructive grants; a bad value is a 422."""
    from urllib.parse import parse_qsl, urlsplit

    from broker.domain.principals import Principal, Role

    approved_and_redeemed(broker, "agent:demo", STACK, wait=60)          # destructive, production
    approved_and_redeemed(broker, "agent:demo", ECS, wait=30)            # production (high risk)
    for _ in range(2):
        assert broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201  # dev, no risk
    figures = broker.container.review.figures(principal=Principal(id="human:rita", roles=frozenset({Role.REVIEWER})),
                                              range_name="7d", parts=["risky_grants"])
    link = urlsplit(figures.events_link(type="issued", risk="risky"))
    listed = broker.get(link.path, "human:rita", params=dict(parse_qsl(link.query)))
    assert listed.status_code == 200, listed.text
    assert figures.risky_total == 2
    assert [e["seq"] for e in listed.json()["events"]] == sorted(g["seq"] for g in figures.risky_grants)
    everything = broker.get("/v1/events", "human:rita", params={"type": "issued"}).json()["events"]
    assert len(everything) == 4  # the filter leaves the dev grants out

    report = broker.get("/v1/events/report", "human:rita", params={"since": "7d"}).json()
    destructive = broker.get("/v1/events", "human:rita", params={"type": "issued", "risk": "destructive"})
    assert [e["seq"] for e in destructive.json()["events"]] == [g["seq"] for g in report["destructive_grants"]]
    assert len(report["destructive_grants"]) == 1

    bad = broker.get("/v1/events", "human:rita", params={"risk": "scary"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_risk"
