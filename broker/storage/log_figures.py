"""Aggregate queries over the issuance log and the grants, for the reviewers' dashboard.

Every figure is one ``GROUP BY`` (or a bounded list) computed by the database: nothing loads the
log's entries into the process, so the dashboard stays quick on a log of millions of entries
(``tests/bench/bench_dashboard.py`` measures it).  Types, times, templates and actors are read from
the indexed columns written with each entry; reason codes, risks and environments, which only the
entry's body holds, are read from the body with the database's JSON functions (SQLite's
``json_extract``, PostgreSQL's ``json``), only for the entries of the types concerned.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Float, String, and_, cast, func, literal, or_, select
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.orm import aliased
from sqlmodel import Session

from broker.domain.events import EventType
from broker.domain.times import Bucketing
from broker.storage.models import EventRow, GrantRow

EVENTS = EventRow.__table__
GRANTS = GrantRow.__table__

# Time-to-approve buckets: upper bounds in seconds (the last is open-ended), with their labels.
WAIT_BUCKETS: tuple[tuple[float, str], ...] = (
    (60, "under 1 min"), (300, "1-5 min"), (900, "5-15 min"), (1800, "15-30 min"), (3600, "30-60 min"),
    (float("inf"), "over 1 h"),
)


class LogFigures:
    """The dashboard's queries (``broker.ports.LogFigureQueries``), on one unit of work's session
    (``Repository.log_figures``)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._postgres = self._session.get_bind().dialect.name == "postgresql"

    # --- helpers -----------------------------------------------------------------------------
    def _body(self, *path: str):
        """One string field of the entry's body (a JSON path such as ``details``, ``environment``)."""
        if self._postgres:
            # NOTE: json, not jsonb: one field read from each body parses it once, without building jsonb.
            expression = cast(EVENTS.c.body, JSON)
            for key in path[:-1]:
                expression = expression[key]
            return expression[path[-1]].astext
        return func.json_extract(EVENTS.c.body, "$." + ".".join(path))

    def _bucket(self, bucketing: Bucketing):
        if self._postgres:
            # NOTE: in UTC whatever the session's TimeZone (the labels are UTC, as the log's times are).
            return func.to_char(func.date_trunc(bucketing.unit, func.timezone("UTC", EVENTS.c.time)),
                                "YYYY-MM-DD HH24:00" if bucketing.unit == "hour" else "YYYY-MM-DD")
        return func.strftime(bucketing.spelling, EVENTS.c.time)

    def _seconds_between(self, later, earlier):
        if self._postgres:
            return func.extract("epoch", later - earlier)
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0

    def _rows(self, statement) -> list[Any]:
        return list(self._session.execute(statement))

    # --- figures -----------------------------------------------------------------------------
    def counts_over_time(self, *, types: Sequence[str], since: datetime, until: datetime,
                         bucketing: Bucketing) -> list[tuple[str, str, int]]:
        """(bucket, type, entries) for the given entry types, oldest bucket first."""
        bucket = self._bucket(bucketing).label("bucket")
        statement = (select(bucket, EVENTS.c.type, func.count().label("n"))
                     .where(EVENTS.c.time >= since, EVENTS.c.time <= until, EVENTS.c.type.in_(list(types)))
                     .group_by(bucket, EVENTS.c.type).order_by(bucket))
        return [(str(b), str(t), int(n)) for b, t, n in self._rows(statement)]

    def counts_by_type(self, *, types: Sequence[str], since: datetime, until: datetime) -> dict[str, int]:
        statement = (select(EVENTS.c.type, func.count())
                     .where(EVENTS.c.time >= since, EVENTS.c.time <= until, EVENTS.c.type.in_(list(types)))
                     .group_by(EVENTS.c.type))
        return {str(t): int(n) for t, n in self._rows(statement)}

    def refusals_by_reason(self, *, types: Sequence[str], since: datetime, until: datetime) -> dict[str, int]:
        """Entries of the refusal types by their ``reason_code`` (entries only: see ``carried_counts``)."""
        reason = func.coalesce(self._body("reason_code"), literal("")).label("reason")
        statement = (select(reason, func.count())
                     .where(EVENTS.c.time >= since, EVENTS.c.time <= until, EVENTS.c.type.in_(list(types)))
                     .group_by(reason))
        return {str(r): int(n) for r, n in self._rows(statement)}

    def carried_counts(self, *, types: Sequence[str], since: datetime, until: datetime,
                       limit: int = 10_000) -> list[tuple[datetime, dict[str, Any]]]:
        """(time, ``details``) of the entries that carry counts of suppressed refusals (few: one per flooder
        a window at most), for the use case to add up with the refusal budget's own reading."""
        statement = (select(EVENTS.c.time, EVENTS.c.body)
                     .where(EVENTS.c.time >= since, EVENTS.c.time <= until, EVENTS.c.type.in_(list(types)),
                            # NOTE: a text search first (cheap) so only the few carrying bodies are parsed.
                            EVENTS.c.body.contains('"suppressed"', autoescape=True),
                            self._body("details", "suppressed").is_not(None))
                     .order_by(EVENTS.c.seq).limit(limit))
        return [(time, json.loads(body).get("details") or {}) for time, body in self._rows(statement)]

    def time_to_approve(self, *, since: datetime, until: datetime) -> tuple[dict[str, int], float | None]:
        """Approved requests by how long they waited from ``pending`` to ``approved``, and the median wait.

        One number per approved request leaves the database (its wait), never an entry."""
        approved, opened = aliased(EVENTS), aliased(EVENTS)
        wait = cast(self._seconds_between(approved.c.time, opened.c.time), Float)
        joined = approved.join(opened, and_(opened.c.request_id == approved.c.request_id,
                                            opened.c.type == EventType.PENDING.value))
        waits = [float(w) for (w,) in self._rows(select(wait).select_from(joined).where(
            approved.c.type == EventType.APPROVED.value, approved.c.time >= since, approved.c.time <= until))]
        counts = dict.fromkeys((name for _, name in WAIT_BUCKETS), 0)
        for seconds in waits:
            counts[next(name for bound, name in WAIT_BUCKETS if seconds < bound)] += 1
        # NOTE: rounded to milliseconds: SQLite's julianday arithmetic leaves float noise.
        return counts, round(statistics.median(waits), 3) if waits else None

    def live_grants(self, *, now: datetime) -> list[tuple[str, str, str, int]]:
        """(agent, template, environment, grants) of unexpired, unrevoked grants, most first."""
        n = func.count().label("n")
        statement = (select(GRANTS.c.agent, GRANTS.c.template, GRANTS.c.environment, n)
                     .where(GRANTS.c.expiration > now, GRANTS.c.revoked_at.is_(None))
                     .group_by(GRANTS.c.agent, GRANTS.c.template, GRANTS.c.environment)
                     .order_by(n.desc(), GRANTS.c.agent, GRANTS.c.template))
        return [(str(a), str(t), str(e), int(c)) for a, t, e, c in self._rows(statement)]

    def risky_grants(self, *, since: datetime, until: datetime, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """``issued`` entries whose body declares a risk (destructive, permission-changing) or production:
        how many, and the newest ``limit`` of them (as the entries' bodies)."""
        risks = self._body("details", "risks")
        environment = self._body("details", "environment")
        empty = literal("[]")
        # NOTE: bodies are canonical JSON (compact, sorted keys): a text search picks the candidates cheaply,
        # and only those are parsed for the exact test.
        candidate = or_(EVENTS.c.body.contains('"risks":["', autoescape=True),
                        EVENTS.c.body.contains('"environment":"production"', autoescape=True))
        risky = and_(candidate, or_(and_(risks.is_not(None), cast(risks, String) != empty),
                                    environment == "production"))
        where = (EVENTS.c.type == EventType.ISSUED.value, EVENTS.c.time >= since, EVENTS.c.time <= until, risky)
        total = int(self._session.execute(select(func.count()).select_from(EVENTS).where(*where)).scalar_one())
        newest = self._rows(select(EVENTS.c.body).where(*where).order_by(EVENTS.c.seq.desc()).limit(limit))
        return total, [json.loads(body) for (body,) in newest]

    def newest(self, *, types: Sequence[str], since: datetime, until: datetime,
               limit: int = 20) -> list[dict[str, Any]]:
        """The newest entries of some types (revocations, lockdowns), as their bodies."""
        statement = (select(EVENTS.c.body)
                     .where(EVENTS.c.time >= since, EVENTS.c.time <= until, EVENTS.c.type.in_(list(types)))
                     .order_by(EVENTS.c.seq.desc()).limit(limit))
        return [json.loads(body) for (body,) in self._rows(statement)]
