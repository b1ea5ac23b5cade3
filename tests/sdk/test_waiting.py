"""What a waiting requester is told: each co-signature once, with elapsed and remaining time, then the outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.sdk.waiting import WaitProgress, duration

T0 = datetime(2026, 12, 2, 17, 0, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def view(status: str, approvals: list[tuple[str, str, int]], **extra) -> dict:
    counted = sum(1 for _, decision, _ in approvals if decision == "approve")
    return {"id": "r1", "status": status, "approvals_required": 2, "approvals_counted": counted,
            "created_at": iso(T0), "pending_expires_at": iso(T0 + timedelta(minutes=30)),
            "approvals": [{"approver": who, "decision": decision, "reason": "ok", "at": iso(T0 + timedelta(seconds=s))}
                          for who, decision, s in approvals], **extra}


def test_each_cosignature_is_told_once_with_elapsed_and_remaining_time_then_the_outcome():
    progress = WaitProgress("r1")
    assert progress.lines(view("pending", []), now=T0 + timedelta(seconds=5)) == [
        "request r1: waiting for 2 more approval(s) (0 of 2); 29m55s left"]
    assert progress.lines(view("pending", []), now=T0 + timedelta(seconds=9)) == []
    bob = [("human:bob", "approve", 65)]
    assert progress.lines(view("pending", bob), now=T0 + timedelta(seconds=70)) == [
        "request r1: human:bob approved (1 of 2) 1m05s after the request; 28m50s left before it expires"]
    assert progress.lines(view("pending", bob), now=T0 + timedelta(seconds=80)) == []
    both = [*bob, ("human:carol", "approve", 190)]
    assert progress.lines(view("approved", both, approved_at=iso(T0 + timedelta(seconds=190))),
                          now=T0 + timedelta(seconds=200)) == [
        "request r1: human:carol approved (2 of 2) 3m10s after the request",
        "request r1: approved (2 of 2) 3m10s after the request"]


def test_a_denial_reaches_the_requester_with_who_and_why():
    progress = WaitProgress("r1")
    progress.lines(view("pending", []), now=T0)
    denied = view("denied", [("human:carol", "deny", 125)], decided_reason="wrong stack, use staging first")
    assert progress.lines(denied, now=T0 + timedelta(seconds=130)) == [
        "request r1: denied by human:carol 2m05s after the request: wrong stack, use staging first"]


def test_expiry_is_the_outcome_when_not_enough_approve():
    progress = WaitProgress("r1")
    progress.lines(view("pending", [("human:bob", "approve", 10)]), now=T0 + timedelta(seconds=20))
    assert progress.lines(view("expired", [("human:bob", "approve", 10)]), now=T0 + timedelta(minutes=31)) == [
        "request r1: expired with 1 of 2 approvals"]


def test_durations():
    assert [duration(s) for s in (-3, 0, 59, 60, 3599, 3600, 7325)] == ["0s", "0s", "59s", "1m00s", "59m59s",
                                                                       "1h00m", "2h02m"]
