"""An exact cache of the log's aggregates, per closed block of seqs and hour, for the reviewers' figures.

The dashboard's figures (``broker.storage.log_figures``) add up every entry of their range; at a million
entries that is seconds of reading bodies.  Here each closed block of ``BLOCK`` seqs (``block * BLOCK + 1 ..
(block + 1) * BLOCK``; closed once the log has an entry past it, so its entries never change) is added up
once, from its entries' hashed bodies only (no column copied from them), into ``log_aggregates`` rows keyed
by the hour of the entry's ``time`` and a facet:

* ``count``: entries by type and reason code (``""`` without one);
* ``risky``: ``issued`` entries that declare a risk or production (the dashboard's risky grants);
* ``carried``: the suppressed refusals that entries carry (broker.domain.refusal_counts), by type and reason;
* ``wait``: approved requests' waits from their ``pending`` entry (``value`` in microseconds).

A block is filled on first read, in one transaction with its ``log_aggregate_blocks`` row (primary key: the
block): a second filler (another worker, another replica) inserts nothing, so no block is counted twice.
A block that is not filled (yet, or the write failed) is computed from its bodies for the read, never
assumed empty.

An entry's time need not follow its seq (replicas' clocks), so a block's rows may fall in any hour.  A
window ``[since, until]`` is answered, exactly, from three disjoint parts:

* the cached rows of every closed block for the hours wholly inside the window;
* the entries of closed blocks in the window's partial hours at its edges (read on the body time index);
* the entries after the last closed block (the open tail, at most ``BLOCK``) in the window.

The last two are added up by the same code that fills a block, so every part counts alike.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from broker.domain.events import EventType
from broker.domain.refusal_counts import carried_refusals
from broker.domain.times import Bucketing, log_time, parse_time
from broker.storage.body_fields import body_field
from broker.storage.log_figures import EVENTS, LogFigures, wait_figures
from broker.storage.models import LogAggregateBlockRow, LogAggregateRow

log = logging.getLogger("broker.storage")

BLOCKS = LogAggregateBlockRow.__table__
AGGREGATES = LogAggregateRow.__table__
# Seqs per block: a block is read in one go when filled (a few MB of bodies).
BLOCK = 4096
COUNT, RISKY, CARRIED, WAIT = "count", "risky", "carried", "wait"
# The facets read by hour (or day); waits are read over the whole window.
BY_TIME = (COUNT, RISKY, CARRIED)
HOUR = timedelta(hours=1)
MICROSECOND = timedelta(microseconds=1)
# (hour, facet, type, key, value): a tally's key.  Hours are the first 13 characters of a log time.
Key = tuple[str, str, str, str, int]
Entry = tuple[int, dict[str, Any], str]  # seq, body, the stored body text
# The shape of a log time's start (broker.domain.times.log_time: 2026-12-02T13:00:00.000000Z), as a SQLite GLOB.
LOG_TIME_GLOB = "[0-9][0-9][0-9][0-9]-*"


def hour_of(moment: datetime) -> str:
    return log_time(moment)[:13]


def _reason(entry: Mapping[str, Any]) -> str:
    code = entry.get("reason_code")
    if code is None:
        return ""
    return code if isinstance(code, str) else json.dumps(code, separators=(",", ":"))


def _risky(raw: str, details: Any) -> bool:
    """As LogFigures' risky test reads the body: a text test for candidates, then the exact one."""
    if '"risks":["' not in raw and '"environment":"production"' not in raw:
        return False
    if not isinstance(details, dict):
        return False
    risks = details.get("risks")
    text = json.dumps(risks, separators=(",", ":")) if isinstance(risks, (list, dict)) else risks
    return (risks is not None and text != "[]") or details.get("environment") == "production"


def tally(entries: Iterable[Entry], opened: Mapping[str, Sequence[tuple[int, datetime]]]) -> Counter[Key]:
    """The facets of some entries; ``opened`` holds the ``pending`` entries (seq, time) by request id of
    every ``approved`` entry among them."""
    out: Counter[Key] = Counter()
    for seq, entry, raw in entries:
        kind, when = entry.get("type"), entry.get("time")
        if not isinstance(kind, str) or not isinstance(when, str):
            continue
        hour = when[:13]
        out[(hour, COUNT, kind, _reason(entry), 0)] += 1
        details = entry.get("details")
        if '"suppressed"' in raw and isinstance(details, dict) and details.get("suppressed") is not None:
            for reason, refusals in carried_refusals(details).items():
                out[(hour, CARRIED, kind, reason, 0)] += refusals
        if kind == EventType.ISSUED and _risky(raw, details):
            out[(hour, RISKY, kind, "", 0)] += 1
        request_id = entry.get("request_id")
        if kind == EventType.APPROVED and isinstance(request_id, str):
            approved_at = parse_time(when)
            for opened_seq, opened_at in opened.get(request_id, ()):
                if opened_seq < seq:
                    out[(hour, WAIT, kind, "", (approved_at - opened_at) // MICROSECOND)] += 1
    return out


class LogAggregates:
    """The cache on one unit of work's connection; ``fill`` says whether computed blocks are written
    (in transactions of their own, on another connection of the engine)."""

    def __init__(self, connection: Connection, *, postgres: bool, fill: bool) -> None:
        self._connection = connection
        self._postgres = postgres
        url = connection.engine.url
        # NOTE: an in-memory SQLite database has one connection: no second one to write on.
        self._fill = fill and (postgres or url.database not in (None, "", ":memory:"))

    # --- reading entries -----------------------------------------------------------------------
    def entries(self, *conditions: Any) -> list[Entry]:
        rows = self._connection.execute(select(EVENTS.c.seq, EVENTS.c.body).where(*conditions)
                                        .order_by(EVENTS.c.seq)).all()
        return [(int(seq), json.loads(body), body) for seq, body in rows]

    def _time(self) -> Any:
        return body_field("time", postgres=self._postgres)

    def _opened(self, entries: Sequence[Entry]) -> dict[str, list[tuple[int, datetime]]]:
        """The ``pending`` entries of the requests of the ``approved`` entries among ``entries``."""
        wanted = sorted({entry["request_id"] for _, entry, _ in entries
                         if entry.get("type") == EventType.APPROVED and isinstance(entry.get("request_id"), str)})
        opened: dict[str, list[tuple[int, datetime]]] = {}
        request_id = body_field("request_id", postgres=self._postgres)
        for start in range(0, len(wanted), 500):
            for seq, entry, _ in self.entries(request_id.in_(wanted[start:start + 500])):
                if entry.get("type") == EventType.PENDING and isinstance(entry.get("time"), str):
                    opened.setdefault(entry["request_id"], []).append((seq, parse_time(entry["time"])))
        return opened

    def _tally(self, entries: list[Entry]) -> Counter[Key]:
        return tally(entries, self._opened(entries))

    # --- blocks -----------------------------------------------------------------------------
    def closed_blocks(self) -> int:
        """How many blocks are closed (the log has an entry past each)."""
        head = self._connection.execute(select(func.max(EVENTS.c.seq))).scalar_one_or_none()
        return int(head or 0) // BLOCK

    def block_tally(self, block: int) -> Counter[Key]:
        """A closed block's facets, from its bodies."""
        return self._tally(self.entries(EVENTS.c.seq > block * BLOCK, EVENTS.c.seq <= (block + 1) * BLOCK))

    def _save(self, block: int, figures: Counter[Key]) -> None:
        """The block's rows and its marker, in one transaction; nothing if another filler got there first."""
        if not self._fill:
            return
        time = self._time()
        low, high = self._connection.execute(select(func.min(time), func.max(time)).where(
            EVENTS.c.seq > block * BLOCK, EVENTS.c.seq <= (block + 1) * BLOCK)).one()
        values = {"block": block, "entries": BLOCK, "filled_at": datetime.now(UTC), "min_time": low, "max_time": high}
        marker = (postgres_insert(BLOCKS).values(values).on_conflict_do_nothing() if self._postgres
                  else insert(BLOCKS).values(values).prefix_with("OR IGNORE"))
        try:
            with self._connection.engine.begin() as writer:
                if writer.execute(marker.returning(BLOCKS.c.block)).first() is None:
                    return  # filled meanwhile, in the same rows
                rows = [{"block": block, "hour": hour, "facet": facet, "type": kind, "key": key, "value": value,
                         "n": n} for (hour, facet, kind, key, value), n in figures.items()]
                if rows:
                    writer.execute(insert(AGGREGATES), rows)
        except SQLAlchemyError as error:
            # NOTE: the figures stand without the cache (this read computed the block); the next read tries again.
            log.warning("log aggregates: block %s not cached (%s)", block, type(error).__name__, exc_info=True)

    def fill(self, *, limit: int | None = None) -> int:
        """Compute and save closed blocks not cached yet (at most ``limit``); how many were."""
        missing = self._missing(self.closed_blocks())[:limit]
        for block in missing:
            self._save(block, self.block_tally(block))
        return len(missing)

    def _missing(self, closed: int) -> list[int]:
        filled = {int(b) for (b,) in self._connection.execute(select(BLOCKS.c.block).where(BLOCKS.c.block < closed))}
        return [block for block in range(closed) if block not in filled]

    # --- windows ------------------------------------------------------------------------------
    def window(self, *, since: datetime, until: datetime, by_day: bool = False) -> Counter[Key]:
        """The facets of the entries whose time is in ``[since, until]``.  Waits are keyed by the hour ``""``
        when they come from the cache (the figures add them up over the window); ``by_day``: the cached counts
        are keyed by their day only."""
        closed = self.closed_blocks()
        closed_end = closed * BLOCK
        floor = since.replace(minute=0, second=0, microsecond=0)
        full_start = floor if floor == since else floor + HOUR
        full_end = (until + MICROSECOND).replace(minute=0, second=0, microsecond=0)
        time = self._time()
        out: Counter[Key] = Counter()
        if full_start < full_end:
            first, last = hour_of(full_start), hour_of(full_end)
            out.update(self._cached(closed, first, last, by_day=by_day))
            edges = or_(and_(time >= log_time(since), time < log_time(full_start)),
                        and_(time >= log_time(full_end), time <= log_time(until)))
        else:
            edges = and_(time >= log_time(since), time <= log_time(until))
        # NOTE: the closed blocks' entries are kept here, not in SQL: with a seq bound beside it, SQLite walks the
        # primary key over every closed block instead of the body time index.
        out.update(self._tally([entry for entry in self.entries(edges) if entry[0] <= closed_end]))
        low, high = log_time(since), log_time(until)
        tail = [entry for entry in self.entries(EVENTS.c.seq > closed_end)
                if isinstance(entry[1].get("time"), str) and low <= entry[1]["time"] <= high]
        out.update(self._tally(tail))
        return out

    def _cached(self, closed: int, first: str, last: str, *, by_day: bool) -> Counter[Key]:
        """Every closed block's rows for the hours ``first`` (included) to ``last`` (excluded); ``by_day``: counts
        keyed by the day (``2026-12-02``), not the hour."""
        missing = self._missing(closed)
        out: Counter[Key] = Counter()
        a = AGGREGATES.c
        cached = and_(a.hour >= first, a.hour < last, a.block < closed)
        if missing:
            cached = and_(cached, a.block.not_in(missing))
        n = func.sum(a.n)
        # NOTE: by day when the figures want no finer: a 30-day window is then ~700 rows, not ~17,000.
        hour = func.substr(a.hour, 1, 10) if by_day else a.hour
        rows = self._connection.execute(select(hour, a.facet, a.type, a.key, a.value, n)
                                        .where(cached, a.facet.in_(BY_TIME))
                                        .group_by(hour, a.facet, a.type, a.key, a.value)).all()
        for when, facet, kind, key, value, count in rows:
            out[(when, facet, kind, key, int(value))] += int(count)
        rows = self._connection.execute(select(a.value, n).where(cached, a.facet == WAIT).group_by(a.value)).all()
        for value, count in rows:
            out[("", WAIT, EventType.APPROVED.value, "", int(value))] += int(count)
        for block in missing:
            # NOTE: a block nobody has cached yet is computed from its bodies (and cached for the next read).
            figures = self.block_tally(block)
            self._save(block, figures)
            for (when, facet, kind, key, value), count in figures.items():
                if first <= when < last:
                    out[(when[:10] if by_day and facet in BY_TIME else when, facet, kind, key, value)] += count
        return out


# (after, up_to, cached, high): seqs ``after + 1 .. up_to`` (None: to the head) that may hold entries of a time
# window; ``cached``: their blocks are filled (each holds an entry on the window's side of its bounds), and
# ``high`` is the greatest body time of the run's first block (None when not cached).
Run = tuple[int, int | None, bool, str | None]


def window_runs(connection: Connection, *, after_seq: int, since: str | None, until: str | None) -> list[Run]:
    """The runs of seqs after ``after_seq``, in seq order, outside which no entry has a body time in the window
    ``[since, until)`` (log times; either may be None): every seq but those of the filled closed blocks whose
    least and greatest body times (log_aggregate_blocks, compared in SQL as the body time is) keep the window out.
    A block not filled is kept, never assumed empty; so is the open tail after the closed blocks."""
    block_size = BLOCK  # NOTE: read once (tests patch the module's BLOCK)
    head = int(connection.execute(select(func.max(EVENTS.c.seq))).scalar_one_or_none() or 0)
    closed, start = head // block_size, after_seq // block_size
    if start >= closed:
        return [(after_seq, None, False, None)]
    b = BLOCKS.c
    outside = [b.max_time.is_(None), b.min_time.is_(None)]
    if since is not None:
        outside.append(b.max_time < since)
    if until is not None:
        # NOTE: SQLite: a (tampered) body time that is a JSON number is a number to SQL, less than every text, so
        # it is in every window with an ``until``; the block's least time is then that number stored as a text
        # ('7', past any log time as a text).  Such a bound keeps no window out: the block is read, as if not
        # cached.  A number's text never has a log time's shape (4 digits, a dash).  The greatest time needs no such
        # care: it is a number only when every time of the block is one, and no number is in a window with a since.
        after_until = b.min_time >= until
        outside.append(and_(b.min_time.op("GLOB")(LOG_TIME_GLOB), after_until) if connection.dialect.name == "sqlite"
                       else after_until)
    # One read of the filled blocks in range: which are filled, and which of those may hold the window (the
    # bounds compared in SQL, as the body time is).
    filled = connection.execute(select(b.block, b.max_time, ~or_(*outside))
                                .where(b.block >= start, b.block < closed)).all()
    cached = {int(block) for block, _, _ in filled}
    kept = {int(block): high for block, high, may_hold in filled if may_hold}
    runs: list[Run] = []
    for block in range(start, closed):
        if block in cached and block not in kept:
            continue
        after, up_to, is_cached = max(block * block_size, after_seq), (block + 1) * block_size, block in cached
        if runs and runs[-1][1] == block * block_size and runs[-1][2] == is_cached:
            runs[-1] = (runs[-1][0], up_to, is_cached, runs[-1][3])
        else:
            runs.append((after, up_to, is_cached, kept.get(block) if is_cached else None))
    tail = max(closed * block_size, after_seq)
    if runs and runs[-1][1] == tail and not runs[-1][2]:
        runs[-1] = (runs[-1][0], None, False, None)
    else:
        runs.append((tail, None, False, None))
    return runs


def _label(hour: str, bucketing: Bucketing) -> str:
    """The dashboard's bucket label of an hour (``2026-12-02T13`` -> ``2026-12-02 13:00`` or ``2026-12-02``;
    a day, ``2026-12-02``, only by day)."""
    return f"{hour[:10]} {hour[11:13]}:00" if bucketing.unit == "hour" else hour[:10]


class CachedLogFigures(LogFigures):
    """The dashboard's figures (``broker.ports.LogFigureQueries``) from the cache: the same answers as
    :class:`LogFigures` computes from every entry (tests/storage/test_log_aggregates.py compares them)."""

    def __init__(self, session: Session, *, fill: bool) -> None:
        super().__init__(session)
        connection = session.connection()
        self._aggregates = LogAggregates(connection, postgres=self._postgres, fill=fill)
        self._windows: dict[tuple[datetime, datetime, bool], Counter[Key]] = {}

    def _window(self, since: datetime, until: datetime, *, by_hour: bool = False) -> Counter[Key]:
        """The window's facets, shared by the figures; counts by day unless an hour's are wanted or the dashboard
        draws the window by hour (Bucketing.for_range)."""
        by_day = not by_hour and Bucketing.for_range(since, until).unit == "day"
        if (since, until, by_day) not in self._windows:
            self._windows[(since, until, by_day)] = self._aggregates.window(since=since, until=until, by_day=by_day)
        return self._windows[(since, until, by_day)]

    def counts_over_time(self, *, types: Sequence[str], since: datetime, until: datetime,
                         bucketing: Bucketing) -> list[tuple[str, str, int]]:
        wanted = set(types)
        counts: Counter[tuple[str, str]] = Counter()
        for (hour, facet, kind, _, _), n in self._window(since, until, by_hour=bucketing.unit == "hour").items():
            if facet == COUNT and kind in wanted:
                counts[(_label(hour, bucketing), kind)] += n
        return [(bucket, kind, n) for (bucket, kind), n in sorted(counts.items())]

    def counts_by_type(self, *, types: Sequence[str], since: datetime, until: datetime) -> dict[str, int]:
        wanted = set(types)
        counts: Counter[str] = Counter()
        for (_, facet, kind, _, _), n in self._window(since, until).items():
            if facet == COUNT and kind in wanted:
                counts[kind] += n
        return dict(counts)

    def refusal_figures(self, *, refusal_types: Sequence[str], carrying_types: Sequence[str], since: datetime,
                        until: datetime, bucketing: Bucketing) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
        refusing, carrying = set(refusal_types) & set(carrying_types), set(carrying_types)
        reasons: Counter[str] = Counter()
        carried: Counter[tuple[str, str]] = Counter()
        for (hour, facet, kind, key, _), n in self._window(since, until, by_hour=bucketing.unit == "hour").items():
            if facet == COUNT and kind in refusing:
                reasons[key] += n
            elif facet == CARRIED and kind in carrying:
                carried[(_label(hour, bucketing), key)] += n
        return dict(reasons), [(bucket, code, n) for (bucket, code), n in sorted(carried.items())]

    def time_to_approve(self, *, since: datetime, until: datetime) -> tuple[dict[str, int], float | None]:
        waits: Counter[int] = Counter()
        for (_, facet, _, _, value), n in self._window(since, until).items():
            if facet == WAIT:
                waits[value] += n
        return wait_figures([(value * MICROSECOND).total_seconds()
                             for value in sorted(waits) for _ in range(waits[value])])

    def risky_grants(self, *, since: datetime, until: datetime, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        total = sum(n for (_, facet, _, _, _), n in self._window(since, until).items() if facet == RISKY)
        return total, self._newest_risky(self._risky_where(since=since, until=until, walked=True), limit)


def fill_log_aggregates(database: Any, *, limit: int | None = None) -> int:
    """Cache the closed blocks not cached yet (``broker.storage.engine.Database``); how many were.  Run in the
    background when a block closes (broker.runtime.container), so that reads seldom compute one."""
    with database.read() as repo:
        return LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=True).fill(limit=limit)
