"""The reviewers' dashboard: the issuance log at a glance, as figures the database adds up.

One use case, read only: :meth:`ReviewDashboard.figures` answers the parts asked for (each chart
asks for its own), for one of a few fixed ranges ending now.  Each part names the ``GET /v1/events``
query that lists the entries behind it, so a reviewer goes from a bar to the log itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from broker.domain import log as issuance_log
from broker.domain.events import CARRYING_TYPES, REFUSAL_TYPES, REVOKING_TYPES, EventType
from broker.domain.principals import Principal
from broker.domain.times import Bucketing
from broker.errors import InvalidInput
from broker.ports import Clock, LogFigureQueries, Store
from broker.usecases.audit import require_reviewer

# The ranges the dashboard offers (ending now).  Fixed: a bounded amount of work per view.
RANGES: dict[str, timedelta] = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30),
                                "90d": timedelta(days=90)}
DEFAULT_RANGE = "7d"
# Entries whose details may carry counts of suppressed refusals (see broker.usecases.refusal_budget).
OUTCOME_TYPES = (EventType.ISSUED, *REFUSAL_TYPES, EventType.DENIED, EventType.EXPIRED)
REVOCATION_TYPES = (*REVOKING_TYPES, EventType.ORPHANED, EventType.LOCKDOWN, EventType.LOCKDOWN_LIFT_REQUESTED,
                    EventType.LOCKDOWN_LIFTED)
PARTS = ("over_time", "refusals", "time_to_approve", "live_grants", "risky_grants", "revocations")


@dataclass
class Figures:
    """What the dashboard shows for one range; each part is filled only when asked for."""

    range: str
    since: datetime
    until: datetime
    bucket_unit: str = "day"
    buckets: list[str] = field(default_factory=list)
    over_time: dict[str, list[int]] = field(default_factory=dict)          # type -> count per bucket
    totals: dict[str, int] = field(default_factory=dict)                   # type -> count in the range
    refusals_by_reason: dict[str, int] = field(default_factory=dict)       # every refusal once, most first
    wait_buckets: dict[str, int] = field(default_factory=dict)
    median_wait_seconds: float | None = None
    live_grants: list[dict[str, Any]] = field(default_factory=list)
    risky_total: int = 0
    risky_grants: list[dict[str, Any]] = field(default_factory=list)
    revocations: dict[str, int] = field(default_factory=dict)
    revocation_entries: list[dict[str, Any]] = field(default_factory=list)
    parts: set[str] = field(default_factory=set)                           # the parts filled in

    def events_link(self, **filters: str) -> str:
        """The ``GET /v1/events`` query listing the entries behind a figure."""
        return "/v1/events?" + urlencode({**filters, "since": issuance_log.log_time(self.since), "limit": 1000})


def range_of(name: str | None) -> str:
    chosen = name or DEFAULT_RANGE
    if chosen not in RANGES:
        raise InvalidInput(f"range must be one of {', '.join(RANGES)}", code="invalid_range", field="range")
    return chosen


def bucket_labels(since: datetime, until: datetime, bucketing: Bucketing) -> list[str]:
    """Every bucket of the range, oldest first (a quiet hour is a zero, not a gap)."""
    step = timedelta(hours=1) if bucketing.unit == "hour" else timedelta(days=1)
    moment = since.replace(minute=0, second=0, microsecond=0)
    if bucketing.unit == "day":
        moment = moment.replace(hour=0)
    labels = []
    while moment < until:
        labels.append(bucketing.label(moment))
        moment += step
    return labels


@dataclass
class ReviewDashboard:
    """The figures, computed at most once per ``fresh_for`` seconds and range: the page and its five
    chart images (each a request of its own) share one computation, and a reload storm costs one."""

    database: Store
    clock: Clock
    fresh_for: float = 30.0
    # True: every figure from every entry of the range, not from the store's cache of closed blocks (benchmarks).
    live: bool = False
    _cache: dict[str, Figures] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def figures(self, *, principal: Principal, range_name: str | None = None,
                parts: Iterable[str] = PARTS) -> Figures:
        require_reviewer(principal)
        chosen = range_of(range_name)
        wanted = set(parts)
        unknown = wanted - set(PARTS)
        if unknown:
            raise InvalidInput(f"unknown dashboard part {sorted(unknown)[0]!r}", code="invalid_part")
        now = self.clock.now()
        with self._lock:
            cached = self._cache.get(chosen)
            if cached is not None and wanted <= cached.parts and \
                    timedelta(0) <= now - cached.until <= timedelta(seconds=self.fresh_for):
                return cached
        figures = self._compute(chosen, wanted, until=now)
        with self._lock:
            self._cache[chosen] = figures
        return figures

    def _compute(self, chosen: str, wanted: set[str], *, until: datetime) -> Figures:
        figures = Figures(range=chosen, since=until - RANGES[chosen], until=until)
        fillers: Mapping[str, Callable[[_Reads, Figures], None]] = {
            "over_time": _over_time, "refusals": _refusals, "time_to_approve": _time_to_approve,
            "live_grants": _live_grants, "risky_grants": _risky_grants, "revocations": _revocations}
        with self.database.read() as repo:
            queries = _Reads(repo.log_figures(live=self.live), since=figures.since, until=figures.until)
            for part in PARTS:
                if part in wanted:
                    fillers[part](queries, figures)
                    figures.parts.add(part)
        return figures


class _Reads:
    """The queries of one computation, with the one pass over the refusals' bodies shared by the parts that
    need it (over time and by reason): reading the bodies is what a long range costs."""

    def __init__(self, queries: LogFigureQueries, *, since: datetime, until: datetime) -> None:
        self.queries = queries
        self._since, self._until = since, until
        self._refusals: tuple[dict[str, int], list[tuple[str, str, int]]] | None = None

    def refusal_figures(self) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
        """Refusal entries by reason, and the suppressed refusals carried, as (bucket, reason, refusals)."""
        if self._refusals is None:
            self._refusals = self.queries.refusal_figures(refusal_types=REFUSAL_TYPES, carrying_types=CARRYING_TYPES,
                                                          since=self._since, until=self._until,
                                                          bucketing=Bucketing.for_range(self._since, self._until))
        return self._refusals


def _over_time(reads: _Reads, figures: Figures) -> None:
    bucketing = Bucketing.for_range(figures.since, figures.until)
    figures.bucket_unit = bucketing.unit
    figures.buckets = bucket_labels(figures.since, figures.until, bucketing)
    index = {label: i for i, label in enumerate(figures.buckets)}
    series = {kind: [0] * len(figures.buckets) for kind in ("issued", "refused", "denied", "expired")}
    for bucket, kind, count in reads.queries.counts_over_time(types=OUTCOME_TYPES, since=figures.since,
                                                        until=figures.until, bucketing=bucketing):
        name = EventType.REFUSED if kind == EventType.REFUSALS_SUPPRESSED else kind
        if bucket in index:
            series[name][index[bucket]] += count
    # Refusals the refusal budget counted instead of logging one by one, in the bucket of the entry carrying them.
    for bucket, _, count in reads.refusal_figures()[1]:
        if bucket in index:
            series["refused"][index[bucket]] += count
    figures.over_time = series
    figures.totals = {kind: sum(values) for kind, values in series.items()}


def _refusals(reads: _Reads, figures: Figures) -> None:
    """Every refusal once: entries by reason, plus the suppressed ones the refusal budget counted."""
    reasons: Counter[str] = Counter()
    by_reason, carried = reads.refusal_figures()
    for reason, count in by_reason.items():
        reasons[reason or "unattributed"] += count
    for _, reason, count in carried:
        reasons[reason] += count
    figures.refusals_by_reason = dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0])))


def _time_to_approve(reads: _Reads, figures: Figures) -> None:
    queries = reads.queries
    figures.wait_buckets, figures.median_wait_seconds = queries.time_to_approve(since=figures.since,
                                                                                until=figures.until)


def _live_grants(reads: _Reads, figures: Figures) -> None:
    queries = reads.queries
    figures.live_grants = [{"agent": agent, "template": template, "environment": environment, "grants": count}
                           for agent, template, environment, count in queries.live_grants(now=figures.until)]


def _risky_grants(reads: _Reads, figures: Figures) -> None:
    queries = reads.queries
    total, newest = queries.risky_grants(since=figures.since, until=figures.until)
    figures.risky_total = total
    figures.risky_grants = [{
        "seq": e.get("seq"), "time": e.get("time"), "template": e.get("template"), "agent": e.get("actor"),
        "request_id": e.get("request_id"), "access_key_id": e.get("access_key_id"),
        "risks": list((e.get("details") or {}).get("risks") or []),
        "environment": (e.get("details") or {}).get("environment")} for e in newest]


def _revocations(reads: _Reads, figures: Figures) -> None:
    queries = reads.queries
    counts = queries.counts_by_type(types=REVOCATION_TYPES, since=figures.since, until=figures.until)
    figures.revocations = {kind: counts.get(kind, 0) for kind in REVOCATION_TYPES}
    figures.revocation_entries = [{"seq": e.get("seq"), "time": e.get("time"), "type": e.get("type"),
                                   "actor": e.get("actor"), "template": e.get("template"),
                                   "grant_id": e.get("grant_id"), "reason_code": e.get("reason_code")}
                                  for e in queries.newest(types=REVOCATION_TYPES, since=figures.since,
                                                          until=figures.until)]
