"""Benchmark: issuance through POST /v1/requests for a no-approval template.

Runs everything as it runs in production, each in its own process:

* moto's server (``moto_server``) as the AWS endpoint;
* the broker as ``broker serve`` (configured by ``BROKER_*``; ``BROKER_SERVER_TIMING=true``, rate
  limits off), after ``broker keys create`` made the agent's key;
* this process as the client: one keep-alive ``httpx`` connection, one request at a time.

It prints issuances/s, the client's p50/p99 latency, and from each response's ``Server-Timing``
header the broker's app time, the STS call's time inside it, and the broker's own overhead
(app - STS) at p50/p99/p99.9/max, with client latency - STS as an upper bound; and the broker process's CPU time per issuance (steadier than
latency on a shared machine, whose neighbours move every latency figure by tens of percent).

    .venv/bin/python -m tests.bench.bench_issue [--requests 1000] [--db sqlite|postgres|both]
                                               [--limits off|unreachable|both]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.conftest import PG_ADMIN_URL, TEST_SCOPES, _fresh_pg_database

BIN = Path(sys.executable).parent
# "unreachable" counts every request of the run (all inside the 60 s window, every grant live): more rows
# than production, where the limits themselves keep the counts at or under 60 / 300 / 20.
LIMITS = {"off": "0", "unreachable": "1000000000"}


class Process:
    """A child process serving HTTP on a free loopback port."""

    def __init__(self, argv: list[str], url: str, ready_path: str, env: dict[str, str] | None = None) -> None:
        self.url = url
        # NOTE: stderr goes to a file, not a pipe nobody reads: moto_server's access log (a line per STS
        # call) filled a pipe's 64 KiB after ~1,000 requests and blocked it mid-run.
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited: {self.output()[-2000:]}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{argv[0]} did not start")

    def output(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.stderr.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def describe(values: list[float]) -> str:
    return (f"p50 {percentile(values, .5):6.2f}  p99 {percentile(values, .99):6.2f}  "
            f"p99.9 {percentile(values, .999):6.2f}  max {max(values):6.2f}  mean {statistics.mean(values):6.2f} ms")


def server_timing(header: str) -> dict[str, float]:
    parts = (item.strip().split(";dur=") for item in header.split(","))
    return {name: float(value) for name, value in parts}


def run(requests: int, db: str, warmup: int, limits: str) -> None:
    from broker.catalog import load_catalog
    from broker.devmode import ensure_signing_key, free_port, seed_aws

    # FAKE credentials for the FAKE AWS endpoint (this process seeds it; the broker signs its calls).
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-broker-secret")
    env = dict(os.environ)
    aws_port = free_port(0)
    aws = Process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(aws_port)], f"http://127.0.0.1:{aws_port}",
                  "/moto-api/data.json", env=env)
    drop = None
    try:
        seed_aws(aws.url, load_catalog(TEST_SCOPES))
        with tempfile.TemporaryDirectory() as tmp:
            if db == "postgres":
                url, drop = _fresh_pg_database(PG_ADMIN_URL)
            else:
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            (Path(tmp) / "state").mkdir()
            private, _ = ensure_signing_key(Path(tmp) / "state")
            env.update({
                "BROKER_DATABASE_URL": url, "BROKER_SCOPES_DIR": str(TEST_SCOPES),
                "BROKER_AWS_ENDPOINT_URL": aws.url, "BROKER_SIGNING_KEY_FILE": str(private),
                "BROKER_SERVER_TIMING": "true",
                # One agent issuing at full speed would hit the default limits: either off, or so high
                # that the gate runs (locks, counts) and never refuses.
                **{name: LIMITS[limits] for name in ("BROKER_AGENT_REQUESTS_PER_MINUTE",
                                                     "BROKER_TEMPLATE_REQUESTS_PER_MINUTE",
                                                     "BROKER_AGENT_MAX_LIVE_GRANTS")},
            })
            key = subprocess.run([str(BIN / "broker"), "keys", "create", "--principal", "agent:demo", "--role", "agent",
                                  "--acts-for", "human:alice"], env=env, check=True, capture_output=True,
                                 text=True).stdout.strip()
            port = free_port(0)
            broker = Process([str(BIN / "broker"), "serve", "--port", str(port)], f"http://127.0.0.1:{port}",
                             "/readyz", env=env)
            try:
                measure(broker.url, key, requests, warmup, f"{db}, rate limits {limits}", broker.process.pid)
            finally:
                broker.stop()
    finally:
        if drop:
            drop()
        aws.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, key: str, requests: int, warmup: int, db: str, pid: int) -> None:
    body = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "benchmark"}
    latencies: list[float] = []
    app: list[float] = []
    sts: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(warmup):
            assert client.post("/v1/requests", json=body).status_code == 201
        wall, cpu = time.perf_counter(), cpu_seconds(pid)
        for _ in range(requests):
            start = time.perf_counter()
            response = client.post("/v1/requests", json=body)
            latencies.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 201, response.text
            timing = server_timing(response.headers["server-timing"])
            app.append(timing["app"])
            sts.append(timing["sts"])
        wall, cpu = time.perf_counter() - wall, cpu_seconds(pid) - cpu
    own = [a - s for a, s in zip(app, sts, strict=True)]
    # An upper bound the server cannot flatter: everything but STS, as the client saw it (uvicorn's HTTP
    # parsing and writing, loopback, and this client's own httpx time included).
    outside = [c - s for c, s in zip(latencies, sts, strict=True)]
    print(f"== {db}: {requests} issuances over HTTP, broker serve / moto_server / client in three processes")
    print(f"  throughput {requests / wall:.1f} issuances/s")
    print(f"  client latency           {describe(latencies)}")
    print(f"  app time (server side)   {describe(app)}")
    print(f"  STS call (moto)          {describe(sts)}")
    print(f"  broker's own overhead    {describe(own)}   (app - STS; target p99 < 5 ms)")
    print(f"  client latency - STS     {describe(outside)}   (upper bound: HTTP stack and client included)")
    print(f"  broker process CPU       {cpu / requests * 1000:.2f} ms per issuance (all threads, STS client included)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--limits", choices=[*LIMITS, "both"], default="both",
                        help="rate-limit gate off, or on with limits never reached (default: both)")
    args = parser.parse_args()
    for limits in ([*LIMITS] if args.limits == "both" else [args.limits]):
        for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
            run(args.requests, db, args.warmup, limits)


if __name__ == "__main__":
    main()
