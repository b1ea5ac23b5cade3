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
                                               [--limits off|default|unreachable|all]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
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
# How the rate-limit gate is set (BROKER_AGENT_REQUESTS_PER_MINUTE, _TEMPLATE_REQUESTS_PER_MINUTE,
# _AGENT_MAX_LIVE_GRANTS):
# * "off": all three 0, the gate skipped;
# * "default": the broker's defaults (60, 300, 20), the load spread over enough agents and copies of the
#   template that none is reached, each count as large as that allows (production's shape);
# * "unreachable": one agent, one template, limits of 10^9: every request of the run is counted (all in
#   the 60 s window, every grant live), more rows than the defaults would ever let through.
LIMITS: dict[str, str | None] = {"off": "0", "default": None, "unreachable": "1000000000"}
LIMIT_SETTINGS = ("BROKER_AGENT_REQUESTS_PER_MINUTE", "BROKER_TEMPLATE_REQUESTS_PER_MINUTE",
                  "BROKER_AGENT_MAX_LIVE_GRANTS")
PER_AGENT, PER_TEMPLATE = 15, 250  # under the default 20 live grants and 300 requests a minute
BENCH_TEMPLATE = TEST_SCOPES / "s3-read.yaml"


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


def spread_load(limits: str, total: int, tmp: Path) -> tuple[Path, list[str], list[str]]:
    """The scopes folder, the agents and the template names the run cycles through."""
    if limits != "default":
        return TEST_SCOPES, ["agent:demo"], ["test-s3-read"]
    scopes = tmp / "scopes"
    scopes.mkdir()
    source = BENCH_TEMPLATE.read_text()
    templates = [f"test-s3-read-{n}" for n in range(-(-total // PER_TEMPLATE))]
    for name in templates:  # the same scope under several names: each counts its own requests
        (scopes / f"{name}.yaml").write_text(source.replace("name: test-s3-read", f"name: {name}", 1))
    return scopes, [f"agent:bench-{n}" for n in range(-(-total // PER_AGENT))], templates


def agent_keys(env: dict[str, str], url: str, agents: list[str], keys_file: Path) -> list[str]:
    """Migrate the database (as ``broker migrate`` does) and give each agent a key."""
    from broker.runtime.devmode import seed_principals
    from broker.storage.engine import Database, build_engine

    subprocess.run([str(BIN / "broker"), "migrate"], env=env, check=True, capture_output=True)
    database = Database(build_engine(url))
    try:
        keys = seed_principals(database, keys_file, {agent: (("agent",), (), "human:alice") for agent in agents})
    finally:
        database.engine.dispose()
    return [keys[agent] for agent in agents]


def run(requests: int, db: str, warmup: int, limits: str) -> None:
    from broker.storage.template_files import load_catalog
    from broker.runtime.devmode import DEV_ACCOUNTS, ensure_signing_key, free_port, seed_aws

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
            scopes, agents, templates = spread_load(limits, warmup + requests, Path(tmp))
            env.update({
                "BROKER_DATABASE_URL": url, "BROKER_SCOPES_DIR": str(scopes),
                "BROKER_AWS_ENDPOINT_URL": aws.url, "BROKER_SIGNING_KEY_FILE": str(private),
                "BROKER_SERVER_TIMING": "true", "BROKER_ACCOUNTS": json.dumps(DEV_ACCOUNTS),
            })
            for name in LIMIT_SETTINGS:
                env.pop(name, None)
                if LIMITS[limits] is not None:
                    env[name] = LIMITS[limits]
            keys = agent_keys(env, url, agents, Path(tmp) / "state" / "keys.json")
            port = free_port(0)
            broker = Process([str(BIN / "broker"), "serve", "--port", str(port)], f"http://127.0.0.1:{port}",
                             "/readyz", env=env)
            try:
                label = (f"{db}, rate limits {limits}: {len(agents)} agent(s) x {len(templates)} template(s)")
                measure(broker.url, keys, templates, requests, warmup, label, broker.process.pid)
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


def measure(url: str, keys: list[str], templates: list[str], requests: int, warmup: int, label: str,
            pid: int) -> None:
    bodies = [{"template": name, "parameters": {"prefix": "reports"}, "reason": "benchmark"} for name in templates]
    headers = [{"Authorization": f"Bearer {key}"} for key in keys]
    turns = ((headers[n % len(headers)], bodies[n % len(bodies)]) for n in range(warmup + requests))
    latencies: list[float] = []
    app: list[float] = []
    sts: list[float] = []
    with httpx.Client(base_url=url) as client:
        for _ in range(warmup):
            auth, body = next(turns)
            assert client.post("/v1/requests", json=body, headers=auth).status_code == 201
        wall, cpu = time.perf_counter(), cpu_seconds(pid)
        for _ in range(requests):
            auth, body = next(turns)
            start = time.perf_counter()
            response = client.post("/v1/requests", json=body, headers=auth)
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
    print(f"== {label}; {requests} issuances over HTTP, broker serve / moto_server / client in three processes")
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
    parser.add_argument("--limits", choices=[*LIMITS, "all"], default="all",
                        help="the rate-limit gate: off, the defaults with the load spread, or on with limits "
                             "never reached (default: all three)")
    args = parser.parse_args()
    for limits in ([*LIMITS] if args.limits == "all" else [args.limits]):
        for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
            run(args.requests, db, args.warmup, limits)


if __name__ == "__main__":
    main()
