"""Reviewer queries agree with the hashed entries (issue 15, finding 10), and times out of range are a 422
(finding 7), on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from tests.api.test_events_api import PROD, approve, issue, page
from tests.security.test_log_forgery import Attacker


OUT_OF_RANGE = ["999999d", "0001-01-01", "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59",
                "9999-12-31T23:00:00-05:00", "1899-12-31", "not a time"]
TIMED = [("/v1/events", "since"), ("/v1/events", "until"), ("/v1/events/report", "since"),
         ("/v1/events/export", "since")]


def test_times_out_of_range_are_invalid_time(broker):
    for path, name in TIMED:
        for value in OUT_OF_RANGE:
            response = broker.get(path, "human:rita", params={name: value})
            assert response.status_code == 422, (path, name, value, response.text)
            assert response.json()["error"]["code"] == "invalid_time"


def test_times_at_the_edges_of_the_range_are_accepted(broker):
    issue(broker)
    for value in ["999999h", "1900-01-01", "8999-12-31T23:59:59Z"]:
        assert broker.get("/v1/events", "human:rita", params={"since": value}).status_code == 200, value


def hide(attacker: Attacker) -> None:
    """Edit the copied columns of every entry (the bodies, which the hash covers, stay as they are)."""
    attacker.drop_triggers()
    attacker.run("UPDATE events SET actor = 'agent:nobody', acts_for = NULL, template = 'other', type = 'other', "
                 "request_id = 'other', grant_id = NULL, access_key_id = NULL, "
                 "time = :then", then="2001-01-01 00:00:00")


FILTERS = ["agent", "human", "template", "type", "request_id", "access_key_id", "grant_id"]


def test_editing_columns_does_not_hide_entries_from_filters(broker):
    issue(broker)
    entry = next(e for e in broker.events() if e["type"] == "issued")
    values = {name: {"agent": entry["actor"], "human": entry["acts_for"]}.get(name, entry.get(name)) for name in FILTERS}
    assert all(values.values()), values
    before = {name: page(broker, **{name: value})["events"] for name, value in values.items()}
    hide(Attacker(broker))
    for name, value in values.items():
        after = page(broker, **{name: value})
        assert after["events"] == before[name] and entry in after["events"], name
        assert after["unverified_seqs"] == []


def test_editing_the_time_column_does_not_hide_entries_from_since(broker):
    issue(broker)
    hide(Attacker(broker))
    assert len(page(broker, since="10m")["events"]) == 2


def test_an_edited_body_is_flagged(broker):
    issue(broker)
    attacker = Attacker(broker)
    attacker.drop_triggers()
    attacker.run("UPDATE events SET body = REPLACE(body, 'agent:demo', 'agent:demx') WHERE seq = 2")
    assert page(broker)["unverified_seqs"] == [2]


def test_correlate_finds_an_issue_whose_grant_row_was_edited(broker):
    pending = broker.post("/v1/requests", "agent:demo", json=PROD).json()
    approve(broker, pending["id"], "human:bob")
    approve(broker, pending["id"], "human:carol")
    granted = broker.post(f"/v1/requests/{pending['id']}/credentials", "agent:demo").json()
    key = granted["credentials"]["access_key_id"]
    clean = broker.get("/v1/events/correlate", "human:rita", params={"access_key_id": key}).json()["matches"]
    assert [m["log_agrees"] for m in clean] == [True], clean[0]["mismatches"]
    attacker = Attacker(broker)
    attacker.run("UPDATE grants SET access_key_id = 'ASIAHIDDEN' WHERE request_id = :id", id=pending["id"])
    attacker.run("DELETE FROM approvals WHERE approver = 'human:carol'")
    response = broker.get("/v1/events/correlate", "human:rita", params={"access_key_id": key})
    assert response.status_code == 200, response.text
    (match,) = response.json()["matches"]
    assert match["request"]["id"] == pending["id"] and not match["log_agrees"]
    assert any("access_key_id" in m for m in match["mismatches"])
    assert any("human:carol" in m for m in match["mismatches"])


def test_correlate_still_names_no_match(broker):
    issue(broker)
    response = broker.get("/v1/events/correlate", "human:rita", params={"access_key_id": "ASIANOSUCHKEY"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "grant_not_found"


def test_hidden_columns_do_not_change_the_export(broker):
    issue(broker)
    before = broker.get("/v1/events/export", "human:rita").content.splitlines()[:2]
    hide(Attacker(broker))
    with broker.container.database.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM events WHERE actor = 'agent:nobody'")).scalar() == 2
    assert broker.get("/v1/events/export", "human:rita").content.splitlines()[:2] == before
