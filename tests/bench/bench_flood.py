"""Benchmark: one agent floods the broker; another agent's requests keep succeeding.

uvicorn in a thread, httpx clients, moto's server as STS, the real rate-limit gates (counted in
the database).  ``agent:demo`` floods from several threads; ``agent:other`` asks at a modest,
steady pace.  Prints status counts and latencies per agent.

    .venv/bin/python -m tests.bench.bench_flood [--seconds 20] [--flooders 8] [--db sqlite|postgres]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.bench_issue import percentile
from tests.live_server import LiveServer
from tests.conftest import PG_ADMIN_URL, TEST_SCOPES, _fresh_pg_database, build_harness

BODY = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "benchmark"}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, status: int, code: str, seconds: float) -> None:
        with self.lock:
            key = f"{status} {code}".strip()
            self.codes[key] += 1
            self.latency[key].append(seconds)

    def report(self, name: str, wall: float) -> None:
        total = sum(self.codes.values())
        print(f"  {name}: {total} requests in {wall:.1f} s ({total / wall:.1f}/s)")
        for key, count in sorted(self.codes.items()):
            values = self.latency[key]
            print(f"    {key:<28} {count:>6}   p50 {ms(percentile(values, .5)):>10}   "
                  f"p99 {ms(percentile(values, .99)):>10}")


def _code(response) -> str:
    if response.status_code < 400:
        return ""
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError):
        return "?"


def run(seconds: float, flooders: int, db: str, per_minute: int) -> None:
    import httpx

    from broker.api.app import create_app
    from broker.storage.template_files import load_catalog
    from broker.runtime.devmode import seed_aws, start_fake_aws
    from broker.ports import SystemClock

    aws = start_fake_aws(0)
    seed_aws(aws.endpoint_url, load_catalog(TEST_SCOPES))
    drop = None
    with tempfile.TemporaryDirectory() as tmp:
        if db == "postgres":
            url, drop = _fresh_pg_database(PG_ADMIN_URL)
        else:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        harness = build_harness(db_url=url, scopes=TEST_SCOPES, aws_endpoint=aws.endpoint_url,
                                state_dir=Path(tmp) / "state", clock=SystemClock(),
                                agent_requests_per_minute=per_minute, template_requests_per_minute=10 * per_minute,
                                agent_max_live_grants=10 * per_minute)
        server = LiveServer(create_app(harness.container)).start()
        base = server.url
        flood, steady = Tally(), Tally()
        deadline = time.monotonic() + seconds

        def loop(principal: str, tally: Tally, pause: float) -> None:
            with httpx.Client(base_url=base, headers=harness.auth(principal), timeout=30) as client:
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    response = client.post("/v1/requests", json=BODY)
                    tally.add(response.status_code, _code(response), time.perf_counter() - start)
                    if pause:
                        time.sleep(pause)

        # The steady agent stays well under its own limit: one request every 60/(per_minute/2) s.
        threads = [threading.Thread(target=loop, args=("agent:demo", flood, 0.0)) for _ in range(flooders)]
        threads.append(threading.Thread(target=loop, args=("agent:other", steady, 120.0 / per_minute)))
        wall = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall
        server.stop()
        print(f"== flood ({db}): {flooders} threads of agent:demo vs 1 of agent:other, "
              f"limit {per_minute}/min per agent")
        flood.report("agent:demo (flooding)", wall)
        steady.report("agent:other (steady)", wall)
        refused = sum(1 for e in harness.events() if e["type"] == "refused" and e["reason_code"] == "rate_limited")
        print(f"  log: {refused} 'refused' entries with reason_code rate_limited")
        harness.container.database.engine.dispose()
    if drop:
        drop()
    aws.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--flooders", type=int, default=8)
    parser.add_argument("--per-minute", type=int, default=60)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = parser.parse_args()
    for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
        run(args.seconds, args.flooders, db, args.per_minute)


if __name__ == "__main__":
    main()
