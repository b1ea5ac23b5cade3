"""Two real broker processes (``broker serve``) on one PostgreSQL database and one moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from broker.runtime.devmode import DEV_ACCOUNTS, DEV_PRINCIPALS, ensure_signing_key, free_port, seed_principals
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate
from tests.conftest import TEST_PRINCIPALS, TEST_SCOPES, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


@dataclass
class Replica:
    name: str
    url: str
    process: subprocess.Popen
    log_file: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=httpx.Timeout(60.0))

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]


@dataclass
class Cluster:
    replicas: list[Replica]
    keys: dict[str, str]
    database_url: str

    def auth(self, principal: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[principal]}"}


def wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            pytest.fail(f"broker replica {replica.name} exited with {replica.process.returncode}:\n"
                        f"{replica.output()}")
        try:
            if httpx.get(replica.url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"broker replica {replica.name} not ready after {START_TIMEOUT}s:\n{replica.output()}")


def stop(replica: Replica) -> None:
    stop_process(replica.process, timeout=15)


def start_replica(name: str, *, database_url: str, signing_key: Path, aws_endpoint: str, log_dir: Path,
                  serve_args: tuple[str, ...] = (), **settings: str) -> Replica:
    port = free_port(0)
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": database_url,
        "BROKER_SIGNING_KEY_FILE": str(signing_key),
        "BROKER_SCOPES_DIR": str(TEST_SCOPES),
        "BROKER_AWS_ENDPOINT_URL": aws_endpoint,
        "BROKER_HOST": "127.0.0.1",
        "BROKER_PORT": str(port),
        "BROKER_ACCOUNTS": json.dumps(DEV_ACCOUNTS),
        "BROKER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        # The tests drive hundreds of requests per minute from two agents: no rate limits here.
        "BROKER_AGENT_REQUESTS_PER_MINUTE": "0",
        "BROKER_TEMPLATE_REQUESTS_PER_MINUTE": "0",
        "BROKER_AGENT_MAX_LIVE_GRANTS": "0",
        # ... and every refusal its own entry (the tests count entries); a test may set a budget.
        "BROKER_REFUSALS_PER_MINUTE": "0",
        # moto is FAKE AWS: these are the broker's fake credentials for calling it.
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "fake-broker-secret"),
        **{f"BROKER_{key.upper()}": value for key, value in settings.items()},
    }
    env.pop("BROKER_CONFIG_FILE", None)
    log_file = log_dir / f"replica-{name}.log"
    with log_file.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "broker.cli.main", "serve", *serve_args], cwd=REPO_ROOT,
                                   env=env, stdout=sink, stderr=subprocess.STDOUT)
    return Replica(name=name, url=f"http://127.0.0.1:{port}", process=process, log_file=log_file)


@pytest.fixture
def cluster(pg_url, moto_server, tmp_path, request) -> Iterator[Cluster]:
    """Replicas A and B of one broker: same database, same signing key, same templates, same AWS
    (indirect parametrization: settings for both, as ``{name: value}``)."""
    settings = getattr(request, "param", {})
    engine = build_engine(pg_url)
    migrate(engine)  # once, before either replica starts (each would otherwise race to migrate)
    keys = seed_principals(Database(engine), tmp_path / "keys.json", {**DEV_PRINCIPALS, **TEST_PRINCIPALS})
    engine.dispose()
    (tmp_path / "state").mkdir()
    signing_key, _public = ensure_signing_key(tmp_path / "state")
    replicas: list[Replica] = []
    try:
        for name in ("A", "B"):
            replicas.append(start_replica(name, database_url=pg_url, signing_key=signing_key,
                                          aws_endpoint=moto_server.endpoint_url, log_dir=tmp_path, **settings))
        for replica in replicas:
            wait_ready(replica)
        yield Cluster(replicas=replicas, keys=keys, database_url=pg_url)
    finally:
        for replica in replicas:
            stop(replica)
