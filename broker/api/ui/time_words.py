"""Times as an approver reads them at 3 a.m.: "expires in 24 min", the exact UTC time on hover.

Relative to the broker's clock when the page is rendered (the pages run no script, so nothing
ticks: a reload refreshes them).  The absolute time goes into the ``title`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broker.domain.times import parse_time


@dataclass(frozen=True)
class Moment:
    iso: str          # the log's spelling, for <time datetime=...>
    absolute: str     # "2026-12-02 17:40:12 UTC", shown on hover
    relative: str     # "in 24 min", "3 min ago", "just now"
    future: bool


def span(seconds: float) -> str:
    """A duration in the largest units that read well: ``45 s``, ``24 min``, ``2 h 5 min``, ``3 days``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{round(hours / 24)} days"


def relative(moment: datetime, now: datetime) -> str:
    seconds = (moment - now).total_seconds()
    if abs(seconds) < 5:
        return "just now"
    return f"in {span(seconds)}" if seconds > 0 else f"{span(seconds)} ago"


def absolute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse(text: str) -> datetime:
    return parse_time(text)


def moment(text: str | None, now: datetime) -> Moment | None:
    """A view's time (the log's ISO spelling) in words; None stays None."""
    if not text:
        return None
    when = parse(text)
    return Moment(iso=text, absolute=absolute(when), relative=relative(when, now), future=when > now)
