"""Times in words for the approvers' pages: relative, with the exact time kept for the hover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.api.ui.time_words import moment, relative, span

NOW = datetime(2026, 12, 2, 17, 40, 12, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "just now"), (3, "just now"), (-4, "just now"), (42, "in 42 s"), (-42, "42 s ago"),
    (24 * 60, "in 24 min"), (-24 * 60 - 20, "24 min ago"), (59 * 60 + 40, "in 1 h"),
    (2 * 3600 + 5 * 60, "in 2 h 5 min"), (-47 * 3600, "47 h ago"), (3 * 86400, "in 3 days"),
])
def test_relative_times(seconds, words):
    assert relative(NOW + timedelta(seconds=seconds), NOW) == words


def test_a_views_time_keeps_its_exact_value_for_the_hover():
    shown = moment("2026-12-02T18:04:12.123456Z", NOW)
    assert shown.relative == "in 24 min" and shown.future
    assert shown.absolute == "2026-12-02 18:04:12 UTC"
    assert shown.iso == "2026-12-02T18:04:12.123456Z"
    assert moment(None, NOW) is None
    assert moment("2026-12-02T17:00:12", NOW).relative == "40 min ago"  # naive means UTC


def test_span_is_never_negative():
    assert span(-90) == "2 min"
