"""``broker revoke``, ``revoke-all``, ``lockdown``, ``lockdown-lift``, ``lockdown-status`` over real HTTP."""

from __future__ import annotations

import json

import pytest

from broker.cli.main import main
from broker.runtime.devmode import seed_principals
from tests.live_server import serve
from tests.revocation.conftest import S3_REQUEST, SECOND_ADMIN, clear_deny_policy, issue, read_deny_policy


@pytest.fixture
def live(sqlite_broker):
    clear_deny_policy(sqlite_broker.aws_endpoint)
    sqlite_broker.keys.update(seed_principals(sqlite_broker.container.database,
                                              sqlite_broker.state_dir / "more-keys.json", SECOND_ADMIN))
    with serve(sqlite_broker.client.app) as server:
        yield sqlite_broker, server


def run(capsys, server, harness, who: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--url", server.url, "--token", harness.keys[who]])
    out, err = capsys.readouterr()
    return code, out, err


def test_revoke_and_revoke_all(live, capsys):
    harness, server = live
    grant = issue(harness)
    code, out, _ = run(capsys, server, harness, "human:alice", "revoke", grant.grant_id, "--reason", "leaked")
    assert code == 0 and json.loads(out)["grant"]["revoked_at"]
    code, _, err = run(capsys, server, harness, "human:alice", "revoke", grant.grant_id, "--reason", "again")
    assert code == 1 and "grant_already_revoked" in err
    code, out, _ = run(capsys, server, harness, "human:root", "revoke-all", "--agent", "agent:demo",
                       "--reason", "compromised")
    assert code == 0 and json.loads(out)["target"] == "agent"
    sids = [s["Sid"] for s in read_deny_policy(harness.aws_endpoint)["Statement"]]
    # The agent's issued-before deny covers the grant revoked first: its session entry is dropped (issue 22).
    assert sids == ["BrokerRevokeAllAgent0"]
    code, _, err = run(capsys, server, harness, "human:rita", "revoke-all", "--template", "test-s3-read",
                       "--reason", "x")
    assert code == 1 and "not_allowed_to_revoke" in err


def test_lockdown_and_co_signed_lift(live, capsys):
    harness, server = live
    assert run(capsys, server, harness, "human:root", "lockdown", "dev", "--reason", "incident")[0] == 0
    assert harness.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 403
    code, out, _ = run(capsys, server, harness, "agent:demo", "lockdown-status")
    assert code == 0 and json.loads(out)["lockdowns"][0]["environment"] == "dev"
    # --format as on every command: json is the default (the API's answer), text a table.
    code, out, _ = run(capsys, server, harness, "agent:demo", "lockdown-status", "--format", "json")
    assert code == 0 and json.loads(out)["lockdowns"][0]["environment"] == "dev"
    code, out, _ = run(capsys, server, harness, "agent:demo", "lockdown-status", "--format", "text")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "LOCKDOWNS" and lines[1].split()[:2] == ["ENVIRONMENT", "BY"]
    assert lines[2].split()[:3] == ["dev", "human:root", "incident"]
    code, out, _ = run(capsys, server, harness, "human:root", "lockdown-lift", "dev", "--reason", "over")
    assert code == 0 and "second admin" in out
    code, _, err = run(capsys, server, harness, "human:root", "lockdown-lift", "dev", "--reason", "over")
    assert code == 1 and "second_admin_required" in err
    code, out, _ = run(capsys, server, harness, "human:ada", "lockdown-lift", "dev", "--reason", "confirmed")
    assert code == 0 and json.loads(out)["status"] == "lifted"
    assert harness.post("/v1/requests", "agent:demo", json=S3_REQUEST).status_code == 201
