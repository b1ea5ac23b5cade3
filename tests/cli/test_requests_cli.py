"""``broker requests pending|show``, ``broker approve|deny`` against a real broker over HTTP."""

from __future__ import annotations

import json
import socket

import pytest

from broker.cli.main import main
from tests.live_server import serve

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out checkout 1.2.3"}


@pytest.fixture
def live(sqlite_broker):
    with serve(sqlite_broker.client.app) as server:
        yield sqlite_broker, server


def run(capsys, server, harness, who: str | None, *argv: str) -> tuple[int, str, str]:
    auth = ["--url", server.url] + (["--token", harness.keys[who]] if who else [])
    code = main([*argv, *auth])
    out, err = capsys.readouterr()
    return code, out, err


def pending_id(harness) -> str:
    response = harness.post("/v1/requests", "agent:demo", json=PROD)
    assert response.status_code == 202
    return response.json()["id"]


def test_pending_lists_the_request(live, capsys):
    harness, server = live
    code, out, _ = run(capsys, server, harness, "human:bob", "requests", "pending")
    assert code == 0 and "No requests are waiting" in out
    rid = pending_id(harness)
    code, out, _ = run(capsys, server, harness, "human:bob", "requests", "pending")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["ID", "TEMPLATE", "ENV"]
    assert rid in row and "agent:demo" in row and "human:alice" in row and "0/2" in row
    code, out, _ = run(capsys, server, harness, "human:bob", "requests", "pending", "--format", "json")
    assert [r["id"] for r in json.loads(out)["requests"]] == [rid]


def test_show_has_blast_radius_and_exact_policy(live, capsys):
    harness, server = live
    rid = pending_id(harness)
    code, out, _ = run(capsys, server, harness, "human:bob", "requests", "show", rid)
    assert code == 0
    assert "Acts for:" in out and "human:alice" in out
    assert "roll out checkout 1.2.3" in out
    assert "Can update service on ECS service checkout" in out
    policy_text = out.split("Session policy (exactly what would be minted):\n", 1)[1]
    api_view = harness.get(f"/v1/requests/{rid}", "human:bob").json()
    assert json.loads(policy_text) == api_view["policy"]
    code, out, _ = run(capsys, server, harness, "human:bob", "requests", "show", rid, "--format", "json")
    assert json.loads(out)["binding_digest"] == api_view["binding_digest"]


def test_two_approvals_from_the_cli_approve_the_request(live, capsys):
    harness, server = live
    rid = pending_id(harness)
    code, out, _ = run(capsys, server, harness, "human:bob", "approve", rid, "--reason", "change ticket 7")
    assert code == 0 and "Status: pending" in out and "1 of 2" in out
    code, out, _ = run(capsys, server, harness, "human:carol", "approve", rid, "--reason", "ok", "--format", "json")
    assert code == 0 and json.loads(out)["status"] == "approved"
    assert harness.post(f"/v1/requests/{rid}/credentials", "agent:demo").status_code == 201
    reasons = [a["reason"] for a in harness.get(f"/v1/requests/{rid}", "human:bob").json()["approvals"]]
    assert reasons == ["change ticket 7", "ok"]


def test_deny_records_the_reason(live, capsys):
    harness, server = live
    rid = pending_id(harness)
    code, out, _ = run(capsys, server, harness, "human:carol", "deny", rid, "--reason", "freeze week")
    assert code == 0 and "Status: denied" in out
    assert harness.get(f"/v1/requests/{rid}", "agent:demo").json()["decided_reason"] == "freeze week"


@pytest.mark.parametrize(("who", "argv", "code"), [
    ("human:alice", ["approve", "{rid}", "--reason", "mine"], "approver_is_principal_human"),
    ("human:dave", ["approve", "{rid}", "--reason", "x"], "not_an_approver"),
    ("human:bob", ["requests", "show", "no-such-request"], "request_not_found"),
    ("agent:demo", ["requests", "pending"], "not_an_approver"),
    (None, ["requests", "pending"], "missing_credentials"),
    ("human:bob", ["approve", "{rid}", "--reason", "   "], "missing_reason"),
    ("human:bob", ["requests", "show", "x" * 65], "invalid_request_id"),
])
def test_errors_exit_non_zero_with_the_api_code(live, capsys, who, argv, code):
    harness, server = live
    rid = pending_id(harness)
    exit_code, out, err = run(capsys, server, harness, who, *[a.replace("{rid}", rid) for a in argv])
    assert exit_code == 1
    assert f"error [{code}]" in err
    assert out == ""


def test_unreachable_broker(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["requests", "pending", "--url", f"http://127.0.0.1:{port}", "--token", "x"]) == 1
    assert "error [broker_unreachable]" in capsys.readouterr().err


def test_url_and_token_from_the_environment(live, capsys, monkeypatch):
    harness, server = live
    rid = pending_id(harness)
    monkeypatch.setenv("BROKER_URL", server.url)
    monkeypatch.setenv("BROKER_TOKEN", harness.keys["human:bob"])
    assert main(["requests", "show", rid, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == rid


def test_approve_needs_a_reason_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["approve", "some-id"])
    assert exit_info.value.code == 2
