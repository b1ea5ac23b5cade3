"""`broker audit query|export|report` against a real local HTTP server with canned answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.cli.audit import render_report
from broker.cli.main import main
from tests.conftest import REFUSAL_BUDGET
from tests.live_server import serve

EVENT = {"seq": 7, "time": "2024-05-01T12:00:00.000000Z", "type": "issued", "actor": "agent:demo",
         "template": "s3-read", "request_id": "r-1", "access_key_id": "ASIA0000000000000007"}
EXPORT = b'{"seq":1}\n{"checkpoint":{}}\n'
REPORT = {
    "since": "2024-04-24T12:00:00.000000Z",
    "rows": [{"agent": "agent:demo", "template": "s3-read", "issued": 3, "refused": 0,
              "approvals": 0, "median_time_to_approve_seconds": None}],
    "refusals": [{"agent": "agent:evil", "template": "iam-admin", "reason_code": "guardrail"}],
    "destructive_grants": [{"agent": "agent:ops", "template": "ec2-terminate",
                            "median_time_to_approve_seconds": 252}],
}


class CannedBroker(BaseHTTPRequestHandler):
    """Answers like the broker API; records what it was asked."""

    seen: list[tuple[str, dict, str | None]] = []
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.seen.append((url.path, query, self.headers.get("Authorization")))
        if self.status != 200:
            body = json.dumps({"error": {"code": "forbidden", "message": "Reviewers only."}})
            return self._send(self.status, body.encode(), "application/json")
        if url.path == "/v1/events":
            after = int(query.get("after_seq", 0))
            page = {"events": [dict(EVENT, seq=after + 1)],
                    "next_after_seq": after + 1 if after < 2 else None}
            return self._send(200, json.dumps(page).encode(), "application/json")
        if url.path == "/v1/events/export":
            return self._send(200, EXPORT, "application/x-ndjson")
        if url.path == "/v1/events/report":
            return self._send(200, json.dumps(REPORT).encode(), "application/json")
        return self._send(404, b"{}", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        return None


@pytest.fixture
def broker_url(monkeypatch):
    CannedBroker.seen, CannedBroker.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), CannedBroker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("BROKER_URL", url)
    monkeypatch.setenv("BROKER_TOKEN", "test-token")
    yield url
    server.shutdown()
    server.server_close()


def test_query_prints_a_table_and_sends_filters(broker_url, capsys):
    code = main(["audit", "query", "--agent", "agent:demo", "--since", "7d", "--type", "issued"])
    out = capsys.readouterr().out
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["SEQ", "TIME", "TYPE", "ACTOR", "TEMPLATE", "REQUEST", "ID",
                              "ACCESS", "KEY", "ID"]
    assert row.split() == ["1", EVENT["time"], "issued", "agent:demo", "s3-read", "r-1",
                           EVENT["access_key_id"]]
    path, query, auth = CannedBroker.seen[0]
    assert path == "/v1/events" and auth == "Bearer test-token"
    assert query == {"agent": "agent:demo", "since": "7d", "type": "issued"}


def test_query_all_follows_pages_and_prints_json(broker_url, capsys):
    assert main(["audit", "query", "--all", "--format", "json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [event["seq"] for event in events] == [1, 2, 3]
    assert [query.get("after_seq") for _, query, _ in CannedBroker.seen] == [None, "1", "2"]


def test_query_refuses_a_bad_since_before_calling(broker_url, capsys):
    assert main(["audit", "query", "--since", "last tuesday"]) == 1
    assert "invalid_time" in capsys.readouterr().err and CannedBroker.seen == []


def test_export_writes_the_stream(broker_url, tmp_path):
    out = tmp_path / "log.jsonl"
    assert main(["audit", "export", "--since", "24h", "-o", str(out)]) == 0
    assert out.read_bytes() == EXPORT
    assert CannedBroker.seen[0][:2] == ("/v1/events/export", {"since": "24h"})


def test_report_puts_refusals_and_destructive_grants_first(broker_url, capsys):
    assert main(["audit", "report"]) == 0
    out = capsys.readouterr().out
    assert out.index("REFUSALS") < out.index("DESTRUCTIVE GRANTS") < out.index("ROWS")
    assert "agent:evil" in out and "4m 12s" in out
    assert CannedBroker.seen[0][:2] == ("/v1/events/report", {"since": "7d"})


def test_report_from_a_live_broker_shows_the_flooding_agent_first(budgeted, capsys):
    flood = 6
    for _ in range(REFUSAL_BUDGET + flood):
        budgeted.post("/v1/requests", "agent:demo", json={"template": "no-such-x", "parameters": {}, "reason": "x"})
    budgeted.post("/v1/requests", "agent:other", json={"template": "no-such-y", "parameters": {}, "reason": "y"})
    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals() == 1
    with serve(budgeted.client.app) as server:
        argv = ["audit", "report", "--url", server.url, "--token", budgeted.keys["human:rita"]]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert main([*argv, "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
    lines = out.splitlines()
    assert f"refused total: {REFUSAL_BUDGET + flood + 1}" in lines and f"suppressed total: {flood}" in lines
    assert out.index("REFUSALS BY PRINCIPAL") < out.index("\nREFUSALS\n") < out.index("DESTRUCTIVE GRANTS")
    section = lines.index("REFUSALS BY PRINCIPAL")
    header, flooder, other = (line.split() for line in lines[section + 1:section + 4])
    assert header[:4] == ["PRINCIPAL", "REFUSED", "LOGGED", "ONE"]
    assert flooder[:5] == ["agent:demo", str(REFUSAL_BUDGET + flood), str(REFUSAL_BUDGET), str(flood),
                           f"template_not_found={flood}"]
    assert other[:4] == ["agent:other", "1", "1", "0"] and "-" in other
    assert report["refusals_by_principal"][0]["suppressed"] == flood


@pytest.mark.parametrize("argv", [["query"], ["export"], ["report"]])
def test_api_errors_are_shown_and_exit_non_zero(broker_url, capsys, tmp_path, argv):
    CannedBroker.status = 403
    target = tmp_path / "never.jsonl"
    extra = ["-o", str(target)] if argv == ["export"] else []
    assert main(["audit", *argv, *extra]) == 1
    assert "error [forbidden]: Reviewers only." in capsys.readouterr().err
    assert not target.exists()


def test_unreachable_broker_is_unavailable(capsys):
    assert main(["audit", "query", "--url", "http://127.0.0.1:9", "--token", "brk_x"]) == 1
    assert "service_unavailable" in capsys.readouterr().err


def test_no_token_is_refused_before_any_call(capsys, monkeypatch):
    """Like every command that calls the broker (the SDK's client): no token source, no request."""
    for name in ("BROKER_TOKEN", "BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND", "BROKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_CLI_CONFIG", "/nonexistent/config.json")
    assert main(["audit", "query", "--url", "http://127.0.0.1:9"]) == 1
    assert "error [missing_credentials]" in capsys.readouterr().err


@pytest.mark.parametrize("report, expected", [
    ({"a": 1}, "a: 1"),
    ({"x_seconds": 3661}, "x seconds: 1h 1m 1s"),
    ({"x_seconds": 0}, "x seconds: 0s"),
    ({"items": []}, "ITEMS\n  (none)"),
    ({"items": ["p", "q"]}, "ITEMS\n  - p\n  - q"),
    ({"nested": {"k": None}}, "NESTED\n  k: -"),
    ({"rows": [{"by_reason": {"a": 1, "b": 2}}]}, "ROWS\n  BY REASON\n  a=1, b=2"),
    ({"rows": [{"by_reason": {}}]}, "ROWS\n  BY REASON\n  -"),
])
def test_render_report_shapes(report, expected):
    assert render_report(report).strip() == expected
