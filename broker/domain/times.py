"""Times, one way: the broker's moments are timezone-aware UTC, and its text form is the log's.

SQLite hands back naive datetimes for what was stored as UTC; :func:`as_utc` makes them aware again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import overload

from broker.errors import InvalidInput


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` with its timezone; a naive one (SQLite's reading of a stored UTC time) is taken as UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def aware_like(moment: datetime, like: datetime) -> datetime:
    """``moment`` made comparable with ``like``: naive times get ``like``'s timezone when it has one."""
    return moment if moment.tzinfo or like.tzinfo is None else moment.replace(tzinfo=like.tzinfo)


def log_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and 'Z' (``2024-05-01T12:00:00.000000Z``): the issuance log's times."""
    if moment.tzinfo is None:
        raise InvalidInput("Log times must be timezone-aware.", code="invalid_time")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso(moment: datetime | None) -> str | None:
    """The log's text form of ``moment`` (RFC 3339 UTC, microseconds, ``Z``), or None."""
    return None if moment is None else log_time(as_utc(moment))


def iso_seconds(moment: datetime) -> str:
    """ISO 8601 UTC with a Z, seconds precision (what IAM's Date operators expect, CloudTrail's eventTime form)."""
    return as_utc(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as an aware datetime; ValueError if it is not one."""
    return as_utc(datetime.fromisoformat(text))


def parse_utc(text: str) -> datetime:
    """:func:`parse_time`, converted to UTC (an offset such as +02:00 is folded in)."""
    return parse_time(text).astimezone(UTC)


@dataclass(frozen=True)
class Bucketing:
    """How times are grouped on the time axis: ``hour`` or ``day``."""

    unit: str

    @classmethod
    def for_range(cls, since: datetime, until: datetime) -> "Bucketing":
        return cls("hour" if (until - since).total_seconds() <= 2 * 86400 else "day")

    @property
    def spelling(self) -> str:
        """A bucket's label as strftime spells it (SQLite's strftime spells it the same)."""
        return "%Y-%m-%d %H:00" if self.unit == "hour" else "%Y-%m-%d"

    def label(self, moment: datetime) -> str:
        return moment.astimezone(UTC).strftime(self.spelling)


__all__ = ["Bucketing", "as_utc", "aware_like", "iso", "iso_seconds", "log_time", "parse_time", "parse_utc"]
