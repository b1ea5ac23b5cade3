"""A broker served over real HTTP (uvicorn in a thread on a free 127.0.0.1 port) for SDK and CLI tests."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_SCOPES, TEST_SCOPES, BrokerHarness, build_harness


@dataclass
class LiveBroker:
    url: str
    harness: BrokerHarness
    aws_endpoint: str
    state_dir: Path

    @property
    def keys(self) -> dict[str, str]:
        return self.harness.keys

    def client(self, principal: str = "agent:demo", **kwargs):
        from broker.sdk import BrokerClient

        return BrokerClient(self.url, token=self.keys[principal], **kwargs)

    def keys_file(self) -> Path:
        return self.state_dir / "dev-keys.json"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_harness(harness: BrokerHarness, port: int):
    import uvicorn

    from broker.api.app import server_config

    config = server_config(harness.client.app, host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread


def start_live_broker(*, scopes: Path, moto_server, tmp_path: Path, seed: bool) -> tuple[LiveBroker, object, object]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    state_dir = tmp_path / "state"
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'live.db'}", scopes=scopes,
                            aws_endpoint=moto_server.endpoint_url, state_dir=state_dir, seed=seed, public_url=url)
    server, thread = serve_harness(harness, port)
    return LiveBroker(url=url, harness=harness, aws_endpoint=moto_server.endpoint_url, state_dir=state_dir), server, \
        thread


@pytest.fixture
def live_broker(moto_server, tmp_path):
    """The test templates (tests/fixtures/scopes), served over HTTP."""
    live, server, thread = start_live_broker(scopes=TEST_SCOPES, moto_server=moto_server, tmp_path=tmp_path,
                                             seed=False)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    live.harness.container.database.engine.dispose()


@pytest.fixture
def live_repo_broker(moto_server, tmp_path):
    """The shipped templates (scopes/), their target roles seeded in moto, served over HTTP."""
    live, server, thread = start_live_broker(scopes=REPO_SCOPES, moto_server=moto_server, tmp_path=tmp_path,
                                             seed=True)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    live.harness.container.database.engine.dispose()
