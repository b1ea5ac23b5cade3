"""Reasons are read by people: control and bidirectional characters are refused, and never printed raw.

Issue 15 ("also seen"): the reason field accepted C1 controls (U+0085, U+009B: a one-character CSI) and
bidi overrides (U+202E: Trojan Source), so what an approver read could differ from what was written.
"""

from __future__ import annotations

import pytest

from broker.cli.output import one_line
from broker.domain.text import unsafe_characters

HOSTILE = {
    "C1 next line": "deploy\u0085approve me",
    "C1 CSI": "deploy\u009b2Jcleared",
    "DEL": "deploy\u007f",
    "bidi override": "deploy to staging \u202e dorp",
    "bidi isolate": "deploy \u2066prod\u2069",
    "right-to-left mark": "deploy\u200f",
    "line separator": "deploy\u2028approved",
    "escape": "deploy\x1b[2J",
}
FINE = ["fix the cost report, ticket 42", "two\nlines\tand a tab", "déployer le correctif", "部署修复", "emoji 👍🏽"]


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_reasons_are_refused_everywhere_a_reason_comes_in(sqlite_broker, text):
    created = sqlite_broker.post("/v1/requests", "agent:demo", json={
        "template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": text})
    assert created.status_code == 422 and created.json()["error"]["code"] == "invalid_reason", created.text
    pending = sqlite_broker.post("/v1/requests", "agent:demo", json={
        "template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "a plain reason"})
    assert pending.status_code == 202, pending.text
    for decision in ("approve", "deny"):
        answer = sqlite_broker.post(f"/v1/requests/{pending.json()['id']}/approvals", "human:bob",
                                    json={"decision": decision, "reason": text})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_reason", answer.text
    assert text not in str(sqlite_broker.events())


@pytest.mark.parametrize("text", FINE)
def test_ordinary_text_in_any_script_is_kept(text):
    assert unsafe_characters(text) == []


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_the_cli_never_prints_them_raw(text):
    """Older rows may hold them: every CLI line goes through one_line."""
    assert unsafe_characters(one_line(text, 200)) == []
