"""``--wait`` on the command line: the waiting requester sees each co-signature as it arrives and the
outcome, a denial's reason included (stderr), against a broker served over HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from sqlmodel import select

from broker.storage.models import RequestRow

CLI = [sys.executable, "-m", "broker.cli.main"]


def _wait_for_request(live, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with live.harness.container.database.read() as repo:
            rows = list(repo.session.exec(select(RequestRow)))
        if rows:
            return rows[0].id
        time.sleep(0.1)
    raise AssertionError("the CLI never made its request")


def test_wait_tells_each_cosignature_then_the_denial_and_its_reason(agent_env):
    live, _cache = agent_env
    waiting = subprocess.Popen(CLI + ["credential-process", "test-prod-ecs", "-p", "service=checkout", "--reason",
                                      "deploy fix for bug 42", "--wait", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(waiting.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        request_id = _wait_for_request(live)
        approved = live.harness.post(f"/v1/requests/{request_id}/approvals", "human:bob",
                                     json={"decision": "approve", "reason": "ok"})
        assert approved.status_code == 200
        bob = f"request {request_id}: human:bob approved (1 of 2)"
        deadline = time.monotonic() + 30
        while not any(bob in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)  # the CLI tells bob's approval before carol decides
        denied = live.harness.post(f"/v1/requests/{request_id}/approvals", "human:carol",
                                   json={"decision": "deny", "reason": "wrong service, use billing"})
        assert denied.status_code == 200
        waiting.wait(timeout=60)
        reader.join(10)
        out = waiting.stdout.read()
    finally:
        waiting.kill()
    err = "".join(lines)
    assert any(bob in line for line in lines), err
    assert waiting.returncode == 1 and out == ""
    assert f"request {request_id}: human:bob approved (1 of 2)" in err
    assert f"request {request_id}: denied by human:carol" in err and "wrong service, use billing" in err
