"""The supervisor of ``broker serve --workers N`` (broker.runtime.workers), with stand-in workers: a graceful
stop on SIGTERM, a worker's exit stopping the others, and a worker outliving no supervisor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A supervisor of two stand-in workers, each writing its pid to a file and then waiting for SIGTERM
# (returning 0); worker 1 exits at once with code 3 when the script is given "crash".
SCRIPT = r"""
import os, signal, sys, time
from pathlib import Path
from broker.runtime.workers import supervise

folder, mode = Path(sys.argv[1]), sys.argv[2]

def serve(number):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    (folder / f"worker-{number}").write_text(str(os.getpid()))
    if mode == "crash" and number == 1:
        time.sleep(0.3)
        return 3
    while not stop:
        time.sleep(0.02)
    return 0

sys.exit(supervise(2, serve))
"""


def start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), mode], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = [tmp_path / f"worker-{n}" for n in (0, 1)]
        if all(f.exists() and f.read_text() for f in files):
            return process, [int(f.read_text()) for f in files]
        time.sleep(0.02)
    process.kill()
    pytest.fail("the workers did not start")


def alive(pid: int) -> bool:
    """Running (a zombie left for an init that does not reap is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigterm_stops_every_worker_and_exits_0(tmp_path):
    process, workers = start(tmp_path, "wait")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, process.stderr.read().decode()
    assert not any(alive(pid) for pid in workers)


def test_a_worker_that_exits_stops_the_others_and_the_supervisor_fails(tmp_path):
    process, workers = start(tmp_path, "crash")
    assert process.wait(timeout=20) == 3
    assert not any(alive(pid) for pid in workers)


def test_a_worker_stops_itself_when_the_supervisor_is_killed(tmp_path):
    process, workers = start(tmp_path, "wait")
    process.kill()  # SIGKILL: the supervisor cannot pass anything on
    process.wait(timeout=20)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)
