"""Values bound to the caller's identity, through the real API: two OIDC agents of different workspaces each get
only their own workspace's resources in the session policy STS received (read back from moto)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO_SCOPES, build_harness, moto_sts_sessions
from tests.identity.jwt_factory import AUDIENCE, ISSUER, rsa_key, standard_claims

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/workspace-{}"
RESET = {"template": "workspace-reset", "parameters": {}, "reason": "reset my workspace for the test run"}
# The same scope, but a human co-signs it: the redemption re-derives the values from the redeeming caller.
APPROVED_RESET = """
name: workspace-reset-approved
description: The workspace reset with one co-signer.
environment: dev
role: "arn:aws:iam::123456789012:role/broker-target-workspace-reset"
destructive: true
identity:
  workspace: {source: claim:workspace, pattern: "^[a-z0-9-]{1,30}$",
              session_tag: {key: workspace, transitive: true}}
statements:
  - actions: ["dynamodb:DeleteTable"]
    resources: ["arn:aws:dynamodb:us-east-1:123456789012:table/workspace-{workspace}"]
requesters: ["agent:*"]
approval: {approvals: 1, approvers: ["group:sre"]}
"""


@pytest.fixture
def identity_broker(jwks_server, moto_server, tmp_path):  # noqa: F811
    signer = rsa_key("ws-key")
    jwks_server.serve_jwks(signer)
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_server.jwks_url, "algorithms": ["RS256"],
        "principal_claim": "sub", "principal_prefix": "agent:", "acts_for_claim": "act_for"}]))
    scopes = tmp_path / "scopes"
    scopes.mkdir()
    shutil.copy(REPO_SCOPES / "workspace-reset.yaml", scopes)
    (scopes / "workspace-reset-approved.yaml").write_text(APPROVED_RESET)
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=scopes,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                            oidc_issuers_file=issuers, dev_mode=True)
    yield harness, signer
    harness.container.database.engine.dispose()


def _token(signer, sub: str, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.sign(standard_claims(sub=sub, act_for='alice', **claims))}"}


def _sts_session(harness, access_key_id: str) -> dict:
    return next(s for s in moto_sts_sessions(harness.aws_endpoint) if s["access_key_id"] == access_key_id)


def test_two_agents_of_different_workspaces_each_get_only_their_own(identity_broker):
    harness, signer = identity_broker
    sent = {}
    for agent, workspace in (("agent-a", "ws-a"), ("agent-b", "ws-b")):
        response = harness.client.post("/v1/requests", json=RESET, headers=_token(signer, agent, workspace=workspace))
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["identity"] == {"workspace": workspace}
        # What STS received, read back from moto: the policy names this caller's table and no other.
        session = _sts_session(harness, body["credentials"]["access_key_id"])
        policy = json.loads(session["policy"])
        resources = [r for s in policy["Statement"] for r in s["Resource"]]
        assert resources == [TABLE.format(workspace)]
        assert session["policy"] == json.dumps(body["policy"], separators=(",", ":"))
        sent[agent] = session["policy"]
    assert "ws-b" not in sent["agent-a"] and "ws-a" not in sent["agent-b"]
    issued = [e for e in harness.events() if e["type"] == "issued"]
    assert [e["details"]["identity"] for e in issued] == [{"workspace": "ws-a"}, {"workspace": "ws-b"}]


def test_an_agent_cannot_name_another_workspace(identity_broker):
    harness, signer = identity_broker
    response = harness.client.post("/v1/requests", json={**RESET, "parameters": {"workspace": "ws-a"}},
                                   headers=_token(signer, "agent-b", workspace="ws-b"))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "identity_value_not_settable" and error["field"] == "parameters.workspace"
    refused = [e for e in harness.events() if e["type"] == "refused"]
    assert [e["reason_code"] for e in refused] == ["identity_value_not_settable"]


@pytest.mark.parametrize(("claims", "code"), [
    ({}, "identity_value_missing"),
    ({"workspace": "*"}, "identity_value_invalid"),
    ({"workspace": ["ws-a", "ws-b"]}, "identity_value_invalid"),
])
def test_a_caller_without_a_usable_claim_is_403_and_nothing_is_minted(identity_broker, claims, code):
    harness, signer = identity_broker
    before = len(moto_sts_sessions(harness.aws_endpoint))
    response = harness.client.post("/v1/requests", json=RESET, headers=_token(signer, "agent-c", **claims))
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == code
    assert len(moto_sts_sessions(harness.aws_endpoint)) == before
    assert harness.request_count() == 0
    # The refusal is logged with its code; the entry never carries the caller's claim.
    [refused] = [e for e in harness.events() if e["type"] == "refused"]
    assert refused["reason_code"] == code and refused["actor"] == "agent:agent-c"
    assert "ws-a" not in json.dumps(refused) and "ws-b" not in json.dumps(refused)


def test_an_api_key_agent_reads_its_directory_attribute(identity_broker):
    harness, _ = identity_broker
    # agent:other has no workspace attribute yet: refused, never a default.
    refused = harness.post("/v1/requests", "agent:other", json=RESET)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "identity_value_missing"
    with harness.container.database.transaction() as repo:
        row = repo.get_principal_entry("agent:other")
        repo.upsert_principal(principal_id="agent:other", roles=["agent"], acts_for=row.acts_for,
                              now=row.created_at, attributes={"workspace": "ws-d"})
    response = harness.post("/v1/requests", "agent:other", json=RESET)
    assert response.status_code == 201, response.text
    assert response.json()["policy"]["Statement"][0]["Resource"] == [TABLE.format("ws-d")]
    # broker dev's agents carry theirs (broker.runtime.devmode.DEV_ATTRIBUTES).
    demo = harness.post("/v1/requests", "agent:demo", json=RESET)
    assert demo.status_code == 201 and demo.json()["identity"] == {"workspace": "demo"}


def test_the_co_signed_scope_is_shown_as_the_callers_own_and_redeemed_with_the_same_identity(identity_broker):
    harness, signer = identity_broker
    body = {**RESET, "template": "workspace-reset-approved"}
    pending = harness.client.post("/v1/requests", json=body, headers=_token(signer, "agent-a", workspace="ws-a"))
    assert pending.status_code == 202, pending.text
    radius = pending.json()["blast_radius"]
    assert "only the caller's own workspace" in radius["headline"]
    assert radius["identity"]["workspace"].startswith("ws-a, the caller's own workspace")
    request_id = pending.json()["id"]
    # The approver's page says it too, and shows the bound value apart from the parameters.
    harness.client.get("/ui/sign-in")
    harness.client.post("/ui/sign-in", data={"key": harness.keys["human:bob"], "next": "/ui/requests",
                                             "csrf_token": harness.client.cookies.get("broker_ui_signin")})
    page = harness.client.get(f"/ui/requests/{request_id}")
    assert page.status_code == 200
    assert "only the caller&#39;s own workspace" in page.text or "only the caller's own workspace" in page.text
    assert 'id="identity"><code class="param">workspace=<strong>ws-a</strong></code>' in page.text
    approved = harness.post(f"/v1/requests/{request_id}/approvals", "human:bob",
                            json={"decision": "approve", "reason": "its own workspace only"})
    assert approved.status_code == 200, approved.text
    # A later token that says another workspace: the approvals were for ws-a, so nothing is minted.
    moved = harness.client.post(f"/v1/requests/{request_id}/credentials",
                                headers=_token(signer, "agent-a", workspace="ws-b"))
    assert moved.status_code == 409, moved.text
    assert moved.json()["error"]["code"] == "identity_changed"
    redeemed = harness.client.post(f"/v1/requests/{request_id}/credentials",
                                   headers=_token(signer, "agent-a", workspace="ws-a"))
    assert redeemed.status_code == 201, redeemed.text
    session = _sts_session(harness, redeemed.json()["credentials"]["access_key_id"])
    assert json.loads(session["policy"])["Statement"][0]["Resource"] == [TABLE.format("ws-a")]
    # moto does not record session tags: the request's stored tags are the plan's (what the minter sent).
    with harness.container.database.transaction() as repo:
        assert ("workspace", "ws-a") in repo.get_request(request_id).session_tags


def test_the_template_view_explains_the_callers_own(identity_broker):
    harness, _ = identity_broker
    view = harness.get("/v1/templates/workspace-reset", "agent:demo")
    assert view.status_code == 200, view.text
    text = json.dumps(view.json())
    assert "only the caller's own workspace" in text


def test_templates_without_identity_keep_their_version_digest():
    # Template keys are a contract: the new key is optional, and an earlier template's digest (which its owners
    # signed and the log recorded) does not change.
    from broker.storage.template_files import load_catalog

    catalog = load_catalog(REPO_SCOPES)
    assert catalog.get("s3-read-prefix").identity == {}
    assert catalog.get("s3-read-prefix").version_digest == \
        "sha256:3bd2082219f1fd36315a7abba8f173828073ae8c34e6dd9babc440dcb7d14031"
    assert catalog.get("prod-stack-recreate").version_digest == \
        "sha256:4b965bc2b8f783122a043e2c25b5893ba41931174863138d6c75bc3bd346178d"


def test_simulating_an_issued_grant_uses_the_identity_values_its_log_entry_recorded(identity_broker, tmp_path,
                                                                                    capsys):
    from broker.cli.main import main

    harness, _ = identity_broker
    issued = harness.post("/v1/requests", "agent:demo", json=RESET)     # broker dev's agent:demo: workspace demo
    assert issued.status_code == 201, issued.text
    export = harness.get("/v1/events/export", "human:rita")
    log = tmp_path / "log.jsonl"
    log.write_bytes(export.content)
    grant = issued.json()["grant"]["id"]
    base = ["scopes", "simulate", "--grant", grant, "--log", str(log), "--scopes", str(tmp_path / "scopes"),
            "--action", "dynamodb:DeleteTable", "--resource"]
    assert main([*base, TABLE.format("demo")]) == 0
    assert main([*base, TABLE.format("demo2")]) == 1
    capsys.readouterr()
