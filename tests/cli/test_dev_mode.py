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
EXPECTED_PRINCIPALS = {"agent:demo", "agent:demo2", "human:alice", "human:bob", "human:carol", "human:rita", "human:root",
                       "human:ops"}


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


@pytest.mark.slow
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
    # The database and the folder are the user's alone too (issue 15: broker.db was world-readable).
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("broker.db", "broker.db-wal", "broker.db-shm"):
        if (state / name).exists():
            assert (state / name).stat().st_mode & 0o777 == 0o600, name
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


def _clean_env() -> dict[str, str]:
    """A new terminal's environment: nothing of the broker or of AWS set."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}


def test_the_printed_try_lines_work_pasted_as_printed(dev_broker, tmp_path):
    lines = dev_broker["lines"]
    start = next(i for i, line in enumerate(lines) if line.strip() == "try, in a second terminal:")
    export, _demo, exec_line = (line.strip() for line in lines[start + 1:start + 4])
    assert export.startswith("export ") and "AWS_ENDPOINT_URL=" in export and "AWS_REGION=" in export
    # Pasted in a second terminal, in another directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(["bash", "-c", f"set -e\n{export}\n{exec_line}"], cwd=elsewhere, env=_clean_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "2026-10-costs.csv" in done.stdout and "2026-11-costs.csv" in done.stdout


def test_a_dev_lockdown_can_be_lifted_by_the_second_admin(dev_broker):
    keys = json.loads((dev_broker["state"] / "dev-keys.json").read_text())
    base = f"http://127.0.0.1:{dev_broker['port']}"

    def post(path: str, who: str, body: dict) -> httpx.Response:
        return httpx.post(base + path, json=body, headers={"Authorization": f"Bearer {keys[who]}"}, timeout=10)

    assert post("/v1/lockdown", "human:root", {"environment": "dev", "reason": "drill"}).status_code == 201
    assert post("/v1/lockdown/dev/lift", "human:root", {"reason": "drill over"}).status_code == 202
    lifted = post("/v1/lockdown/dev/lift", "human:ops", {"reason": "confirmed"})
    assert lifted.status_code == 200 and lifted.json()["status"] == "lifted"


def test_a_busy_port_fails_before_anything_is_printed_or_written(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = tmp_path / "state"
        done = subprocess.run([sys.executable, "-m", "broker.cli.main", "dev", "--port", str(port), "--aws-port", "0",
                               "--state-dir", str(state), "--scopes", str(REPO / "scopes")], cwd=tmp_path,
                              env=_clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "[port_in_use]" in done.stderr and f"port {port}" in done.stderr
    assert done.stdout == "" and not state.exists()
