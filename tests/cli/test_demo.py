"""``broker demo`` end to end: approve path against a ``broker dev`` it starts, --deny against a running broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from broker.cli.main import main
from tests.sdk.conftest import live_repo_broker  # noqa: F401 - fixture

CLI = [sys.executable, "-m", "broker.cli.main"]


@pytest.mark.slow
def test_demo_starts_broker_dev_and_tells_the_approved_story(tmp_path):
    done = subprocess.run(CLI + ["demo"], capture_output=True, text=True, timeout=240, check=False,
                          cwd=tmp_path)   # no ./scopes here: the demo finds the shipped templates itself
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    assert re.search(r"ce:GetCostAndUsage with them: HTTP 200", out)
    assert re.search(r"cloudformation:DeleteStack on \S+stack/cost-explorer-api/\S+: DENIED", out)
    assert "needs 2 approval(s) from group:sre" in out and "/ui/requests/" in out
    assert "refused: HTTP 403 [approver_is_principal_human]" in out
    assert "[DESTRUCTIVE]" in out
    assert "carol approves: status approved, 2 of 2 approvals" in out
    assert re.search(r"lifetime 900 s \(15 minutes\)", out)
    assert ":assumed-role/broker-target-prod-stack-recreate/" in out
    assert re.search(r"DeleteStack on \S+stack/cost-explorer-api/\S+: ALLOWED", out)
    assert re.search(r"DeleteStack on \S+stack/billing-api/\S+: DENIED", out)
    assert re.search(r"verified with the public key from \S+log-public-key.pem: OK \(\d+ entries\)", out)
    # The self-scoped workspace reset: agent:demo resets its own table at once, agent:demo2 is refused on it.
    assert "deletes and recreates table workspace-demo: ACTIVE" in out
    assert "naming it in the request is refused: HTTP 422 [identity_value_not_settable]" in out
    assert re.search(r"DeleteTable on \S+table/workspace-demo: DENIED", out)
    assert re.search(r"DeleteTable on \S+table/workspace-demo2: ALLOWED", out)


def test_demo_deny_path_against_a_running_broker(live_repo_broker, capsys, monkeypatch):  # noqa: F811
    live = live_repo_broker
    monkeypatch.delenv("BROKER_URL", raising=False)
    keys = live.state_dir / "dev-keys.json"
    code = main(["demo", "--deny", "--url", live.url, "--keys", str(keys), "--aws-endpoint", live.aws_endpoint])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "carol: \"absolutely not\": status denied" in out
    assert "was denied: absolutely not" in out and "redeeming anyway is refused: HTTP 409" in out
    assert "the agent redeems" not in out
    # What the demo printed is what the log holds: the denial by carol, no issuance for the production request.
    events = live.harness.events()
    prod = [e for e in events if e["template"] == "prod-stack-recreate"]
    kinds = [e["type"] for e in prod]
    assert "denied" in kinds and "issued" not in kinds
    assert any(e["type"] == "denied" and e["actor"] == "human:carol" for e in prod)
    assert any(e["type"] == "refused" and e["actor"] == "human:alice" for e in events)
    assert json.loads(keys.read_text())["agent:demo"]


def test_demo_against_a_running_broker_needs_keys_and_the_fake_aws(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                       # no ./.broker/dev-keys.json here
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert main(["demo", "--url", "http://127.0.0.1:9"]) == 1
    assert "--keys" in capsys.readouterr().err
    keys = tmp_path / ".broker" / "dev-keys.json"
    keys.parent.mkdir()
    keys.write_text("{}")
    monkeypatch.setenv("BROKER_URL", "http://127.0.0.1:9")
    assert main(["demo"]) == 1                        # BROKER_URL + ./.broker keys: the running broker
    assert "--aws-endpoint" in capsys.readouterr().err
