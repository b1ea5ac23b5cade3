"""The cache of ``broker audit report``'s figures per closed block of seqs (table ``log_report_blocks``).

What a block's figures are is the report's business (``broker.usecases.audit``: computed from the block's
parsed bodies by the report's own per-entry rules, stored as one JSON text); here is only where they live
and which blocks a report may take them from.  A block is ``BLOCK`` seqs (``block * BLOCK + 1 .. (block + 1) *
BLOCK``), closed once the log has an entry past it, so its entries never change; smaller than the dashboard's
(``broker.storage.log_aggregates``), as a report reads the open tail and the block across ``since`` from the
bodies.

A report over ``[since, head]`` reads, in seq order, the cached figures of every filled block whose least
body time is ``since`` or later (each of its entries is in the window, as SQL compares the body time), skips
the filled blocks whose greatest body time is before ``since`` (none of their entries is), and reads every
other seq from the bodies (a block not filled, one that straddles ``since``, the open tail): exactly the
entries the walk over the bodies would read.

Every row carries the version of the report's rules that computed it (``rules``: broker.usecases.audit.REPORT_RULES,
in both primary keys): a report and a fill read the rows of their own version only, so a release whose rules
differ reads the blocks an older one filled as not filled (from their bodies) and fills them again.  The rows of
other versions are left as they are: a replica still on an older release (an upgrade under way) reads its own
with two statements (figures, then counts), and a block's counts removed between them would be missing from its
report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.engine import Connection

from broker.storage.body_fields import body_field
from broker.storage.models import EventRow, LogReportBlockRow, LogReportCountRow

EVENTS = EventRow.__table__  # type: ignore[attr-defined]
REPORT_BLOCKS = LogReportBlockRow.__table__  # type: ignore[attr-defined]
REPORT_COUNTS = LogReportCountRow.__table__  # type: ignore[attr-defined]
# (facet, principal, template, name, n): a count of log_report_counts.
Count = tuple[str, str, str, str, int]
# Seqs per block (a divisor of the dashboard's block: the fill runs when either closes).
BLOCK = 1024
# (after, up_to, figures): seqs ``after + 1 .. up_to`` (None: to the head) read from the bodies when ``figures``
# is None, else one cached block (those seqs) wholly in the window, as its figures' JSON text.
Segment = tuple[int, int | None, str | None]


def _closed_blocks(connection: Connection, block_size: int) -> int:
    head = connection.execute(select(func.max(EVENTS.c.seq))).scalar_one_or_none()
    return int(head or 0) // block_size


def report_segments(connection: Connection, *, since: str, rules: int) -> list[Segment]:
    """The seqs a report from the log time ``since`` reads, in seq order (see the module's docstring), by the
    cached rows of the rules version ``rules``."""
    block_size = BLOCK  # NOTE: read once (tests patch the module's BLOCK)
    closed = _closed_blocks(connection, block_size)
    b = REPORT_BLOCKS.c
    inside = b.min_time >= since
    rows = connection.execute(select(b.block, inside, b.max_time < since, case((inside, b.figures), else_=None))
                              .where(b.rules == rules, b.entries == block_size, b.block < closed,
                                     b.figures.is_not(None))).all() if closed else []
    cached = {int(block): figures for block, is_inside, _, figures in rows if is_inside}
    before = {int(block) for block, is_inside, is_before, _ in rows if is_before and not is_inside}
    segments: list[Segment] = []
    for block in range(closed):
        start, end = block * block_size, (block + 1) * block_size
        if block in before:
            continue
        if block in cached:
            segments.append((start, end, cached[block]))
        elif segments and segments[-1][2] is None and segments[-1][1] == start:
            segments[-1] = (segments[-1][0], end, None)
        else:
            segments.append((start, end, None))
    tail = closed * block_size
    if segments and segments[-1][2] is None and segments[-1][1] == tail:
        segments[-1] = (segments[-1][0], None, None)
    else:
        segments.append((tail, None, None))
    return segments


def missing_report_blocks(connection: Connection, *, rules: int) -> list[int]:
    """The closed blocks without a ``log_report_blocks`` row of the rules version ``rules``, oldest first."""
    block_size = BLOCK
    closed = _closed_blocks(connection, block_size)
    b = REPORT_BLOCKS.c
    filled = {int(block) for (block,) in connection.execute(
        select(b.block).where(b.rules == rules, b.entries == block_size, b.block < closed))}
    return [block for block in range(closed) if block not in filled]


def block_entries(connection: Connection, block: int, *, postgres: bool) -> tuple[list[dict[str, Any]] | None,
                                                                                 str | None, str | None]:
    """A closed block's parsed bodies in seq order and the least and greatest body time of its entries as SQL
    compares it (the report's window does).  The bodies are None when one does not parse as a JSON object, or
    when a body time is not a text to SQL: a block is taken whole into a window by its least time, so each of its
    entries must be compared as a text (a missing or null time is in no window; SQLite's number is less than
    every text; a key twice is the first to SQLite, the last to Python and PostgreSQL)."""
    block_size = BLOCK
    in_block = (EVENTS.c.seq > block * block_size, EVENTS.c.seq <= (block + 1) * block_size)
    time = body_field("time", postgres=postgres)
    is_text = time.is_not(None) if postgres else func.typeof(time) == "text"
    try:
        low, high, texts, entries_in_block = connection.execute(
            select(func.min(time), func.max(time), func.count(case((is_text, 1))), func.count())
            .where(*in_block)).one()
    except SQLAlchemyError:
        # NOTE: a body SQL cannot read as JSON: the block stays read from its bodies, as before (the walk fails
        # on it as it did).
        return None, None, None
    if texts != entries_in_block:
        return None, low, high
    entries = []
    for (body,) in connection.execute(select(EVENTS.c.body).where(*in_block).order_by(EVENTS.c.seq)):
        try:
            entry = json.loads(body)
        except (ValueError, RecursionError):
            return None, low, high
        if not isinstance(entry, dict):
            return None, low, high
        entries.append(entry)
    return entries, low, high


def pending_request_ids(connection: Connection, request_ids: Sequence[str], *, through_block: int,
                        postgres: bool) -> set[str] | None:
    """Those of ``request_ids`` that a ``pending`` entry up to the end of block ``through_block`` names (parsed
    bodies, read on the body request id index); None when SQL cannot read one of their bodies."""
    up_to = (through_block + 1) * BLOCK
    found: set[str] = set()
    request_id = body_field("request_id", postgres=postgres)
    wanted = sorted(set(request_ids))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        try:
            rows = connection.execute(select(EVENTS.c.body).where(request_id.in_(chunk),
                                                                  EVENTS.c.seq <= up_to)).all()
        except SQLAlchemyError:
            return None
        for (body,) in rows:
            try:
                entry = json.loads(body)
            except (ValueError, RecursionError):
                continue  # NOTE: a superset does no harm (see broker.usecases.audit); an unreadable body names none
            if isinstance(entry, dict) and entry.get("type") == "pending" and isinstance(entry.get("request_id"), str):
                found.add(entry["request_id"])
    return found & set(wanted)


def report_counts(connection: Connection, blocks: Sequence[int], *, rules: int) -> list[Count]:
    """The counts of these blocks (of this ``BLOCK`` and the rules version ``rules``), summed."""
    c = REPORT_COUNTS.c
    out: dict[tuple[str, str, str, str], int] = {}
    wanted = sorted(set(blocks))
    for start in range(0, len(wanted), 1000):
        rows = connection.execute(select(c.facet, c.principal, c.template, c.name, func.sum(c.n))
                                  .where(c.rules == rules, c.entries == BLOCK,
                                         c.block.in_(wanted[start:start + 1000]))
                                  .group_by(c.facet, c.principal, c.template, c.name))
        for facet, principal, template, name, n in rows:
            key = (facet, principal, template, name)
            out[key] = out.get(key, 0) + int(n)
    return [(*key, n) for key, n in out.items()]


def save_report_block(connection: Connection, block: int, *, rules: int, min_time: str | None,
                      max_time: str | None, figures: str | None, counts: Sequence[Count], postgres: bool) -> bool:
    """Insert a block's row and its counts, of the rules version ``rules`` (in the caller's transaction); False
    (nothing written) when another filler got there first."""
    values = {"rules": rules, "entries": BLOCK, "block": block, "filled_at": datetime.now(UTC), "min_time": min_time,
              "max_time": max_time, "figures": figures}
    statement = (postgres_insert(REPORT_BLOCKS).values(values).on_conflict_do_nothing() if postgres
                 else insert(REPORT_BLOCKS).values(values).prefix_with("OR IGNORE"))
    if connection.execute(statement.returning(REPORT_BLOCKS.c.block)).first() is None:
        return False
    # NOTE: counts without their block's row (left by hand) are nobody's: replaced.
    c = REPORT_COUNTS.c
    connection.execute(delete(REPORT_COUNTS).where(c.rules == rules, c.entries == BLOCK, c.block == block))
    if counts:
        connection.execute(insert(REPORT_COUNTS), [
            {"rules": rules, "entries": BLOCK, "block": block, "facet": facet, "principal": principal,
             "template": template, "name": name, "n": n} for facet, principal, template, name, n in counts])
    return True
