"""broker.domain.times: one way to read, compare and write the broker's times."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from broker.domain.times import as_utc, aware_like, iso, iso_seconds, log_time, parse_time, parse_utc
from broker.errors import InvalidInput

NAIVE = datetime(2026, 1, 2, 3, 4, 5, 6)
PLUS2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize(("moment", "expected"), [
    (NAIVE, NAIVE.replace(tzinfo=UTC)),
    (NAIVE.replace(tzinfo=PLUS2), NAIVE.replace(tzinfo=PLUS2)),
])
def test_as_utc_takes_naive_as_utc_and_keeps_aware(moment, expected):
    assert as_utc(moment) == expected and as_utc(moment).tzinfo is not None


def test_aware_like_follows_the_other_side():
    assert aware_like(NAIVE, NAIVE) is NAIVE
    assert aware_like(NAIVE, NAIVE.replace(tzinfo=UTC)).tzinfo is UTC


@pytest.mark.parametrize(("moment", "text"), [
    (None, None),
    (NAIVE, "2026-01-02T03:04:05.000006Z"),
    (NAIVE.replace(tzinfo=PLUS2), "2026-01-02T01:04:05.000006Z"),
])
def test_iso_is_the_log_form(moment, text):
    assert iso(moment) == text


@pytest.mark.parametrize("text", ["2026-01-02T03:04:05.000006Z", "2026-01-02T03:04:05.000006+00:00",
                                  "2026-01-02T03:04:05.000006"])
def test_parse_time_round_trips(text):
    assert iso(parse_time(text)) == "2026-01-02T03:04:05.000006Z"


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z"])
def test_parse_time_refuses_what_is_not_a_time(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_as_utc_passes_none_through():
    assert as_utc(None) is None


@pytest.mark.parametrize(("moment", "text"), [
    (NAIVE, "2026-01-02T03:04:05Z"),
    (NAIVE.replace(tzinfo=PLUS2), "2026-01-02T01:04:05Z"),
])
def test_iso_seconds_is_iams_and_cloudtrails_form(moment, text):
    assert iso_seconds(moment) == text


def test_parse_utc_folds_the_offset_in():
    moment = parse_utc("2026-01-02T03:04:05+02:00")
    assert moment.tzinfo is UTC and moment.hour == 1


def test_log_time_refuses_a_naive_time():
    with pytest.raises(InvalidInput) as caught:
        log_time(NAIVE)
    assert caught.value.code == "invalid_time"
