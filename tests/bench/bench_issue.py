"""Benchmark: issuance through POST /v1/requests for a no-approval template.

Prints, over real HTTP (uvicorn in a thread, one httpx client) against moto's server:
issuances/s and p50/p99 latency as the client sees them; the time the broker's ASGI app
spent on each request (server side); the STS call, timed separately; and the broker's own
overhead = app time - STS time.  Also the in-process figures through Starlette's TestClient.

    .venv/bin/python -m tests.bench.bench_issue [--requests 500] [--db sqlite|postgres]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.live_server import LiveServer
from tests.conftest import PG_ADMIN_URL, TEST_SCOPES, _fresh_pg_database, build_harness


class MotoProcess:
    """moto's server as a separate process (``moto_server``), on a free loopback port."""

    def __init__(self, process, endpoint_url: str) -> None:
        self.process = process
        self.endpoint_url = endpoint_url

    @classmethod
    def start(cls) -> "MotoProcess":
        import os
        import subprocess
        import sys
        import urllib.request

        from broker.devmode import free_port

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-broker-secret")
        port = free_port(0)
        server = Path(sys.executable).parent / "moto_server"
        process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/moto-api/data.json", timeout=1).read()
                return cls(process, url)
            except OSError:
                time.sleep(0.1)
        process.kill()
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class TimedMinter:
    """Wraps the real STS minter and records how long each AssumeRole took."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.samples: list[float] = []

    def mint(self, order):
        start = time.perf_counter()
        try:
            return self.inner.mint(order)
        finally:
            self.samples.append(time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def run(requests: int, db: str) -> None:
    from broker.aws.sts import StsMinter
    from broker.devmode import seed_aws
    from broker.catalog import load_catalog

    # FAKE AWS in its own process, as STS is in production: its threads must not share this GIL.
    aws = MotoProcess.start()
    seed_aws(aws.endpoint_url, load_catalog(TEST_SCOPES))
    drop = None
    with tempfile.TemporaryDirectory() as tmp:
        if db == "postgres":
            url, drop = _fresh_pg_database(PG_ADMIN_URL)
        else:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        minter = TimedMinter(StsMinter(endpoint_url=aws.endpoint_url, region="us-east-1"))
        from broker.ports import SystemClock

        harness = build_harness(db_url=url, scopes=TEST_SCOPES, aws_endpoint=aws.endpoint_url,
                                state_dir=Path(tmp) / "state", minter=minter, clock=SystemClock(),
                                # Rate limits off: one agent issuing at full speed would hit them.  (With
                                # limits on, the gate adds three indexed COUNTs, each bounded by its limit,
                                # since refused requests are not stored.)
                                agent_requests_per_minute=0, template_requests_per_minute=0,
                                agent_max_live_grants=0)
        body = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "benchmark"}
        headers = harness.auth("agent:demo")

        # Warm-up (imports, first connections, the action database).
        for _ in range(20):
            assert harness.client.post("/v1/requests", json=body, headers=headers).status_code == 201
        minter.samples.clear()

        # (b) in-process: total per request, STS timed separately.
        totals: list[float] = []
        for _ in range(requests):
            start = time.perf_counter()
            response = harness.client.post("/v1/requests", json=body, headers=headers)
            totals.append(time.perf_counter() - start)
            assert response.status_code == 201, response.text
        sts = list(minter.samples)
        overhead = [t - s for t, s in zip(totals, sts, strict=True)]
        print(f"== in-process ({db}), {requests} issuances")
        print(f"  total     p50 {ms(percentile(totals, .5))}  p99 {ms(percentile(totals, .99))}")
        print(f"  STS call  p50 {ms(percentile(sts, .5))}  p99 {ms(percentile(sts, .99))}  (moto over HTTP)")
        print(f"  TestClient total - STS  p50 {ms(percentile(overhead, .5))}  "
              f"p99 {ms(percentile(overhead, .99))}  mean {ms(statistics.mean(overhead))}")

        # (a) real HTTP: uvicorn in a thread, one client; the app's own time measured server side.
        import httpx

        from broker.api.app import create_app

        app_times: list[float] = []
        inner_app = create_app(harness.container)

        async def timed_app(scope, receive, send):
            start = time.perf_counter()
            try:
                await inner_app(scope, receive, send)
            finally:
                if scope["type"] == "http":
                    app_times.append(time.perf_counter() - start)

        server = LiveServer(timed_app).start()
        latencies: list[float] = []
        for _ in range(20):
            httpx.post(f"{server.url}/v1/requests", json=body, headers=headers)
        minter.samples.clear()
        app_times.clear()
        with httpx.Client(base_url=server.url, headers=headers) as client:
            wall = time.perf_counter()
            for _ in range(requests):
                start = time.perf_counter()
                response = client.post("/v1/requests", json=body)
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 201, response.text
            wall = time.perf_counter() - wall
        server.stop()
        print(f"== over HTTP (uvicorn, one client, {db}), {requests} issuances")
        print(f"  throughput {requests / wall:.1f} issuances/s")
        print(f"  latency    p50 {ms(percentile(latencies, .5))}  p99 {ms(percentile(latencies, .99))}  (client side)")
        sts = list(minter.samples)
        own = [a - s for a, s in zip(app_times, sts, strict=True)]
        print(f"  app time   p50 {ms(percentile(app_times, .5))}  p99 {ms(percentile(app_times, .99))}  (server side)")
        print(f"  STS call   p50 {ms(percentile(sts, .5))}  p99 {ms(percentile(sts, .99))}")
        print(f"  broker's own overhead (app - STS)  p50 {ms(percentile(own, .5))}  p99 {ms(percentile(own, .99))}  "
              f"mean {ms(statistics.mean(own))}")
        harness.container.database.engine.dispose()
    if drop:
        drop()
    aws.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
        run(args.requests, db)


if __name__ == "__main__":
    main()
