"""``GET /metrics``: counts by template and refusal code, latency histograms, one registry per app."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.runtime.metrics import METRIC_NAMES, BrokerMetrics, TimedMinter
from broker.errors import StsUnavailable
from tests.conftest import REFUSAL_BUDGET, TEST_SCOPES, build_harness

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


def refused_series(found) -> dict[tuple[str, str], float]:
    """``broker_requests_refused_total`` by (template, reason_code)."""
    return {(dict(labels)["template"], dict(labels)["reason_code"]): v for (name, labels), v in found.items()
            if name == "broker_requests_refused_total"}


def test_every_refusal_is_counted_once_suppressed_ones_included(budgeted):
    """The refusal budget logs N refusals, one refusals_suppressed entry and then a count: the metric
    still counts every refusal, once, as the count reaches the log (summary or next refusal)."""
    n = REFUSAL_BUDGET
    made = 0

    def refuse(count: int, body: dict, status: int, principal: str = "agent:demo") -> None:
        nonlocal made
        for _ in range(count):
            assert budgeted.post("/v1/requests", principal, json=body).status_code == status
        made += count

    unknown, bad = {**S3, "template": "no-such-x"}, {**S3, "parameters": {"prefix": "../x"}}
    refuse(n + 5, unknown, 404)                      # n refused, 1 refusals_suppressed, 4 counted
    refuse(2, bad, 422)                              # counted
    found = samples(budgeted)
    # Before the count reaches the log: the logged ones, the announced one included, by their labels.
    assert refused_series(found) == {("other", "template_not_found"): n + 1}
    assert value(found, "broker_log_entries_total", type="refusals_suppressed") == 1

    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals() == 1     # a refusals_suppressed_summary
    found = samples(budgeted)
    # The count carries no template (the budget does not keep it): "other", by its reason codes.
    assert refused_series(found) == {("other", "template_not_found"): n + 5, ("other", "invalid_parameter"): 2}
    assert sum(refused_series(found).values()) == made

    # Next window: a count carried on the principal's next refused entry instead of a summary.
    refuse(n + 3, bad, 422)
    budgeted.clock.advance(61)
    refuse(1, unknown, 404)
    carrier = budgeted.events()[-1]
    assert (carrier["type"], carrier["details"]["suppressed"]) == ("refused", 3)
    found = samples(budgeted)
    assert refused_series(found) == {("other", "template_not_found"): n + 5 + 1,
                                     ("other", "invalid_parameter"): 2 + (3 - 1),   # 1 was announced
                                     ("test-s3-read", "invalid_parameter"): n + 1}
    assert sum(refused_series(found).values()) == made
    # Shutdown closes the windows still open: still once each.
    refuse(n + 4, unknown, 404, principal="agent:other")
    budgeted.container.service.flush_suppressed_refusals(close_open=True)
    assert sum(refused_series(samples(budgeted)).values()) == made


def test_refusal_labels_stay_bounded_whoever_floods(budgeted):
    """Principal ids are never label values: a flood from many principals adds no series."""
    for principal in ("agent:demo", "agent:other", "human:bob", "human:dave"):
        for _ in range(REFUSAL_BUDGET + 3):
            budgeted.post("/v1/requests", principal, json={**S3, "template": "no-such-x"})
    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals() == 4
    text = budgeted.client.get("/metrics").text
    assert not any(principal in text for principal in budgeted.keys)
    assert refused_series(samples(budgeted)) == {("other", "template_not_found"): 4 * (REFUSAL_BUDGET + 3)}


@pytest.mark.parametrize("details, expected", [
    ({"suppressed": 3, "suppressed_by_reason": {"Invalid Parameter": 1, "x" * 200: 1, "ok_code": 1}},
     {"other": 2, "ok_code": 1}),
    ({"suppressed": 3, "suppressed_by_reason": {"a": 1}}, {"other": 3}),    # reasons not adding up
    ({"suppressed": "lots"}, {}),
])
def test_carried_counts_become_bounded_labels(details, expected):
    metrics = BrokerMetrics(known_template=lambda name: name == "t")
    metrics.observe_entries([{"seq": 1, "type": "refusals_suppressed_summary", "actor": "agent:x",
                              "details": details}])
    text = metrics.exposition()[0].decode()
    for code, count in expected.items():
        assert f'broker_requests_refused_total{{reason_code="{code}",template="other"}} {float(count)}' in text
    assert "agent:x" not in text
    assert text.count("broker_requests_refused_total{") == len(expected)


def test_only_refusal_entries_carry_counts():
    metrics = BrokerMetrics(known_template=lambda name: True)
    counted = {"suppressed": 5, "suppressed_by_reason": {"a": 5}}
    metrics.observe_entries([{"seq": 1, "type": "issued", "template": "t", "details": counted},
                             {"seq": 2, "type": "refusals_suppressed", "template": "t", "reason_code": "a",
                              "details": counted}])
    text = metrics.exposition()[0].decode()
    # The announcement: 1 with its own labels, plus the previous windows' count it carried.
    assert 'broker_requests_refused_total{reason_code="a",template="t"} 1.0' in text
    assert 'broker_requests_refused_total{reason_code="a",template="other"} 5.0' in text


def test_timed_minter_records_failures_and_reraises():
    metrics = BrokerMetrics(known_template=lambda name: True)

    class Refusing:
        def mint(self, order):
            raise StsUnavailable("no")

    with pytest.raises(StsUnavailable):
        TimedMinter(Refusing(), metrics.sts_duration).mint(None)
    assert 'broker_sts_assume_role_duration_seconds_count{outcome="error"} 1.0' in metrics.exposition()[0].decode()
