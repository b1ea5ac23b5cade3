"""Fixtures of the CLI tests: an agent's environment against a broker served over HTTP."""

from __future__ import annotations

import pytest

from tests.sdk.conftest import live_broker  # noqa: F401 - fixture


@pytest.fixture
def agent_env(live_broker, tmp_path, monkeypatch):  # noqa: F811
    """The agent's environment: broker URL and token, a private cache dir, no ambient AWS identity."""
    monkeypatch.setenv("BROKER_URL", live_broker.url)
    monkeypatch.setenv("BROKER_TOKEN", live_broker.keys["agent:demo"])
    for name in ("BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BROKER_CACHE_DIR", str(cache))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return live_broker, cache


