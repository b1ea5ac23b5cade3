"""broker.domain.events: the log's entry types are today's strings, and one builder starts every entry."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.domain import log as issuance_log
from broker.domain.events import EventType, log_entry

NOW = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
# The log format's vocabulary: these strings are in stored logs and old exports, so never renamed.
TODAY = {"requested", "pending", "cosigned", "approved", "denied", "redeeming", "issued", "failed", "expired",
         "cancelled", "refused", "refusals_suppressed", "refusals_suppressed_summary", "revoked", "revoked_all",
         "revocation_failed", "revocations_expired", "orphaned", "lockdown", "lockdown_lift_requested",
         "lockdown_lifted", "api_key_created", "api_key_revoked", "api_key_rotated", "principal_disabled",
         "principal_enabled", "checkpoint_refused", "templates_loaded"}
LOG_FORMAT = Path(__file__).resolve().parents[2] / "docs" / "log-format.md"


def test_the_entry_types_are_exactly_todays_strings():
    assert {kind.value for kind in EventType} == TODAY


def test_the_log_format_names_every_entry_type():
    text = LOG_FORMAT.read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z_]+)`", text))
    assert TODAY <= named, sorted(TODAY - named)


def test_an_entry_has_every_field_and_only_those():
    entry = log_entry(EventType.REVOKED, now=NOW, event_id="e1", actor="human:root", reason_code="done")
    assert tuple(entry) == issuance_log.ENTRY_FIELDS
    assert entry["type"] == "revoked" and type(entry["type"]) is str
    assert entry["time"] == "2026-01-02T03:04:05.000006Z" and entry["event_id"] == "e1"
    assert entry["details"] == {} and entry["actor"] == "human:root" and entry["template"] is None


def test_a_built_entry_hashes_like_one_written_by_hand():
    by_hand = dict.fromkeys(issuance_log.ENTRY_FIELDS)
    by_hand.update(event_id="e1", time=issuance_log.log_time(NOW), type="issued", details={"ttl_seconds": 900})
    built = log_entry("issued", now=NOW, event_id="e1", details={"ttl_seconds": 900})
    assert issuance_log.canonical_json(built) == issuance_log.canonical_json(by_hand)


def test_each_entry_gets_its_own_id():
    assert log_entry(EventType.REFUSED, now=NOW)["event_id"] != log_entry(EventType.REFUSED, now=NOW)["event_id"]


@pytest.mark.parametrize(("kind", "fields"), [
    ("revoke", {}),                          # not an entry type
    (EventType.REVOKED, {"seq": 3}),         # the log gives seq, prev_hash and hash
    (EventType.REVOKED, {"type": "issued"}),
    (EventType.REVOKED, {"time": "2026-01-02T03:04:05.000006Z"}),
    (EventType.REVOKED, {"actr": "human:root"}),
])
def test_an_unknown_type_or_field_is_refused(kind, fields):
    with pytest.raises(ValueError):
        log_entry(kind, now=NOW, **fields)
