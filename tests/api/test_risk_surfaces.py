"""Humans read the risk: the template view, the pending request, the webhook and `broker scopes explain`
name each risk class in plain words, most dangerous first."""

from __future__ import annotations

import json
from pathlib import Path

from broker.cli.main import main
from broker.runtime.webhook import webhook_body

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "roll out checkout 1.2.3"}


def test_template_view_names_its_risk(broker):
    body = broker.get("/v1/templates/test-prod-ecs", "agent:demo").json()
    assert [(r["class"], r["actions"]) for r in body["risk"]] == [("production-traffic", ["ecs:UpdateService"])]
    assert body["risk"][0]["sentence"].startswith("can change what is served")
    assert body["blast_radius"]["risk"] == body["risk"]
    assert broker.get("/v1/templates/test-logs", "agent:demo").json().get("risk", []) == []


def test_pending_request_names_its_risk_and_the_webhook_carries_it(broker):
    pending = broker.post("/v1/requests", "agent:demo", json=PROD)
    assert pending.status_code == 202, pending.text
    view = broker.get(f"/v1/requests/{pending.json()['id']}", "human:bob").json()
    assert [r["class"] for r in view["risk"]] == ["production-traffic"]
    assert view["risk"][0]["approvals"] == 1 and view["risk"][0]["capability"] == "production-traffic"
    body = webhook_body(event="pending", request=view)
    assert body["risk"] == [{k: view["risk"][0][k] for k in ("class", "title", "sentence", "actions")}]
    assert "PRODUCTION TRAFFIC AND AVAILABILITY" in body["text"]
    assert any("PRODUCTION TRAFFIC AND AVAILABILITY" in b.get("text", {}).get("text", "") for b in body["blocks"])


def test_webhook_without_risk_says_nothing_about_it():
    body = webhook_body(event="pending", request={"id": "r1", "links": {"page": "http://x/ui/requests/r1"}})
    assert body["risk"] == [] and "PRODUCTION" not in body["text"]


def test_webhook_risk_text_cannot_format_the_message():
    risk = [{"class": "code-execution", "title": "<!channel>", "sentence": "*bold* <http://evil|x>",
             "actions": ["a:B"]}]
    block = webhook_body(event="pending", request={"id": "r", "risk": risk})["blocks"][-1]["text"]["text"]
    assert "<!channel>" not in block.upper() and "<http" not in block


def test_explain_names_risk_most_dangerous_first(capsys, monkeypatch):
    monkeypatch.setenv("BROKER_SCOPES_DIR", str(REPO_SCOPES))
    assert main(["scopes", "explain", "lambda-deploy-dev"]) == 0
    text = capsys.readouterr().out
    assert "RISK (most dangerous first):" in text and "CODE EXECUTION AS ANOTHER IDENTITY" in text
    assert main(["scopes", "explain", "lambda-deploy-dev", "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [(r["class"], r["actions"]) for r in body["risk"]] == [("code-execution", ["lambda:UpdateFunctionCode"])]
    assert main(["scopes", "explain", "s3-read-prefix"]) == 0
    assert "RISK: none" in capsys.readouterr().out
