"""Aggregate queries over the issuance log and the grants, for the reviewers' dashboard.

Every figure is one ``GROUP BY`` (or a bounded list) computed by the database: nothing loads the
log's entries into the process, so the dashboard stays quick on a log of millions of entries
(``tests/bench/bench_dashboard.py`` measures it).  Types, times, templates and actors are read from
the indexed columns written with each entry; reason codes, risks and environments, which only the
entry's body holds, are read from the body with the database's JSON functions (SQLite's
``json_extract``, PostgreSQL's ``json``), only for the entries of the types concerned.  Reading
bodies is what a long range costs, so the refusals' reasons and the suppressed counts they carry come
from one pass over their bodies, and a plain substring test (``instr``/``strpos``) picks the candidates
before any parsing.  (No side column is trusted for these: a reviewer's figures come only from what the
hash chain covers.)
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, case, cast, exists, func, literal, literal_column, or_, select
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.orm import aliased
from sqlmodel import Session

from broker.domain.events import EventType
from broker.domain.refusal_counts import carried_refusals
from broker.domain.times import Bucketing, as_utc
from broker.storage.body_fields import jsonb_body
from broker.storage.models import EventRow, GrantRow

EVENTS = EventRow.__table__
GRANTS = GrantRow.__table__

# Time-to-approve buckets: upper bounds in seconds (the last is open-ended), with their labels.
WAIT_BUCKETS: tuple[tuple[float, str], ...] = (
    (60, "under 1 min"), (300, "1-5 min"), (900, "5-15 min"), (1800, "15-30 min"), (3600, "30-60 min"),
    (float("inf"), "over 1 h"),
)


def wait_figures(waits: Sequence[float]) -> tuple[dict[str, int], float | None]:
    """Waits (seconds) by WAIT_BUCKETS, and their median rounded to milliseconds (None without any)."""
    counts = dict.fromkeys((name for _, name in WAIT_BUCKETS), 0)
    for seconds in waits:
        counts[next(name for bound, name in WAIT_BUCKETS if seconds < bound)] += 1
    return counts, round(statistics.median(waits), 3) if waits else None


def body_path(*path: str, postgres: bool):
    """One string field of the entry's body (a JSON path such as ``details``, ``environment``)."""
    if postgres:
        # NOTE: json, not jsonb: one field read from each body parses it once, without building jsonb.
        expression = cast(EVENTS.c.body, JSON)
        for key in path[:-1]:
            expression = expression[key]
        return expression[path[-1]].astext
    return func.json_extract(EVENTS.c.body, "$." + ".".join(path))


def contains(column, text: str, *, postgres: bool):
    """A substring test (``instr`` / ``strpos``: no LIKE pattern to match, no escaping)."""
    if postgres:
        return func.strpos(column, literal(text)) > 0
    return func.instr(column, literal(text)) > 0


def risk_condition(risk: str, *, postgres: bool):
    """The entries (``issued`` ones) whose body declares ``risk`` (broker.domain.events.RISK_FILTERS): ``risky``,
    any risk or production, as the dashboard's chart of destructive and high-risk grants counts them;
    ``destructive``, the destructive risk among the declared ones (as ``broker audit report`` lists them)."""
    risks = body_path("details", "risks", postgres=postgres)
    if risk == "risky":
        environment = body_path("details", "environment", postgres=postgres)
        # NOTE: bodies are canonical JSON (compact, sorted keys): a text search picks the candidates cheaply,
        # and only those are parsed for the exact test.
        candidate = or_(contains(EVENTS.c.body, '"risks":["', postgres=postgres),
                        contains(EVENTS.c.body, '"environment":"production"', postgres=postgres))
        return and_(candidate, or_(and_(risks.is_not(None), cast(risks, String) != literal("[]")),
                                   environment == "production"))
    if risk == "destructive":
        if postgres:
            declared = jsonb_body()["details"]["risks"]
            exact = and_(func.jsonb_typeof(declared) == "array", declared.has_key("destructive"))
        else:
            member = func.json_each(EVENTS.c.body, "$.details.risks").table_valued("value", "type")
            exact = and_(func.json_type(EVENTS.c.body, "$.details.risks") == "array",
                         exists().select_from(member).where(member.c.type == "text",
                                                            member.c.value == "destructive"))
        return and_(contains(EVENTS.c.body, '"destructive"', postgres=postgres), exact)
    raise ValueError(f"not a risk filter: {risk!r}")


class LogFigures:
    """The dashboard's queries (``broker.ports.LogFigureQueries``), on one unit of work's session
    (``Repository.log_figures``)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._postgres = self._session.get_bind().dialect.name == "postgresql"

    # --- helpers -----------------------------------------------------------------------------
    def _body(self, *path: str):
        return body_path(*path, postgres=self._postgres)

    def _bucket(self, bucketing: Bucketing):
        if self._postgres:
            # NOTE: in UTC whatever the session's TimeZone (the labels are UTC, as the log's times are).
            return func.to_char(func.date_trunc(bucketing.unit, func.timezone("UTC", EVENTS.c.time)),
                                "YYYY-MM-DD HH24:00" if bucketing.unit == "hour" else "YYYY-MM-DD")
        return func.strftime(bucketing.spelling, EVENTS.c.time)

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

    def refusal_figures(self, *, refusal_types: Sequence[str], carrying_types: Sequence[str], since: datetime,
                        until: datetime, bucketing: Bucketing) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
        """In one pass over the bodies of the window's ``carrying_types`` entries: the entries of
        ``refusal_types`` by their ``reason_code``, and the suppressed refusals counted in the entries that carry
        counts (few: one per flooder a window at most) by bucket and reason.

        One pass, not two: reading the bodies is the cost on a long range (half a million of them on 30 days
        of a busy log), and both figures come from the same bodies."""
        reason = case((EVENTS.c.type.in_(list(refusal_types)), func.coalesce(self._body("reason_code"), literal(""))),
                      else_=literal(None)).label("reason")
        # NOTE: a text search first (cheap, no parsing): only the few carrying bodies leave the database whole.
        carrying = case((self._contains(EVENTS.c.body, '"suppressed"'), EVENTS.c.body), else_=literal(None))
        statement = (select(reason, carrying.label("carrying"), func.count(), func.min(EVENTS.c.time))
                     .where(EVENTS.c.time >= since, EVENTS.c.time <= until, EVENTS.c.type.in_(list(carrying_types)))
                     .group_by(reason, carrying))
        reasons: dict[str, int] = {}
        carried: Counter[tuple[str, str]] = Counter()
        for code, body, count, moment in self._rows(statement):
            if code is not None:
                reasons[str(code)] = reasons.get(str(code), 0) + int(count)
            if body is not None:
                details = json.loads(body).get("details") or {}
                if details.get("suppressed") is not None:
                    for carried_reason, refusals in carried_refusals(details).items():
                        carried[(bucketing.label(as_utc(moment)), carried_reason)] += refusals
        return reasons, [(bucket, code, n) for (bucket, code), n in sorted(carried.items())]

    def _contains(self, column, text: str):
        return contains(column, text, postgres=self._postgres)

    def time_to_approve(self, *, since: datetime, until: datetime) -> tuple[dict[str, int], float | None]:
        """Approved requests by how long they waited from ``pending`` to ``approved``, and the median wait.

        Two times per approved request leave the database, never an entry; the wait is their difference in
        Python, exact to the microsecond (SQLite's julianday arithmetic left noise that moved waits across a
        bucket's bound).  Only a ``pending`` entry logged before the ``approved`` one opens it (a request is
        pending before it is approved, in seq order as in fact)."""
        approved, opened = aliased(EVENTS), aliased(EVENTS)
        joined = approved.join(opened, and_(opened.c.request_id == approved.c.request_id,
                                            opened.c.type == EventType.PENDING.value, opened.c.seq < approved.c.seq))
        pairs = self._rows(select(approved.c.time, opened.c.time).select_from(joined).where(
            approved.c.type == EventType.APPROVED.value, approved.c.time >= since, approved.c.time <= until))
        return wait_figures([(as_utc(later) - as_utc(earlier)).total_seconds() for later, earlier in pairs])

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
        where = self._risky_where(since=since, until=until)
        # NOTE: two queries, not a window count: with count() over () the newest ones cannot stop at ``limit``,
        # and PostgreSQL then walks the whole log in seq order (24 h at 1,000,000 entries: 0.3 s -> 2.4 s).
        total = int(self._session.execute(select(func.count()).select_from(EVENTS).where(*where)).scalar_one())
        return total, self._newest_risky(self._risky_where(since=since, until=until, walked=True), limit)

    def _risky_where(self, *, since: datetime, until: datetime, walked: bool = False) -> tuple[Any, ...]:
        kind, time = (self._walked(EVENTS.c.type), self._walked(EVENTS.c.time)) if walked else (EVENTS.c.type,
                                                                                                 EVENTS.c.time)
        return (kind == EventType.ISSUED.value, time >= since, time <= until,
                risk_condition("risky", postgres=self._postgres))

    def _newest_risky(self, where: tuple[Any, ...], limit: int) -> list[dict[str, Any]]:
        newest = self._rows(self._newest_first(select(EVENTS.c.body).where(*where)).limit(limit))
        return [json.loads(body) for (body,) in newest]

    @staticmethod
    def _newest_first(statement):
        return statement.order_by(EVENTS.c.seq.desc())

    def _walked(self, column):
        """``column`` in a condition of a newest-first walk.  NOTE: SQLite otherwise reads every entry of the range
        from the (type, time) index and sorts them (30 days at 1M entries: 4 s); unary plus keeps it on the walk
        back in seq order, which stops at the ``limit``-th match."""
        return column if self._postgres else literal_column(f"+events.{column.name}", column.type)

    def newest(self, *, types: Sequence[str], since: datetime, until: datetime,
               limit: int = 20) -> list[dict[str, Any]]:
        """The newest entries of some types (revocations, lockdowns), as their bodies."""
        time = self._walked(EVENTS.c.time)
        statement = self._newest_first(select(EVENTS.c.body).where(
            time >= since, time <= until, self._walked(EVENTS.c.type).in_(list(types)))).limit(limit)
        return [json.loads(body) for (body,) in self._rows(statement)]
