"""X-Forwarded-For is believed only from proxies the operator named (issue 15 item 8).

uvicorn trusts forwarding headers from loopback by default, so any local client could write the
``source_ip`` of its own log entries.  ``BROKER_TRUSTED_PROXIES`` (default: none) names the proxies
whose header is read; from any other peer the logged address is the TCP peer's.  Through a real
uvicorn server (tests/live_server.py), configured the way ``broker serve`` configures it.
"""

from __future__ import annotations

import httpx
import pytest

from broker.errors import InvalidInput
from broker.settings import BrokerSettings, trusted_proxy_networks
from tests.conftest import TEST_SCOPES, build_harness
from tests.live_server import serve

FORGED = "203.0.113.9"
REQUEST = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the reports"}


def _logged_source(moto_server, tmp_path, **settings) -> str | None:
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", **settings)
    try:
        with serve(harness.client.app) as server:
            answer = httpx.post(f"{server.url}/v1/requests", json=REQUEST, timeout=30,
                                headers={**harness.auth("agent:demo"), "X-Forwarded-For": FORGED,
                                         "X-Forwarded-Proto": "https"})
        assert answer.status_code == 201, answer.text
        issued = [e for e in harness.events() if e["type"] == "issued"]
        assert len(issued) == 1
        return issued[0]["source_ip"]
    finally:
        harness.container.database.engine.dispose()


@pytest.mark.parametrize("trusted", ["", "10.0.0.0/8", "::1"])
def test_a_forwarded_header_from_an_untrusted_peer_is_ignored(moto_server, tmp_path, trusted):
    assert _logged_source(moto_server, tmp_path, trusted_proxies=trusted) == "127.0.0.1"


@pytest.mark.parametrize("trusted", ["127.0.0.1", "127.0.0.0/8, 10.0.0.0/8"])
def test_a_named_proxy_is_believed(moto_server, tmp_path, trusted):
    assert _logged_source(moto_server, tmp_path, trusted_proxies=trusted) == FORGED


@pytest.mark.parametrize(("value", "expected"), [
    ("", []),
    ("10.0.0.1", ["10.0.0.1/32"]),
    ("10.0.0.0/8 192.168.1.7,  fd00::/8", ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]),
])
def test_trusted_proxies_parse(value, expected):
    assert trusted_proxy_networks(BrokerSettings(trusted_proxies=value)) == expected


@pytest.mark.parametrize("value", ["*", "proxy.internal", "10.0.0.0/33", "127.0.0.1:8080"])
def test_trusted_proxies_must_be_addresses_or_networks(value):
    with pytest.raises(InvalidInput) as caught:
        trusted_proxy_networks(BrokerSettings(trusted_proxies=value))
    assert caught.value.code == "config_invalid"
