"""The issuance log over the HTTP API for reviewers, on SQLite and PostgreSQL, against moto.

Reviewer-only access, filters and pagination, export verified offline by ``broker audit verify``,
CloudTrail correlation, the report's numbers, refusal codes, and no secret anywhere in the log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from broker.cli.main import main
from broker.domain import log as issuance_log
from tests.conftest import REFUSAL_BUDGET

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}
PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out checkout 1.2.3"}
BAD_LOGS = {"template": "test-logs", "parameters": {"log_group": "/var/log/x"}, "reason": "x"}


@dataclass
class Traffic:
    """What a small mixed workload produced: ids and credentials, to check the log against."""

    issued: list[dict] = field(default_factory=list)  # response bodies of 201s
    refused: int = 0
    prod: list[dict] = field(default_factory=list)  # redeemed production requests (201 bodies)


def issue(broker, principal: str = "agent:demo", payload: dict = S3) -> dict:
    response = broker.post("/v1/requests", principal, json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def approve(broker, request_id: str, who: str) -> None:
    response = broker.post(f"/v1/requests/{request_id}/approvals", who,
                           json={"decision": "approve", "reason": "checked the diff"})
    assert response.status_code == 200, response.text


def production_grant(broker, *, wait_seconds: float) -> dict:
    """A production request co-signed by bob then carol ``wait_seconds`` later, then redeemed."""
    pending = broker.post("/v1/requests", "agent:demo", json=PROD)
    assert pending.status_code == 202, pending.text
    request_id = pending.json()["id"]
    approve(broker, request_id, "human:bob")
    broker.clock.advance(wait_seconds)
    approve(broker, request_id, "human:carol")
    redeemed = broker.post(f"/v1/requests/{request_id}/credentials", "agent:demo")
    assert redeemed.status_code == 201, redeemed.text
    return redeemed.json()


def run_traffic(broker) -> Traffic:
    traffic = Traffic()
    traffic.issued.append(issue(broker))
    broker.clock.advance(60)
    traffic.issued.append(issue(broker, "agent:other"))
    assert broker.post("/v1/requests", "agent:demo", json=BAD_LOGS).status_code == 422
    traffic.refused += 1
    broker.clock.advance(60)
    traffic.issued.append(issue(broker))
    traffic.prod.append(production_grant(broker, wait_seconds=120))
    traffic.prod.append(production_grant(broker, wait_seconds=300))
    return traffic


def page(broker, principal: str = "human:rita", **params):
    response = broker.get("/v1/events", principal, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def entry_lines(lines: list[bytes]) -> list[bytes]:
    """An export's entry lines (not its checkpoints or its export statement)."""
    return [raw for raw in lines if not raw.startswith((b'{"checkpoint":', b'{"export":'))]


def export(broker) -> bytes:
    response = broker.get("/v1/events/export", "human:rita")
    assert response.status_code == 200, response.text
    return response.content


def verify_file(tmp_path, broker, content: bytes) -> int:
    key = tmp_path / "log-public-key.pem"
    key.write_text(broker.client.get("/v1/events/public-key").text)
    exported = tmp_path / "export.jsonl"
    exported.write_bytes(content)
    return main(["audit", "verify", str(exported), "--public-key", str(key)])


# ------------------------------------------------------------------------------------ access
REVIEWER_ONLY = [
    pytest.param("GET", "/v1/events", id="list"),
    pytest.param("GET", "/v1/events/export", id="export"),
    pytest.param("GET", "/v1/events/report?since=7d", id="report"),
    pytest.param("GET", "/v1/events/correlate?source_identity=agent.demo", id="correlate"),
    pytest.param("POST", "/v1/events/checkpoints", id="checkpoint"),
]


@pytest.mark.parametrize(("method", "path"), REVIEWER_ONLY)
def test_the_log_is_for_reviewers(broker, method, path):
    issue(broker)
    for principal, status in [("agent:demo", 403), ("human:bob", 403), ("human:rita", 200), ("human:root", 200)]:
        response = broker.client.request(method, path, headers=broker.auth(principal))
        assert response.status_code == status, (principal, response.text)
        if status == 403:
            assert response.json()["error"]["code"] == "role_required"
            assert "ASIA" not in response.text


@pytest.mark.parametrize("path", [p.values[1] for p in REVIEWER_ONLY if p.values[0] == "GET"])
def test_the_log_needs_a_credential(broker, path):
    assert broker.client.get(path).status_code == 401


def test_the_public_key_is_public_and_verifies_checkpoints(broker):
    issue(broker)
    pem = broker.client.get("/v1/events/public-key")
    assert pem.status_code == 200
    key = issuance_log.load_public_key(pem.content)
    checkpoint = issuance_log.Checkpoint.from_dict(broker.post("/v1/events/checkpoints", "human:rita").json())
    assert checkpoint.seq == len(broker.events())
    assert issuance_log.verify_checkpoint(checkpoint, key)


# ------------------------------------------------------------------------------------ filters
FILTERS = {
    "agent": lambda t: ("agent:demo", lambda e: e["actor"] == "agent:demo"),
    "human": lambda t: ("human:bob", lambda e: e["acts_for"] == "human:bob"),
    "template": lambda t: ("test-prod-ecs", lambda e: e["template"] == "test-prod-ecs"),
    "type": lambda t: ("refused", lambda e: e["type"] == "refused"),
    "request_id": lambda t: (t.prod[0]["id"], lambda e: e["request_id"] == t.prod[0]["id"]),
    "access_key_id": lambda t: (t.issued[1]["credentials"]["access_key_id"],
                                lambda e: e["access_key_id"] == t.issued[1]["credentials"]["access_key_id"]),
    "grant_id": lambda t: (t.issued[0]["grant"]["id"], lambda e: e["grant_id"] == t.issued[0]["grant"]["id"]),
}


def test_each_filter_returns_exactly_the_matching_entries(broker):
    traffic = run_traffic(broker)
    everything = broker.events()
    for name, make in FILTERS.items():
        value, matches = make(traffic)
        expected = [e["seq"] for e in everything if matches(e)]
        got = [e["seq"] for e in page(broker, **{name: value}, limit=1000)["events"]]
        assert expected, f"the workload produced no entry for filter {name}"
        assert got == expected, name
    combined = page(broker, agent="agent:demo", type="issued", template="test-s3-read")["events"]
    assert len(combined) == 2
    assert page(broker, agent="agent:nobody")["events"] == []


def test_time_range_filters_by_entry_time(broker):
    start = broker.clock.now()
    run_traffic(broker)
    everything = broker.events()
    until = issuance_log.log_time(start.replace(microsecond=0) + _seconds(60))
    since = until
    before = page(broker, until=until, limit=1000)["events"]
    after = page(broker, since=since, limit=1000)["events"]
    assert before and after
    assert all(e["time"] < until for e in before)
    assert all(e["time"] >= since for e in after)
    assert [e["seq"] for e in before + after] == [e["seq"] for e in everything]
    bad = broker.get("/v1/events", "human:rita", params={"since": "yesterday-ish"})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "since"


def _seconds(n: float):
    from datetime import timedelta

    return timedelta(seconds=n)


@pytest.mark.parametrize("limit", [1, 2, 7])
def test_pagination_walks_the_whole_log_once(broker, limit):
    run_traffic(broker)
    everything = [e["seq"] for e in broker.events()]
    seen: list[int] = []
    after = 0
    for _ in range(len(everything) + 2):
        body = page(broker, after_seq=after, limit=limit)
        assert len(body["events"]) <= limit
        seen += [e["seq"] for e in body["events"]]
        if body["next_after_seq"] is None:
            break
        after = body["next_after_seq"]
    assert seen == everything


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"after_seq": -1}, {"limit": "x"}])
def test_bad_paging_parameters_are_422(broker, params):
    response = broker.get("/v1/events", "human:rita", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"]


# ------------------------------------------------------------------------------------ export
def test_export_verifies_offline_with_the_served_key(broker, tmp_path, capsys):
    run_traffic(broker)
    content = export(broker)
    lines = content.splitlines()
    assert len(entry_lines(lines)) == len(broker.events())
    assert lines[-2].startswith(b'{"export":') and lines[-1].startswith(b'{"checkpoint":')
    assert verify_file(tmp_path, broker, content) == 0
    assert "verified" in capsys.readouterr().out
    report = issuance_log.verify_export(lines, issuance_log.load_public_key(
        broker.client.get("/v1/events/public-key").content), require_genesis=True)
    assert report.ok and report.entries == len(entry_lines(lines)) and report.full


@pytest.mark.parametrize("field_name", ["actor", "template", "access_key_id", "reason_code"])
def test_an_edited_export_fails_naming_the_entry(broker, tmp_path, capsys, field_name):
    run_traffic(broker)
    lines = export(broker).splitlines()
    victim = next(i for i, raw in enumerate(lines[:-2]) if json.loads(raw).get(field_name))
    entry = json.loads(lines[victim])
    entry[field_name] = "tampered"
    lines[victim] = issuance_log.entry_line(entry)
    assert verify_file(tmp_path, broker, b"\n".join(lines) + b"\n") == 1
    out = capsys.readouterr()
    assert f"seq {entry['seq']}" in out.out + out.err


def test_a_removed_entry_fails_naming_it(broker, tmp_path, capsys):
    run_traffic(broker)
    lines = export(broker).splitlines()
    removed = json.loads(lines[3])["seq"]
    assert verify_file(tmp_path, broker, b"\n".join(lines[:3] + lines[4:]) + b"\n") == 1
    out = capsys.readouterr()
    assert f"seq {removed}" in out.out + out.err


def test_export_since_starts_mid_log_and_still_verifies(broker, tmp_path):
    run_traffic(broker)
    broker.clock.advance(3600)
    issue(broker)
    response = broker.get("/v1/events/export", "human:rita", params={"since": "10m"})
    assert response.status_code == 200
    lines = response.content.splitlines()
    assert [json.loads(raw)["type"] for raw in entry_lines(lines)] == ["requested", "issued"]
    assert verify_file(tmp_path, broker, response.content) == 0


# ------------------------------------------------------------------------------------ correlation
def test_correlation_by_access_key_id_gives_request_template_and_approvals(broker):
    traffic = run_traffic(broker)
    grant = traffic.prod[0]
    response = broker.get("/v1/events/correlate", "human:rita",
                          params={"access_key_id": grant["credentials"]["access_key_id"]})
    assert response.status_code == 200, response.text
    (match,) = response.json()["matches"]
    assert match["request"]["id"] == grant["id"]
    assert match["request"]["template"] == "test-prod-ecs"
    assert match["request"]["requester"] == "agent:demo"
    assert match["request"]["acts_for"] == "human:alice"
    assert [(a["approver"], a["decision"]) for a in match["approvals"]] == [("human:bob", "approve"),
                                                                          ("human:carol", "approve")]
    assert match["grant"]["source_identity"] == "agent.demo"
    assert {e["type"] for e in match["events"]} >= {"requested", "pending", "approved", "issued"}
    assert "secret_access_key" not in response.text


def test_correlation_by_source_identity_finds_every_grant_of_the_agent(broker):
    traffic = run_traffic(broker)
    response = broker.get("/v1/events/correlate", "human:rita", params={"source_identity": "agent.demo"})
    assert response.status_code == 200, response.text
    found = {m["grant"]["access_key_id"] for m in response.json()["matches"]}
    demo = [b for b in traffic.issued + traffic.prod if b["requester"] == "agent:demo"]
    assert found == {b["credentials"]["access_key_id"] for b in demo}
    assert {m["request"]["template"] for m in response.json()["matches"]} == {"test-s3-read", "test-prod-ecs"}


@pytest.mark.parametrize(("params", "status", "code"), [
    ({}, 422, "missing_filter"),
    ({"access_key_id": "ASIANOSUCHKEY0000000"}, 404, "grant_not_found"),
    ({"source_identity": "agent.nobody"}, 404, "grant_not_found"),
])
def test_correlation_misses_are_clear(broker, params, status, code):
    issue(broker)
    response = broker.get("/v1/events/correlate", "human:rita", params=params)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


# ------------------------------------------------------------------------------------ report
def test_report_counts_and_median_time_to_approve(broker):
    run_traffic(broker)
    response = broker.get("/v1/events/report", "human:rita", params={"since": "7d"})
    assert response.status_code == 200, response.text
    report = response.json()
    rows = {(r["agent"], r["template"]): r for r in report["by_agent_and_template"]}
    demo_s3, other_s3 = rows[("agent:demo", "test-s3-read")], rows[("agent:other", "test-s3-read")]
    assert (demo_s3["issued"], demo_s3["refused"]) == (2, 0)
    assert (other_s3["issued"], other_s3["refused"]) == (1, 0)
    assert rows[("agent:demo", "test-logs")]["refused"] == 1
    prod = rows[("agent:demo", "test-prod-ecs")]
    assert prod["issued"] == 2
    assert prod["median_time_to_approve_seconds"] == pytest.approx((120 + 300) / 2)
    assert demo_s3["median_time_to_approve_seconds"] is None
    assert [r["reason_code"] for r in report["refusals"]] == ["invalid_parameter"]
    # Refusals come first in the table.
    assert report["by_agent_and_template"][0]["refused"] >= 1


def report_of(broker) -> dict:
    response = broker.get("/v1/events/report", "human:rita", params={"since": "7d"})
    assert response.status_code == 200, response.text
    return response.json()


def test_report_counts_suppressed_refusals_and_shows_the_flooder_first(budgeted):
    n, flood = REFUSAL_BUDGET, 9
    unknown = {**S3, "template": "no-such-x"}
    for _ in range(n + flood):
        assert budgeted.post("/v1/requests", "agent:demo", json=unknown).status_code == 404
    assert budgeted.post("/v1/requests", "agent:other", json={**S3, "parameters": {"prefix": "../x"}}).status_code == 422
    issue(budgeted)

    # While the flooder's window is open: its announced refusal counts, the rest is awaited.
    report = report_of(budgeted)
    flooder, other = report["refusals_by_principal"]
    assert flooder == {"principal": "agent:demo", "refused": n + 1, "logged_one_by_one": n, "suppressed": 1,
                       "suppressed_by_reason": {"template_not_found": 1}, "suppression_windows": 1,
                       "windows_awaiting_count": 1}
    assert (other["principal"], other["refused"], other["suppressed"]) == ("agent:other", 1, 0)

    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals() == 1
    report = report_of(budgeted)
    flooder, other = report["refusals_by_principal"]
    assert flooder == {"principal": "agent:demo", "refused": n + flood, "logged_one_by_one": n,
                       "suppressed": flood, "suppressed_by_reason": {"template_not_found": flood},
                       "suppression_windows": 1, "windows_awaiting_count": 0}
    assert (report["refused_total"], report["suppressed_total"]) == (n + flood + 1, flood)
    # The existing figures stay: per template, refusals that have an entry (the announcement is one).
    rows = {(r["agent"], r["template"]): r for r in report["by_agent_and_template"]}
    assert rows[("agent:demo", "no-such-x")]["refused"] == n + 1
    assert rows[("agent:demo", "test-s3-read")]["issued"] == 1
    assert ("agent:demo", "?") not in rows                              # the summary is a count, not a row
    assert [r["type"] for r in report["refusals"]] == ["refused"] * n + ["refusals_suppressed", "refused"]
    assert {r["reason_code"] for r in report["refusals"]} == {"template_not_found", "invalid_parameter"}

    # A second window whose count rides on the flooder's next refusal: every refusal still once.
    for _ in range(n + 4):
        budgeted.post("/v1/requests", "agent:demo", json=BAD_LOGS)
    budgeted.clock.advance(61)
    budgeted.post("/v1/requests", "agent:demo", json=unknown)
    flooder = report_of(budgeted)["refusals_by_principal"][0]
    assert (flooder["refused"], flooder["logged_one_by_one"], flooder["suppressed"]) == (
        2 * n + flood + 5, 2 * n + 1, flood + 4)
    assert flooder["suppressed_by_reason"] == {"invalid_parameter": 4, "template_not_found": flood}
    assert (flooder["suppression_windows"], flooder["windows_awaiting_count"]) == (2, 0)


def test_report_since_excludes_older_entries(broker):
    run_traffic(broker)
    broker.clock.advance(8 * 24 * 3600)
    issue(broker)
    rows = broker.get("/v1/events/report", "human:rita", params={"since": "7d"}).json()["by_agent_and_template"]
    assert [(r["agent"], r["template"], r["issued"]) for r in rows] == [("agent:demo", "test-s3-read", 1)]


# ------------------------------------------------------------------------------------ contents
def test_a_refusal_carries_its_reason_code(broker):
    response = broker.post("/v1/requests", "agent:demo", json=BAD_LOGS)
    assert response.status_code == 422
    (refused,) = page(broker, type="refused")["events"]
    assert refused["reason_code"] == response.json()["error"]["code"] == "invalid_parameter"
    assert refused["actor"] == "agent:demo" and refused["acts_for"] == "human:alice"
    assert refused["template"] == "test-logs"


def test_issued_entries_carry_what_reviewers_need(broker):
    body = issue(broker)
    (issued,) = page(broker, type="issued")["events"]
    assert issued["access_key_id"] == body["credentials"]["access_key_id"]
    assert issued["expiration"] == body["grant"]["expiration"]
    assert issued["policy_digest"] == body["policy_digest"]
    assert issued["template_digest"] == body["template_digest"]
    assert issued["parameters"] == {"account": "123456789012", "prefix": "reports"}
    assert issued["acts_for"] == "human:alice"
    assert issued["source_ip"]


def test_no_secret_anywhere_in_the_log(broker):
    traffic = run_traffic(broker)
    secrets = [value for body in traffic.issued + traffic.prod
               for value in (body["credentials"]["secret_access_key"], body["credentials"]["session_token"])]
    secrets += list(broker.keys.values())  # the API keys of every principal
    assert len(secrets) == 2 * 5 + len(broker.keys)
    exported = export(broker).decode()
    listed = json.dumps(page(broker, limit=1000))
    report = broker.get("/v1/events/report", "human:rita", params={"since": "7d"}).text
    correlated = broker.get("/v1/events/correlate", "human:rita", params={"source_identity": "agent.demo"}).text
    for text in (exported, listed, report, correlated):
        leaked = [s[:6] for s in secrets if s in text]
        assert leaked == []
    # The secret half of an API key (after the key id) is absent too, not just the whole token.
    # Format brk_<key id>_<secret>: the secret may itself contain "_", so split at the first two only.
    secret_parts = [token.split("_", 2)[2] for token in broker.keys.values()]
    assert all(len(part) >= 40 for part in secret_parts)
    assert not any(part in exported for part in secret_parts)


# ------------------------------------------------------------------------------------ dev mode
def test_dev_mode_writes_the_served_public_key(tmp_path):
    from fastapi.testclient import TestClient

    from broker.api.app import create_app
    from broker.cli.server import prepare_dev
    from tests.conftest import TEST_SCOPES

    state = tmp_path / "state"
    container, aws, _keys = prepare_dev(port=8080, scopes=TEST_SCOPES, state_dir=state, aws_port=0)
    try:
        written = (state / "log-public-key.pem").read_bytes()
        served = TestClient(create_app(container)).get("/v1/events/public-key")
        assert served.status_code == 200
        assert served.content == written
        assert issuance_log.key_id_of(issuance_log.load_public_key(written)) == container.signer.key_id
    finally:
        aws.stop()
        container.database.engine.dispose()


def test_latest_checkpoint_is_read_not_taken(broker):
    assert broker.get("/v1/events/checkpoints/latest", "human:rita").json()["error"]["code"] == "checkpoint_not_found"
    assert broker.get("/v1/events/checkpoints/latest", "agent:demo").status_code == 403
    taken = broker.post("/v1/events/checkpoints", "human:rita").json()
    assert broker.get("/v1/events/checkpoints/latest", "human:rita").json() == taken
