"""``GET /metrics``: counts by template and refusal code, latency histograms, one registry per app."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import METRIC_NAMES, BrokerMetrics, TimedMinter
from broker.errors import StsUnavailable
from tests.conftest import TEST_SCOPES, build_harness

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}
PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out checkout"}


def samples(broker) -> dict[tuple[str, frozenset], float]:
    response = broker.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(found, name: str, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_counts_follow_the_log_by_template_and_reason(sqlite_broker):
    broker = sqlite_broker
    for _ in range(2):
        assert broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201
    bad = broker.post("/v1/requests", "agent:demo", json={**S3, "parameters": {"prefix": "../x"}})
    assert bad.status_code == 422
    assert broker.post("/v1/requests", "agent:demo", json={**S3, "template": "no-such-x"}).status_code == 404
    pending = broker.post("/v1/requests", "agent:demo", json=PROD)
    assert pending.status_code == 202
    deny = broker.post(f"/v1/requests/{pending.json()['id']}/approvals", "human:bob",
                       json={"decision": "deny", "reason": "not today"})
    assert deny.status_code == 200

    found = samples(broker)
    assert value(found, "broker_credentials_issued_total", template="test-s3-read") == 2
    assert value(found, "broker_requests_refused_total", template="test-s3-read",
                 reason_code="invalid_parameter") == 1
    # An unknown template name never becomes a label value (unbounded series); it is "other".
    assert value(found, "broker_requests_refused_total", template="other", reason_code="template_not_found") == 1
    assert not any("no-such-x" in str(labels) for _name, labels in found)
    assert value(found, "broker_requests_pending_total", template="test-prod-ecs") == 1
    assert value(found, "broker_requests_denied_total", template="test-prod-ecs") == 1
    assert value(found, "broker_log_entries_total", type="requested") == 3
    assert value(found, "broker_log_last_seq") == len(broker.events())
    # Latency: one observation per POST /v1/requests, labelled by the route template, not the raw path.
    posts = sum(v for (name, labels), v in found.items() if name == "broker_http_request_duration_seconds_count"
                and ("route", "/v1/requests") in labels and ("method", "POST") in labels)
    assert posts == 5
    approvals_route = "/v1/requests/{request_id}/approvals"
    assert any(("route", approvals_route) in labels for _name, labels in found)
    assert value(found, "broker_sts_assume_role_duration_seconds_count", outcome="ok") == 2


def test_unmatched_paths_are_one_label(sqlite_broker):
    for path in ("/nope/1", "/nope/2", "/v1/requests/x/y/z"):
        sqlite_broker.client.get(path)
    routes = {dict(labels).get("route") for name, labels in samples(sqlite_broker)
              if name == "broker_http_request_duration_seconds_count"}
    assert "unmatched" in routes
    assert not any(r and r.startswith("/nope") for r in routes)


def test_every_app_has_its_own_registry(moto_server, tmp_path):
    first = build_harness(db_url=f"sqlite:///{tmp_path / 'a.db'}", scopes=TEST_SCOPES,
                          aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "a")
    second = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                           aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "b")
    assert first.post("/v1/requests", "agent:demo", json=S3).status_code == 201
    assert value(samples(first), "broker_credentials_issued_total", template="test-s3-read") == 1
    assert value(samples(second), "broker_credentials_issued_total", template="test-s3-read") == 0


def test_metric_names_are_documented_and_exposed(sqlite_broker):
    assert sqlite_broker.post("/v1/requests", "agent:demo", json=S3).status_code == 201
    text = sqlite_broker.client.get("/metrics").text
    for name in METRIC_NAMES:
        assert f"# HELP {name} " in text, name


def test_nothing_secret_in_metrics(sqlite_broker):
    body = sqlite_broker.post("/v1/requests", "agent:demo", json=S3).json()
    text = sqlite_broker.client.get("/metrics").text
    for secret in (body["credentials"]["secret_access_key"], body["credentials"]["session_token"],
                   body["credentials"]["access_key_id"], *sqlite_broker.keys.values()):
        assert secret not in text


@pytest.mark.parametrize("code", [None, 7, "", "Invalid Parameter", "x" * 200, "drop table;", "ünïcode"])
def test_hostile_reason_codes_become_other(code):
    metrics = BrokerMetrics(known_template=lambda name: name == "t")
    metrics.observe_entries([{"seq": 1, "type": "refused", "template": "t", "reason_code": code}])
    text = metrics.exposition()[0].decode()
    assert 'broker_requests_refused_total{reason_code="other",template="t"} 1.0' in text


def test_timed_minter_records_failures_and_reraises():
    metrics = BrokerMetrics(known_template=lambda name: True)

    class Refusing:
        def mint(self, order):
            raise StsUnavailable("no")

    with pytest.raises(StsUnavailable):
        TimedMinter(Refusing(), metrics.sts_duration).mint(None)
    assert 'broker_sts_assume_role_duration_seconds_count{outcome="error"} 1.0' in metrics.exposition()[0].decode()
