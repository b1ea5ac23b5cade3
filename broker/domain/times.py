"""Times, one way: the broker's moments are timezone-aware UTC, and its text form is the log's.

SQLite hands back naive datetimes for what was stored as UTC; :func:`as_utc` makes them aware again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from broker.domain.log import log_time


def as_utc(moment: datetime) -> datetime:
    """``moment`` with its timezone; a naive one (SQLite's reading of a stored UTC time) is taken as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def aware_like(moment: datetime, like: datetime) -> datetime:
    """``moment`` made comparable with ``like``: naive times get ``like``'s timezone when it has one."""
    return moment if moment.tzinfo or like.tzinfo is None else moment.replace(tzinfo=like.tzinfo)


def iso(moment: datetime | None) -> str | None:
    """The log's text form of ``moment`` (RFC 3339 UTC, microseconds, ``Z``), or None."""
    return None if moment is None else log_time(as_utc(moment))


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as an aware datetime; ValueError if it is not one."""
    return as_utc(datetime.fromisoformat(text))


__all__ = ["as_utc", "aware_like", "iso", "parse_time"]
