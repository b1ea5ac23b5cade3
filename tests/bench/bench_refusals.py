"""Benchmark: how many log entries one agent's refused requests produce, without and with the refusal budget.

* burst: ``--refusals`` refused requests (an unknown template) from ``agent:demo`` over real HTTP
  (uvicorn in a thread, 4 client threads, the system clock), then the shutdown flush.  Prints log
  entries by type and the flood's rate (the server shares the process with its clients: a rate, not
  a latency figure).
* spread: the same number of refusals at an even pace over 10 minutes of frozen time (TestClient),
  then the shutdown flush: entries by type.

    .venv/bin/python -m tests.bench.bench_refusals [--refusals 1000] [--db sqlite|postgres|both]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import PG_ADMIN_URL, TEST_SCOPES, FrozenClock, _fresh_pg_database, build_harness
from tests.live_server import LiveServer

UNKNOWN = {"template": "no-such-scope", "parameters": {}, "reason": "benchmark"}
SPREAD_SECONDS = 600
FLOODERS = 4


def _entries(harness) -> str:
    kinds = collections.Counter(e["type"] for e in harness.events() if e["actor"] == "agent:demo")
    total = sum(kinds.values())
    return f"{total:>5} entries ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"


def burst(harness, refusals: int) -> str:
    import httpx

    from broker.api.app import create_app

    server = LiveServer(create_app(harness.container)).start()
    with (httpx.Client(base_url=server.url, headers=harness.auth("agent:demo"), timeout=30) as client,
          ThreadPoolExecutor(FLOODERS) as pool):
        wall = time.perf_counter()
        codes = set(pool.map(lambda _: client.post("/v1/requests", json=UNKNOWN).status_code, range(refusals)))
        wall = time.perf_counter() - wall
    server.stop()
    assert codes == {404}, codes
    harness.container.service.flush_suppressed_refusals(close_open=True)   # as `broker serve` at shutdown
    return f"{_entries(harness)}; {refusals / wall:.0f} refusals/s"


def spread(harness, refusals: int) -> str:
    for _ in range(refusals):
        harness.clock.advance(SPREAD_SECONDS / refusals)
        assert harness.post("/v1/requests", "agent:demo", json=UNKNOWN).status_code == 404
    harness.container.service.flush_suppressed_refusals(close_open=True)
    return _entries(harness)


@contextmanager
def _broker(db: str, aws_endpoint: str, clock, budget: int) -> Iterator:
    """A broker on a fresh database, rate limits off (refusals only), with the refusal budget given."""
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = (_fresh_pg_database(PG_ADMIN_URL) if db == "postgres"
                     else (f"sqlite:///{Path(tmp) / 'bench.db'}", None))
        harness = build_harness(db_url=url, scopes=TEST_SCOPES, aws_endpoint=aws_endpoint, state_dir=Path(tmp) / "s",
                                clock=clock, refusals_per_minute=budget, agent_requests_per_minute=0,
                                template_requests_per_minute=0, agent_max_live_grants=0)
        try:
            yield harness
        finally:
            harness.container.database.engine.dispose()
            if drop is not None:
                drop()


def main() -> None:
    from broker.storage.template_files import load_catalog
    from broker.runtime.devmode import seed_aws, start_fake_aws
    from broker.ports import SystemClock

    parser = argparse.ArgumentParser()
    parser.add_argument("--refusals", type=int, default=1000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = parser.parse_args()
    scenarios = (("burst", SystemClock, burst), (f"spread over {SPREAD_SECONDS // 60} min", FrozenClock, spread))
    aws = start_fake_aws(0)
    seed_aws(aws.endpoint_url, load_catalog(TEST_SCOPES))
    try:
        for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
            print(f"== {args.refusals} refused requests from agent:demo ({db})")
            for scenario, clock, measure in scenarios:
                for budget in (0, 30):
                    with _broker(db, aws.endpoint_url, clock(), budget) as harness:
                        label = "budget off (before)" if budget == 0 else f"budget {budget}/min (after)"
                        print(f"  {scenario:<18} {label:<22} {measure(harness, args.refusals)}")
    finally:
        aws.stop()


if __name__ == "__main__":
    main()
