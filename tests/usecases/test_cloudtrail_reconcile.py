"""reconcile() over hand-made log entries and CloudTrail calls: orphans, windows, partial exports, duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.domain.cloudtrail import AssumeRoleCall, TrailRecords
from broker.domain.sts_rules import TAG_REQUEST, role_session_name, source_identity_for
from broker.errors import InvalidInput
from broker.usecases.cloudtrail_reconcile import reconcile

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROLE = "arn:aws:iam::123456789012:role/broker-target-s3-read"


def entry(seq, kind, request_id, *, minutes=0, key=None, **details):
    return {"seq": seq, "type": kind, "time": (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "request_id": request_id, "grant_id": f"g-{request_id}", "template": "t", "access_key_id": key,
            "details": {"requester": "agent:demo", **details}}


def call(event_id, *, minutes=0, key="ASIA1", request_id=None, session=None, identity="agent.demo", role=ROLE,
         error=None):
    return AssumeRoleCall(event_id=event_id, time=T0 + timedelta(minutes=minutes), role_arn=role,
                          session_name=session, source_identity=identity,
                          tags={TAG_REQUEST: request_id} if request_id else {}, access_key_id=None if error else key,
                          caller="arn:aws:sts::1:assumed-role/broker/x", error_code=error, source="f")


def run(entries, calls, *, since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1)):
    return reconcile(entries=entries, trail=TrailRecords(assume_role=calls), since=since, until=until,
                     is_target_role=lambda arn: arn == ROLE, target_roles=[ROLE])


def issued_call(request_id, key, **kwargs):
    return call(f"e-{request_id}-{key}", key=key, request_id=request_id,
                session=role_session_name("agent:demo", request_id), identity=source_identity_for("agent:demo"),
                **kwargs)


def test_an_orphan_matches_its_session_by_the_request_tag():
    orphan = entry(1, "orphaned", "r1", session_name=role_session_name("agent:demo", "r1"))
    result = run([orphan], [issued_call("r1", "ASIAORPHAN")])
    assert result.complete and len(result.matched) == 1


def test_an_orphan_with_no_session_is_not_a_gap():
    result = run([entry(1, "orphaned", "r1")], [])
    assert result.complete and len(result.orphans_without_session) == 1


def test_issued_and_its_call_match_by_access_key_and_agree():
    result = run([entry(1, "issued", "r1", key="ASIA1")], [issued_call("r1", "ASIA1", minutes=-1)])
    assert result.complete and not result.mismatches


def test_the_same_request_tag_on_a_second_session_is_an_unlogged_session():
    """STS minted twice for one request (a replay): the log accounts for one key only."""
    result = run([entry(1, "issued", "r1", key="ASIA1")], [issued_call("r1", "ASIA1"), issued_call("r1", "ASIA2")])
    assert not result.complete and [c.access_key_id for c in result.unlogged] == ["ASIA2"]


def test_a_record_delivered_by_two_trails_counts_once():
    twice = issued_call("r1", "ASIA1")
    result = run([entry(1, "issued", "r1", key="ASIA1")], [twice, twice])
    assert result.complete and len(result.matched) == 1


def test_failed_calls_and_other_roles_are_not_sessions():
    result = run([], [call("x", error="AccessDenied"), call("y", role="arn:aws:iam::1:role/other")])
    assert result.complete and len(result.failed_calls) == 1


def test_outside_the_window_nothing_is_reported():
    result = run([entry(1, "issued", "r1", minutes=300, key="ASIA1")], [call("z", minutes=-300, key="ASIA9")])
    assert result.complete


def test_a_partial_export_that_starts_after_the_window_is_refused():
    with pytest.raises(InvalidInput) as exc:
        run([entry(40, "issued", "r1", minutes=30, key="ASIA1")], [])
    assert exc.value.code == "log_export_too_short"


def test_an_empty_window_is_refused():
    with pytest.raises(InvalidInput):
        run([], [], since=T0, until=T0)
