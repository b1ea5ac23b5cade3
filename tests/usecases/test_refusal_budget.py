"""The refusal budget's own logic (broker/usecases/refusal_budget.py): windows, counting, what to write, hand-backs, threads."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from broker.domain.events import EventType
from broker.errors import InvalidInput
from broker.usecases.refusal_budget import (UNATTRIBUTED, RefusalAction, RefusalBudget, SuppressedRefusals,
                             carried_announcements, carried_refusals, refusal_entry)
from tests.conftest import FrozenClock

AGENT = "agent:demo"
BODY = {"type": "refused", "actor": AGENT, "reason_code": "template_not_found", "details": {"message": "no"}}


def actions(budget: RefusalBudget, count: int, principal: str = AGENT, code: str = "template_not_found"):
    return [budget.admit(principal, reason_code=code) for _ in range(count)]


def test_the_first_n_are_logged_then_one_announcement_then_counted():
    budget = RefusalBudget(per_minute=3, clock=FrozenClock())
    tickets = actions(budget, 7)
    assert [t.action for t in tickets] == [RefusalAction.LOG] * 3 + [RefusalAction.ANNOUNCE] + [
        RefusalAction.SUPPRESS] * 3
    assert all(t.carried is None for t in tickets)


def test_a_logged_refusal_is_written_exactly_as_without_a_budget():
    ticket = RefusalBudget(per_minute=3, clock=FrozenClock()).admit(AGENT, reason_code="x")
    assert ticket.shape(BODY) == BODY


def test_the_announcement_is_the_refusal_retyped_with_the_budget_and_window():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=1, clock=clock)
    actions(budget, 1)
    clock.advance(5)
    ticket = budget.admit(AGENT, reason_code="template_not_found")
    entry = ticket.shape(BODY)
    assert entry["type"] == EventType.REFUSALS_SUPPRESSED and entry["actor"] == AGENT
    assert entry["reason_code"] == "template_not_found" and entry["details"]["message"] == "no"
    assert entry["details"]["budget"] == 1 and entry["details"]["window_seconds"] == 60
    assert entry["details"]["window_start"] < entry["details"]["window_end"]
    assert BODY["type"] == "refused" and "budget" not in BODY["details"]        # the caller's body is not edited


def test_the_next_window_carries_the_count_with_its_reasons():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=2, clock=clock)
    actions(budget, 3, code="template_not_found")
    actions(budget, 2, code="invalid_parameter")
    clock.advance(60)
    ticket = budget.admit(AGENT, reason_code="template_not_found")
    assert ticket.action is RefusalAction.LOG and ticket.carried is not None
    details = ticket.shape(BODY)["details"]
    assert details["suppressed"] == 3
    assert details["suppressed_by_reason"] == {"invalid_parameter": 2, "template_not_found": 1}
    assert details["suppressed_since"] < details["suppressed_until"]
    # Carried once only.
    assert budget.admit(AGENT, reason_code="x").carried is None
    assert budget.take_summaries() == []


def test_a_window_without_suppression_leaves_nothing_to_carry():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=3, clock=clock)
    actions(budget, 3)
    clock.advance(61)
    assert budget.admit(AGENT, reason_code="x").carried is None
    assert budget.take_summaries() == []


def test_principals_have_budgets_of_their_own():
    budget = RefusalBudget(per_minute=1, clock=FrozenClock())
    actions(budget, 5)
    assert budget.admit("agent:other", reason_code="x").action is RefusalAction.LOG


def test_the_sweep_takes_only_windows_that_are_over_unless_closing():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=1, clock=clock)
    actions(budget, 4)
    assert budget.take_summaries() == []                         # the window is still open
    clock.advance(10)
    (summary,) = budget.take_summaries(close_open=True)         # shutdown: cut short, now
    assert (summary.principal_id, summary.count) == (AGENT, 3)
    assert (summary.until - summary.since).total_seconds() == 10
    assert budget.take_summaries(close_open=True) == []


def test_the_sweep_writes_a_window_that_ended():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=1, clock=clock)
    actions(budget, 4)
    clock.advance(61)
    (summary,) = budget.take_summaries()
    assert summary.count == 3 and (summary.until - summary.since).total_seconds() == 60


def test_summaries_handed_back_merge_with_later_ones():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=1, clock=clock)
    actions(budget, 3)
    clock.advance(61)
    first = budget.take_summaries()
    actions(budget, 4)
    clock.advance(61)
    budget.give_back(first)
    (merged,) = budget.take_summaries()
    assert merged.count == 2 + 3 and (merged.until - merged.since).total_seconds() == 61 + 60


@pytest.mark.parametrize("fails", ["raises", "not_shaped"])
def test_an_entry_not_written_gives_its_ticket_back(fails):
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=1, clock=clock)
    actions(budget, 3)
    clock.advance(61)

    def attempt() -> None:
        with refusal_entry(budget, AGENT, reason_code="x") as ticket:
            assert ticket is not None and ticket.carried is not None
            if fails == "raises":
                ticket.shape(BODY)
                raise RuntimeError("the log cannot be written")

    if fails == "raises":
        with pytest.raises(RuntimeError):
            attempt()
    else:
        attempt()
    # The slot and the carried count are back: the next refusal is logged and carries the count.
    ticket = budget.admit(AGENT, reason_code="x")
    assert ticket.action is RefusalAction.LOG and ticket.carried.count == 2


def test_a_failed_announcement_is_made_again_by_the_next_refusal():
    budget = RefusalBudget(per_minute=1, clock=FrozenClock())
    actions(budget, 1)
    with pytest.raises(RuntimeError), refusal_entry(budget, AGENT, reason_code="x") as ticket:
        assert ticket.action is RefusalAction.ANNOUNCE
        ticket.shape(BODY)
        raise RuntimeError("the log cannot be written")
    assert budget.admit(AGENT, reason_code="y").action is RefusalAction.ANNOUNCE
    (summary,) = budget.take_summaries(close_open=True)
    assert summary.count == 1                                     # the 503 one is not counted as suppressed
    assert summary.announced_by_reason == {"y": 1}                # the announcement that was made


def test_a_suppressed_refusal_yields_nothing_to_write():
    budget = RefusalBudget(per_minute=1, clock=FrozenClock())
    actions(budget, 2)
    with refusal_entry(budget, AGENT, reason_code="x") as ticket:
        assert ticket is None


def test_zero_disables_the_budget():
    budget = RefusalBudget(per_minute=0, clock=FrozenClock())
    assert {t.action for t in actions(budget, 500)} == {RefusalAction.LOG}
    assert budget.take_summaries(close_open=True) == []


def test_a_negative_budget_is_a_configuration_error():
    with pytest.raises(InvalidInput) as raised:
        RefusalBudget(per_minute=-1, clock=FrozenClock())
    assert raised.value.code == "config_invalid" and raised.value.field == "refusals_per_minute"


def test_concurrent_refusals_are_counted_exactly():
    budget = RefusalBudget(per_minute=10, clock=FrozenClock())
    seen: list[RefusalAction] = []
    lock = threading.Lock()

    def flood() -> None:
        mine = [t.action for t in actions(budget, 250)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(seen) == {RefusalAction.LOG: 10, RefusalAction.ANNOUNCE: 1, RefusalAction.SUPPRESS: 1989}
    (summary,) = budget.take_summaries(close_open=True)
    assert summary.count == 1990


def test_summary_details_are_plain_json():
    clock = FrozenClock()
    summary = SuppressedRefusals(AGENT, 2, clock.now(), clock.now(), {"b": 1, "a": 1})
    assert list(summary.details()["suppressed_by_reason"]) == ["a", "b"]


# --- counting refusals from the log: a count carried in details, less what its announcements counted

def test_a_count_names_its_announced_refusal_and_merged_counts_add_them_up():
    clock = FrozenClock()
    budget = RefusalBudget(per_minute=2, clock=clock)
    actions(budget, 3, code="invalid_parameter")                  # the 3rd is announced
    actions(budget, 2, code="template_not_found")
    clock.advance(61)
    first = budget.take_summaries()
    assert first[0].details()["suppressed_announced_by_reason"] == {"invalid_parameter": 1}
    assert carried_refusals(first[0].details()) == {"template_not_found": 2}   # the 3rd has its own entry
    actions(budget, 4, code="template_not_found")
    clock.advance(61)
    budget.give_back(first)
    (merged,) = budget.take_summaries()
    details = merged.details()
    assert details["suppressed"] == 3 + 2
    assert details["suppressed_announced_by_reason"] == {"invalid_parameter": 1, "template_not_found": 1}
    assert carried_announcements(details) == 2                    # two windows, two refusals_suppressed entries
    assert carried_refusals(details) == {"template_not_found": 3}  # 5 suppressed, 2 of them already entries


def test_a_window_without_suppression_announces_nothing():
    summary = SuppressedRefusals(AGENT, 2, FrozenClock().now(), FrozenClock().now(), {"a": 2})
    assert summary.details()["suppressed_announced_by_reason"] == {}


@pytest.mark.parametrize("details, expected", [
    ({"suppressed": 5, "suppressed_by_reason": {"a": 3, "b": 2}, "suppressed_announced_by_reason": {"a": 1}},
     {"a": 2, "b": 2}),
    ({"suppressed": 1, "suppressed_by_reason": {"a": 1}, "suppressed_announced_by_reason": {"a": 1}}, {}),
    # Written without the announcement (a count K of N+1.. always has one): every one of them counts.
    ({"suppressed": 2, "suppressed_by_reason": {"a": 2}}, {"a": 2}),
    # Reasons that do not add up to the count are not trusted; the total still is.
    ({"suppressed": 4, "suppressed_by_reason": {"a": 1}}, {UNATTRIBUTED: 4}),
    ({"suppressed": 4, "suppressed_by_reason": {"a": 1}, "suppressed_announced_by_reason": {"a": 1}},
     {UNATTRIBUTED: 3}),
    ({"suppressed": 2, "suppressed_by_reason": ["a", "b"]}, {UNATTRIBUTED: 2}),
    ({"suppressed": 2, "suppressed_by_reason": {"a": "2"}}, {UNATTRIBUTED: 2}),
    ({"suppressed": 2, "suppressed_by_reason": {"a": True, "b": 1}}, {UNATTRIBUTED: 2}),
    # An announcement of another reason comes off the others; never below zero.
    ({"suppressed": 3, "suppressed_by_reason": {"a": 2, "b": 1}, "suppressed_announced_by_reason": {"z": 1}},
     {"a": 1, "b": 1}),
    ({"suppressed": 1, "suppressed_by_reason": {"a": 1}, "suppressed_announced_by_reason": {"a": 9}}, {}),
    ({"suppressed": 2, "suppressed_by_reason": {"a": 2}, "suppressed_announced_by_reason": {"a": -4}}, {"a": 2}),
    # No count, or not one: nothing.
    (None, {}), ([], {}), ({}, {}), ({"suppressed": 0}, {}), ({"suppressed": -3}, {}), ({"suppressed": "9"}, {}),
    ({"suppressed": True, "suppressed_by_reason": {"a": 1}}, {}), ({"suppressed": 2.5}, {}),
    ({"suppressed_by_reason": {"a": 1}}, {}),
])
def test_carried_refusals_from_log_details(details, expected):
    assert carried_refusals(details) == expected


@pytest.mark.parametrize("details, expected", [
    ({"suppressed": 3, "suppressed_announced_by_reason": {"a": 1, "b": 2}}, 3),
    ({"suppressed": 3}, 0),
    ({"suppressed": 0, "suppressed_announced_by_reason": {"a": 1}}, 0),
    ({"suppressed": 3, "suppressed_announced_by_reason": {"a": "1", 7: 1, "b": -1}}, 0),
    (None, 0),
])
def test_carried_announcements_from_log_details(details, expected):
    assert carried_announcements(details) == expected
