"""Benchmark: issuances/s of ``broker serve --workers N`` on PostgreSQL under concurrent clients.

For each worker count: a fresh PostgreSQL database, moto's server (``moto_server``) as the AWS endpoint
in its own process, ``broker serve --workers N`` (``BROKER_SERVER_TIMING=true``, rate limits off), and
this process as ``--clients`` concurrent clients, each on its own keep-alive connection, posting
``/v1/requests`` for a no-approval template as fast as answers come back.  The client is a few lines
over a socket (not httpx), so that it takes as little of the machine's CPU as it can.

It prints issuances/s, client latency, the log head lock's hold time per issuance (from each
response's ``Server-Timing: lock;dur=``: the two units of work of an issuance, from taking the lock
to the end of COMMIT) and the lock's utilisation (the share of wall time some unit of work held it:
the serial point, whatever the worker count), and the CPU per issuance of the broker's processes, moto's,
the PostgreSQL backends serving the broker and the client's, with the ceiling they set together: the machine's
CPUs divided by their sum.

    .venv/bin/python -m tests.bench.bench_workers [--requests 2000] [--clients 8] [--workers 1,2]

Not collected by pytest (file name bench_*.py); figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from broker.storage.export_files import available_cpus
from tests.bench.bench_issue import BIN, LIMIT_SETTINGS, Process, agent_keys, cpu_seconds, percentile, server_timing
from tests.conftest import PG_ADMIN_URL, TEST_SCOPES, _fresh_pg_database

BODY = json.dumps({"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "benchmark"}).encode()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the supervisor and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


class Connection:
    """One keep-alive HTTP/1.1 connection posting the same request: the cheapest client Python has."""

    def __init__(self, port: int, key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = (f"POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
        self.buffer = b""

    def post(self) -> tuple[int, dict[str, float]]:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        headers = {name.lower(): value for name, value in headers.items()}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._more()
        self.buffer = self.buffer[length:]
        return status, server_timing(headers.get("server-timing", "app;dur=0"))

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def load(port: int, key: str, clients: int, total: int) -> tuple[float, list[float], list[float]]:
    """``total`` issuances from ``clients`` threads; (wall seconds, latencies ms, lock ms per issuance)."""
    connections = [Connection(port, key) for _ in range(clients)]
    remaining = [total]
    guard = threading.Lock()
    latencies: list[float] = []
    locks: list[float] = []
    failures: list[str] = []

    def client(connection: Connection) -> None:
        while True:
            with guard:
                if remaining[0] <= 0 or failures:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            status, timing = connection.post()
            elapsed = (time.perf_counter() - started) * 1000
            if status != 201:
                failures.append(f"HTTP {status}")
                return
            latencies.append(elapsed)
            locks.append(timing.get("lock", 0.0))

    threads = [threading.Thread(target=client, args=(c,)) for c in connections]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    for connection in connections:
        connection.close()
    if failures:
        raise RuntimeError(f"issuance failed: {failures[0]}")
    return wall, latencies, locks


def database_backends(url: str) -> list[int]:
    """The PostgreSQL backends connected to the database at ``url`` (the broker's pool, after the warm-up)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")) as connection:
        rows = connection.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                  (name,)).fetchall()
    return [pid for (pid,) in rows]


def backends_cpu(pids: list[int], since: dict[int, float] | None = None) -> dict[int, float]:
    """The CPU of each backend so far, or (``since``) used since then (all of it for one not in ``since``); one
    that has ended is left out (its CPU is then missing from the figure: the run says so)."""
    used = {}
    for pid in pids:
        try:
            used[pid] = cpu_seconds(pid) - (since or {}).get(pid, 0.0)
        except FileNotFoundError:
            continue
    return used


def run(workers: int, requests: int, clients: int, warmup: int, aws: Process) -> dict[str, float]:
    from broker.runtime.devmode import DEV_ACCOUNTS, ensure_signing_key, free_port

    env = dict(os.environ)
    url, drop = _fresh_pg_database(PG_ADMIN_URL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "state").mkdir()
            private, _ = ensure_signing_key(Path(tmp) / "state")
            env.update({
                "BROKER_DATABASE_URL": url, "BROKER_SCOPES_DIR": str(TEST_SCOPES),
                "BROKER_AWS_ENDPOINT_URL": aws.url, "BROKER_SIGNING_KEY_FILE": str(private),
                "BROKER_SERVER_TIMING": "true", "BROKER_ACCOUNTS": json.dumps(DEV_ACCOUNTS),
                **{name: "0" for name in LIMIT_SETTINGS},
            })
            env.pop("BROKER_WORKERS", None)
            [key] = agent_keys(env, url, ["agent:demo"], Path(tmp) / "state" / "keys.json")
            port = free_port(0)
            broker = Process([str(BIN / "broker"), "serve", "--port", str(port), "--workers", str(workers)],
                             f"http://127.0.0.1:{port}", "/readyz", env=env)
            try:
                time.sleep(2.0 if workers > 1 else 0.5)  # every worker ready, not only the first to answer
                load(port, key, clients, warmup)
                tree, backends = process_tree(broker.process.pid), database_backends(url)
                at_start = backends_cpu(backends)
                before = [sum(cpu_seconds(pid) for pid in tree), cpu_seconds(aws.process.pid), 0.0,
                          time.process_time()]
                wall, latencies, locks = load(port, key, clients, requests)
                # NOTE: the pool opens connections as the clients press it: a backend that began during the run
                # counts whole (all its CPU is the run's).
                now_serving = database_backends(url)
                used = backends_cpu(sorted(set(backends) | set(now_serving)), since=at_start)
                after = [sum(cpu_seconds(pid) for pid in tree), cpu_seconds(aws.process.pid), sum(used.values()),
                         time.process_time()]
                if not set(backends) <= set(used):
                    print("  (a PostgreSQL backend of the broker ended during the run: its CPU is not all counted)")
            finally:
                broker.stop()
    finally:
        drop()
    broker_cpu, moto_cpu, pg_cpu, client_cpu = ((b - a) / requests * 1000 for a, b in zip(before, after, strict=True))
    figures = {"throughput": requests / wall, "lock_share": sum(locks) / 1000 / wall,
               # All the CPUs, busy with this issuance path and nothing else, could do no more than this.
               "ceiling": available_cpus() * 1000 / (broker_cpu + moto_cpu + pg_cpu + client_cpu)}
    print(f"== broker serve --workers {workers} (PostgreSQL), {clients} concurrent clients, {requests} issuances "
          f"({len(tree) - (workers > 1)} broker process(es))")
    print(f"  throughput          {figures['throughput']:7.1f} issuances/s")
    print(f"  client latency      p50 {percentile(latencies, .5):6.2f}  p99 {percentile(latencies, .99):6.2f} ms")
    print(f"  log lock held       p50 {percentile(locks, .5):6.2f}  p99 {percentile(locks, .99):6.2f}  "
          f"mean {statistics.mean(locks):5.2f} ms per issuance (two units of work); held "
          f"{figures['lock_share'] * 100:4.1f}% of the time")
    print(f"  CPU per issuance    broker {broker_cpu:5.2f} ms (all workers)  moto {moto_cpu:5.2f} ms  "
          f"PostgreSQL {pg_cpu:5.2f} ms (its backends for the broker)  client {client_cpu:5.2f} ms")
    print(f"  machine's ceiling   {figures['ceiling']:7.1f} issuances/s ({available_cpus()} CPUs / the CPU of all four "
          "per issuance: what no worker count can pass here)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    args = parser.parse_args()
    from broker.runtime.devmode import free_port, seed_aws
    from broker.storage.template_files import load_catalog

    # FAKE credentials for the FAKE AWS endpoint (this process seeds it; the broker signs its calls).
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-broker-secret")
    aws_port = free_port(0)
    aws = Process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(aws_port)], f"http://127.0.0.1:{aws_port}",
                  "/moto-api/data.json", env=dict(os.environ))
    try:
        seed_aws(aws.url, load_catalog(TEST_SCOPES))
        results = {n: run(n, args.requests, args.clients, args.warmup, aws)
                   for n in (int(part) for part in args.workers.split(","))}
    finally:
        aws.stop()
    if 1 in results:
        for n, figures in results.items():
            if n != 1:
                print(f"{n} workers / 1 worker: {figures['throughput'] / results[1]['throughput']:.2f}x")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on the machine moves "
          "every figure)")


if __name__ == "__main__":
    main()
