"""`broker dev` on a fresh state folder: starts in seconds, writes its files, and shows itself working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from broker.runtime.devmode import free_port
from broker.domain import log as issuance_log

REPO = Path(__file__).resolve().parents[2]
EXPECTED_PRINCIPALS = {"agent:demo", "human:alice", "human:bob", "human:carol", "human:rita", "human:root"}


@pytest.fixture
def dev_broker(tmp_path):
    port = free_port(0)
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in list(env):
        if name.startswith("BROKER_"):
            env.pop(name)
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli.main", "dev", "--port", str(port), "--aws-port", "0",
         "--state-dir", str(state), "--scopes", str(REPO / "scopes")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "self-check:" in line and "s3 ls" in line or "self-check FAILED" in line:
                break
        yield {"port": port, "state": state, "lines": lines, "seconds": time.monotonic() - started}
    finally:
        process.terminate()
        process.wait(10)


def test_dev_mode_starts_writes_keys_and_self_checks(dev_broker):
    output = "\n".join(dev_broker["lines"])
    assert "self-check FAILED" not in output, output
    assert "self-check: agent:demo asked for s3-read-prefix -> 201 issued" in output, output
    assert "reports/2026-10-costs.csv" in output and "private/payroll.csv" not in output
    assert "AWS_ENDPOINT_URL=http://127.0.0.1:" in output
    assert dev_broker["seconds"] < 45

    state: Path = dev_broker["state"]
    keys = json.loads((state / "dev-keys.json").read_text())
    assert set(keys) == EXPECTED_PRINCIPALS
    assert all(value.startswith("brk_") for value in keys.values())
    assert (state / "dev-keys.json").stat().st_mode & 0o077 == 0
    public = issuance_log.load_public_key((state / "log-public-key.pem").read_bytes())

    base = f"http://127.0.0.1:{dev_broker['port']}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    served = httpx.get(f"{base}/v1/events/public-key").text.encode()
    assert issuance_log.load_public_key(served).public_bytes_raw() == public.public_bytes_raw()
    # Keys are stored hashed: the database file never contains a key.
    database = (state / "broker.db").read_bytes() + (state / "broker.db-wal").read_bytes() \
        if (state / "broker.db-wal").exists() else (state / "broker.db").read_bytes()
    assert not any(key.encode() in database for key in keys.values())
    # The reviewer sees the self-check's issuance in the log.
    events = httpx.get(f"{base}/v1/events", headers={"Authorization": f"Bearer {keys['human:rita']}"}).json()
    assert [e["type"] for e in events["events"]][-2:] == ["requested", "issued"]
