"""``broker audit report`` from the cache of closed blocks (broker.storage.report_blocks) is the report of the walk over
every body (the walk of commit 2237c18, kept here as the reference, with its tally word for word): the same JSON,
byte for byte, over random logs with every entry type, requests that span blocks, times that do not follow the
seqs, decisions by others than the requester, risks, suppressed counts, odd bodies (a request id that is a number, a
requester that is a list, a body that does not parse), some blocks cached and some not, an open tail; on SQLite and
PostgreSQL."""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import statistics
import textwrap
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, text

from broker.domain import log as issuance_log
from broker.domain.events import CARRYING_TYPES, REFUSAL_TYPES, EventType
from broker.domain.principals import Principal, Role
from broker.domain.times import log_time, parse_time
from broker.ports import SystemClock
from broker.storage.engine import Database
from broker.storage import report_blocks
from broker.storage.log_aggregates import LogAggregates
from broker.storage.models import LogReportBlockRow, LogReportCountRow
from broker.usecases.audit import REPORT_RULES, REQUEST_STATES, AuditLog, RefusalFigures, ReportTally, _agent_row
from tests.storage.test_log_aggregates import BASE, EVENTS, HOUR_US, blocks_of, empty, throwaway_log

REPORT_BLOCKS = LogReportBlockRow.__table__
REPORT_COUNTS = LogReportCountRow.__table__


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(request, tmp_path_factory):
    yield from throwaway_log(request, tmp_path_factory)


@contextmanager
def sizes(report: int, dashboard: int):
    """Blocks of ``report`` seqs for the report's cache, of ``dashboard`` for the dashboard's (whose time bounds
    the walk over the bodies skips blocks by)."""
    with blocks_of(dashboard), patch.object(report_blocks, "BLOCK", report):
        yield
REVIEWER = Principal(id="human:rita", roles=frozenset({Role.REVIEWER}))
TYPES = ("requested", "pending", "approved", "cosigned", "denied", "issued", "refused", "refusals_suppressed",
         "refusals_suppressed_summary", "expired", "cancelled", "redeeming", "failed", "revoked", "lockdown")
AGENTS = ("agent:a", "agent:b")
HUMANS = ("human:bob", "human:carol")


class ReferenceTally:
    """ReportTally as it was before the cache of closed blocks (commit 2237c18), word for word: the reference."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(_agent_row)
        self.approvers: dict[str, Counter[str]] = defaultdict(Counter)
        self.refusers: dict[str, RefusalFigures] = defaultdict(RefusalFigures)
        self.refusals: list[dict[str, Any]] = []
        self.destructive: list[dict[str, Any]] = []
        self.high_risk: list[dict[str, Any]] = []
        self._opened: dict[str, datetime] = {}
        self._approved: set[str] = set()
        self._denied: set[str] = set()
        self._state: dict[str, tuple[tuple[str, str], str]] = {}

    def add(self, entry: Mapping[str, Any]) -> None:
        kind = entry["type"]
        if kind in CARRYING_TYPES:
            self.refusers[entry.get("actor") or "?"].add(entry)
        if kind == EventType.REFUSALS_SUPPRESSED_SUMMARY:
            return  # a count only: no template, no request
        details = entry.get("details") or {}
        request_id = entry.get("request_id")
        actor = entry.get("actor") or "?"
        requester = details.get("requester") if request_id else None
        # A request's entries belong to its agent, whoever wrote them; others belong to their actor.
        key = (requester or actor, entry.get("template") or "?")
        by_someone_else = requester is not None and actor != requester
        if kind in REFUSAL_TYPES:
            self.refusals.append({"seq": entry["seq"], "time": entry["time"], "actor": entry.get("actor"),
                                  "template": entry.get("template"), "reason_code": entry.get("reason_code"),
                                  "type": kind})
            if by_someone_else:
                self.approvers[actor]["refused"] += 1  # a refused decision: the decider's, not the agent's
            else:
                self.rows[key]["refused"] += 1
        elif kind == EventType.COSIGNED:
            self.rows[key]["cosignatures"] += 1
            self.approvers[actor]["approved"] += 1
        elif kind == EventType.DENIED:
            self.approvers[actor]["denied"] += 1
            if request_id not in self._denied:
                self._denied.add(request_id)
                self.rows[key]["denied"] += 1
        elif kind == EventType.APPROVED and request_id not in self._approved:
            self._approved.add(request_id)
            self.rows[key]["approvals"] += 1
            if request_id in self._opened:
                self.rows[key]["waits"].append((parse_time(entry["time"]) - self._opened[request_id]).total_seconds())
        elif kind == EventType.ISSUED:
            self.rows[key]["issued"] += 1
            self._note_risk(entry, details)
        elif kind == EventType.PENDING:
            self._opened[request_id] = parse_time(entry["time"])
        if request_id and kind in REQUEST_STATES:
            self._state[request_id] = (key, kind)

    def _note_risk(self, entry: Mapping[str, Any], details: Mapping[str, Any]) -> None:
        risks = [str(r) for r in details.get("risks") or [] if isinstance(r, str)]
        environment = details.get("environment")
        shown = {"seq": entry["seq"], "time": entry["time"], "template": entry.get("template"),
                 "request_id": entry.get("request_id"), "actor": entry.get("actor"),
                 "access_key_id": entry.get("access_key_id"), "risks": risks, "environment": environment}
        if "destructive" in risks:
            self.destructive.append(shown)
        elif risks or environment == "production":
            self.high_risk.append(shown)

    def view(self) -> dict[str, Any]:
        for key, state in self._state.values():
            if state == "pending":
                self.rows[key]["pending"] += 1
        summary = []
        for (agent, template), stats in sorted(self.rows.items()):
            waits = stats.pop("waits")
            summary.append({"agent": agent, "template": template, **stats,
                            "median_time_to_approve_seconds": statistics.median(waits) if waits else None})
        summary.sort(key=lambda r: (-r["refused"], -r["denied"], r["agent"], r["template"]))
        by_principal = sorted((figures.view(refuser) for refuser, figures in self.refusers.items()),
                              key=lambda r: (-r["suppressed"], -r["refused"], r["principal"]))
        approvers = [{"approver": who, "approved": counts["approved"], "denied": counts["denied"],
                      "refused": counts["refused"]} for who, counts in sorted(self.approvers.items())]
        return {"refused_total": sum(r["refused"] for r in by_principal),
                "suppressed_total": sum(r["suppressed"] for r in by_principal),
                "refusals_by_principal": by_principal, "refusals": self.refusals,
                "destructive_grants": self.destructive, "high_risk_grants": self.high_risk,
                "approvers": approvers, "by_agent_and_template": summary}


def reference_report(database: Database, since: datetime) -> dict[str, Any]:
    """AuditLog.report as it was (commit 2237c18): every entry of the window from its body, in seq order."""
    tally = ReferenceTally()
    with database.read() as repo:
        first = repo.first_seq_since(since)
    after = 0 if first is None else first - 1
    while first is not None:
        with database.read() as repo:
            page = repo.query_events(filters={}, after_seq=after, limit=1000, since=since)
        for entry in page:
            tally.add(entry)
        if len(page) < 1000:
            break
        after = page[-1]["seq"]
    return {"since": log_time(since), **tally.view()}


def outcome(call) -> tuple[str, str]:
    """The report as JSON text (keys in order, 1 apart from 1.0), or the class of the error it raised."""
    try:
        return "report", json.dumps(call())
    except Exception as error:  # noqa: BLE001 - the classes are compared
        note("".join(traceback.format_exception(error)[-3:]))
        return "error", type(error).__name__


REASONS = (None, "rate_limited", "guardrail_violation")
LONG = "".join(hashlib.sha256(str(n).encode()).hexdigest() for n in range(50))
ODD = ("number request id", "list requester", "unparseable", "details list", "number time", "nul actor", "no time",
       "null time first", "number time first", "number requester", "nul request id", "backslash request id",
       "long reason", "huge count", "big count")

entry_strategy = st.fixed_dictionaries({
    "type": st.sampled_from(TYPES),
    "request": st.integers(0, 6),
    "agent": st.sampled_from(AGENTS),
    "decider": st.sampled_from(AGENTS + HUMANS),
    "template": st.sampled_from(["t1", "t2", None]),
    "reason": st.sampled_from(REASONS),
    "risks": st.sampled_from([None, [], ["destructive"], ["permission_changing"], "absent"]),
    "environment": st.sampled_from(["dev", "production", None]),
    "suppressed": st.sampled_from([None, None, 3, 0, "announced", "unattributed"]),
    "requester": st.sampled_from([True, True, True, False]),
    # Mostly in seq order, sometimes far before or after (the replicas' clocks).
    "jitter": st.sampled_from([0, 0, 0, 0, 1, -1, -40 * 60 * 1_000_000, 30 * 60 * 1_000_000]),
})


def body(seq: int, spec: dict, *, odd: str | None = None) -> str:
    kind = spec["type"]
    by_other = kind in ("cosigned", "denied") or (kind == "refused" and spec["decider"].startswith("human"))
    request_id = f"req-{spec['request']}" if spec["request"] else None
    details: dict[str, Any] = {}
    if spec["requester"] and request_id:
        details["requester"] = spec["agent"]
    if spec["risks"] != "absent":
        details["risks"] = spec["risks"]
    if spec["environment"] is not None:
        details["environment"] = spec["environment"]
    if spec["suppressed"] in (3, 0):
        details.update(suppressed=spec["suppressed"], suppressed_by_reason={"rate_limited": spec["suppressed"]})
    elif spec["suppressed"] == "announced":
        details.update(suppressed=4, suppressed_by_reason={"rate_limited": 3, "lockdown_active": 1},
                       suppressed_announced_by_reason={"rate_limited": 1})
    elif spec["suppressed"] == "unattributed":
        details.update(suppressed=2, suppressed_by_reason={"rate_limited": 5})
    entry: dict[str, Any] = {
        "event_id": str(uuid.uuid4()), "seq": seq, "type": kind,
        "time": log_time(BASE + timedelta(microseconds=seq * 600_000_000 + spec["jitter"])),
        "request_id": request_id, "actor": spec["decider"] if by_other else spec["agent"], "acts_for": None,
        "template": spec["template"], "grant_id": None,
        "access_key_id": f"ASIA{seq:016d}" if kind == "issued" else None, "reason_code": spec["reason"],
        "details": details}
    if odd == "number request id":
        entry["request_id"] = spec["request"]
    elif odd == "list requester":
        entry["details"]["requester"] = [spec["agent"]]
    elif odd == "details list":
        entry["details"] = [1]
    elif odd == "number time":
        entry["time"] = 7
    elif odd == "huge count":  # past a 64-bit integer: no database column stores it
        entry["details"].update(suppressed=10**20, suppressed_by_reason={"rate_limited": 10**20})
    elif odd == "nul actor":
        entry["actor"] = "agent:\x00a"
    elif odd == "surrogate actor":  # a lone surrogate: no UTF-8 form (written below as its JSON escape)
        entry["actor"] = "agent:SURROGATE"
    elif odd == "long reason":  # past what a PostgreSQL index row holds (3,200 characters that do not compress)
        entry["details"].update(suppressed=3, suppressed_by_reason={LONG: 3})
    elif odd == "number requester":
        entry["details"]["requester"] = 1
    elif odd == "big count":  # fits in 64 bits; two of them summed do not
        entry["details"].update(suppressed=2**62, suppressed_by_reason={"rate_limited": 2**62})
    elif odd == "no time":
        del entry["time"]
    elif odd == "nul request id":
        entry["request_id"] = f"{request_id}\x00x"
    elif odd == "backslash request id":  # PostgreSQL's body expression reads \u0000 as \ufffd, inside this escape too
        entry["request_id"] = f"{request_id}\\u0000"
    elif odd == "surrogate request id":
        entry["request_id"] = f"{request_id}SURROGATE"
    elif odd == "unparseable":  # deeper than Python's parser goes (SQL reads it, so it can be stored)
        entry["details"]["deep"] = json.loads("[]")
        return issuance_log.canonical_json(entry).decode().replace('"deep":[]', '"deep":' + "[" * 1500 + "]" * 1500)
    text = issuance_log.canonical_json(entry).decode().replace("SURROGATE", "\\ud800")
    if odd in ("null time first", "number time first"):
        # NOTE: a key twice: SQLite reads the first, Python and PostgreSQL the last.
        text = text.replace('"time":', '"time":null,"time":' if odd == "null time first" else '"time":7,"time":', 1)
    return text


def append(database: Database, specs: list[dict], odd: Mapping[int, str] = {}) -> None:
    with database.engine.begin() as connection:
        head = connection.execute(select(func.max(EVENTS.c.seq))).scalar_one_or_none() or 0
        rows = [{"seq": seq, "event_id": str(uuid.uuid4()), "time": BASE, "type": spec["type"], "request_id": None,
                 "grant_id": None, "actor": None, "acts_for": None, "template": None, "access_key_id": None,
                 "body": body(seq, spec, odd=odd.get(seq)), "prev_hash": "0" * 64, "hash": "0" * 64}
                for seq, spec in enumerate(specs, start=head + 1)]
        if rows:
            connection.execute(EVENTS.insert(), rows)


def clear(database: Database) -> None:
    empty(database)
    with database.engine.begin() as connection:
        connection.execute(delete(REPORT_BLOCKS))
        connection.execute(delete(REPORT_COUNTS))


def fill(database: Database, *, report_holes: list[bool], aggregates: bool) -> AuditLog:
    """Cache the closed blocks for the report (then forget those ``report_holes`` names), and for the
    dashboard too if ``aggregates`` (whose time bounds the walk over the bodies skips blocks by)."""
    audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
    audit.fill_report_blocks()
    holes = [block for block, hole in enumerate(report_holes) if hole]
    if holes:
        with database.engine.begin() as connection:
            connection.execute(delete(REPORT_BLOCKS).where(REPORT_BLOCKS.c.block.in_(holes)))
    if aggregates:
        with database.read() as repo:
            LogAggregates(repo.session.connection(), postgres=database.is_postgres, fill=True).fill()
    return audit


def compare(database: Database, audit: AuditLog, since: datetime) -> tuple[str, str]:
    expected = outcome(lambda: reference_report(database, since))
    found = outcome(lambda: audit.report(principal=REVIEWER, since=since))
    assert found == expected
    return found


def windows_from(specs: list[dict]) -> st.SearchStrategy[int]:
    """Microseconds from BASE: at an entry's time, next to it, or anywhere (before the log too)."""
    span = (len(specs) + 2) * 600_000_000
    return st.one_of(st.integers(-HOUR_US, span),
                     st.builds(lambda n, d: n * 600_000_000 + d, st.integers(0, len(specs) + 1),
                               st.sampled_from([-1, 0, 1])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(first=st.lists(entry_strategy, min_size=1, max_size=70), more=st.lists(entry_strategy, max_size=12),
       block=st.sampled_from([1, 3, 4, 8]), dashboard=st.sampled_from([1, 4, 7, 16]),
       holes=st.lists(st.booleans(), max_size=25), aggregates=st.booleans(), refill=st.booleans(), data=st.data())
def test_the_cached_report_is_the_walks_byte_for_byte(database, first, more, block, dashboard, holes, aggregates,
                                                       refill, data):
    clear(database)
    with sizes(block, dashboard):
        append(database, first)
        audit = fill(database, report_holes=holes, aggregates=aggregates)  # the holes keep their counts' rows
        append(database, more)  # the open tail, and closed blocks nobody has cached yet
        if refill:
            audit.fill_report_blocks()
        for since in data.draw(st.lists(windows_from(first + more), min_size=1, max_size=3)):
            with database.read() as repo:
                segments = repo.report_segments(BASE + timedelta(microseconds=since), rules=REPORT_RULES)
                note(f"since {since}: segments {[(a, u, f is not None) for a, u, f in segments]}")
            kind, _ = compare(database, audit, BASE + timedelta(microseconds=since))
            assert kind == "report"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(log=st.lists(entry_strategy, min_size=2, max_size=40), odd=st.dictionaries(st.integers(1, 40),
                                                                                  st.sampled_from(ODD), max_size=3),
       block=st.sampled_from([1, 3, 8]), since=st.integers(-HOUR_US, 41 * 600_000_000))
def test_odd_and_unreadable_bodies_do_what_the_walk_did(database, log, odd, block, since):
    """A body that does not parse, or whose fields the tally cannot use, fails the report or counts as the walk
    over the bodies did (the block it is in is left to that walk)."""
    clear(database)
    with sizes(block, 4):
        append(database, log, odd)
        audit = fill(database, report_holes=[], aggregates=False)
        compare(database, audit, BASE + timedelta(microseconds=since))


def test_a_report_over_cached_blocks_reads_no_body_of_them(database):
    """The cache is what the report reads: a cached block's bodies, edited after the fill, do not change it (and
    the walk's report does change), so the figures above came from the cache."""
    clear(database)
    spec = {"type": "refused", "request": 0, "agent": "agent:a", "decider": "agent:a", "template": "t1",
            "reason": "rate_limited", "risks": None, "environment": None, "suppressed": None, "requester": True,
            "jitter": 0}
    with sizes(4, 16):
        append(database, [spec] * 10)
        audit = fill(database, report_holes=[], aggregates=False)
        since = BASE
        before = audit.report(principal=REVIEWER, since=since)
        with database.read() as repo:
            assert [f is not None for _, _, f in repo.report_segments(since, rules=REPORT_RULES)] == \
                [True, True, False]
        with database.engine.begin() as connection:
            if not database.is_postgres:
                connection.exec_driver_sql("DROP TRIGGER IF EXISTS events_no_update")
            connection.execute(text("UPDATE events SET body = REPLACE(body, 'rate_limited', 'edited') "
                                    "WHERE seq <= 8"))
        assert audit.report(principal=REVIEWER, since=since) == before
        assert reference_report(database, since) != before
        assert [r["reason_code"] for r in before["refusals"]] == ["rate_limited"] * 10


def test_fill_caches_each_closed_block_once(database):
    clear(database)
    spec = {"type": "issued", "request": 1, "agent": "agent:a", "decider": "agent:a", "template": "t1",
            "reason": None, "risks": ["destructive"], "environment": None, "suppressed": None, "requester": True,
            "jitter": 0}
    with sizes(3, 16):
        append(database, [spec] * 7)
        audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
        assert audit.fill_report_blocks(limit=1) == 1
        assert audit.fill_report_blocks() == 1
        assert audit.fill_report_blocks() == 0
        with database.engine.connect() as connection:
            assert connection.execute(select(REPORT_BLOCKS.c.block).order_by(REPORT_BLOCKS.c.block)).scalars().all() \
                == [0, 1]
        with database.read() as repo:
            assert [figures is not None for _, _, figures in repo.report_segments(BASE, rules=REPORT_RULES)] == \
                [True, True, False]
    with sizes(2, 16):  # blocks of another size: the rows of the old size are not read as theirs
        with database.read() as repo:
            assert repo.missing_report_blocks(rules=REPORT_RULES) == [0, 1, 2]
            assert repo.report_segments(BASE, rules=REPORT_RULES) == [(0, None, None)]
        assert compare(database, audit, BASE)[0] == "report"


def test_a_block_whose_counts_cannot_be_stored_is_left_to_the_walk_and_the_later_ones_are_cached(database, caplog):
    """A count the database refuses (here past 64 bits, with block_counts' own check of it taken out: the save is
    the net for what that check does not foresee) rolls its block's save back: the block is cached without figures
    (read from its bodies), and the fill goes on to the blocks after it (it retried the same block at every sweep,
    caching nothing after it)."""
    clear(database)
    spec = {"type": "refused", "request": 0, "agent": "agent:a", "decider": "agent:a", "template": "t1",
            "reason": "rate_limited", "risks": None, "environment": None, "suppressed": 3, "requester": True,
            "jitter": 0}
    with sizes(3, 16), patch("broker.usecases.audit._countable", lambda count: True):
        append(database, [spec] * 10, odd={2: "huge count"})
        audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="broker.audit"):
            assert audit.fill_report_blocks() == 3
        assert [r.getMessage() for r in caplog.records] == [
            "report cache: block 0 kept out (a count the database cannot store)"]
        assert audit.fill_report_blocks() == 0
        with database.read() as repo:
            assert [f is not None for _, _, f in repo.report_segments(BASE, rules=REPORT_RULES)] == \
                [False, True, True, False]
        compare(database, audit, BASE)


# Fixed examples, one per guard of the cache (the property tests above reach some guards rarely, or on one database
# only): each is a log the report must give as the walk did, the closed blocks cached with figures or not as the
# guard decides, and for some the segments or the steps a block keeps.  seq n's time is BASE + n * AT (no jitter).
AT = 600_000_000


def spec(kind: str, request: int = 0, **fields: Any) -> dict:
    return {"type": kind, "request": request, "agent": "agent:a", "decider": "agent:a", "template": "t1",
            "reason": "rate_limited", "risks": None, "environment": None, "suppressed": None, "requester": True,
            "jitter": 0, **fields}


# req-1 pending in block 0 and expired in block 1 (so not pending at the end); req-2 issued in block 1 with no
# pending anywhere (its step is left out of the block); blocks of 2, seq 5 the tail.
PENDING_THEN_EXPIRED = [spec("pending", 1), spec("requested", 3), spec("expired", 1), spec("issued", 2),
                        spec("requested", 4)]
REFUSALS = [spec("refused", suppressed=3) for _ in range(5)]
BOTH = ("sqlite", "postgres")


@dataclass(frozen=True)
class Guard:
    specs: list[dict]
    odd: dict[int, str]
    cached: dict[str, tuple[bool, ...]]  # by database: whether each closed block is cached with figures
    sinces: tuple[int, ...] = (0,)  # at seq n's time
    segments: dict[int, list[tuple[int, bool]]] = field(default_factory=dict)  # by since: (after, cached)
    steps: list[tuple[str, str]] | None = None  # block 1's steps kept, (type, request id)
    databases: tuple[str, ...] = BOTH  # PostgreSQL refuses a body with a lone surrogate (its body indexes)


def _cached(flags: tuple[bool, ...], pg: tuple[bool, ...] | None = None) -> dict[str, tuple[bool, ...]]:
    return {"sqlite": flags, "postgres": flags if pg is None else pg}


GUARDS = {
    # pending_request_ids: a state step is kept when its request has a pending entry in an earlier block.
    "a pending entry in an earlier block": Guard(PENDING_THEN_EXPIRED, {}, _cached((True, True)),
                                                 steps=[("expired", "req-1")]),
    # block_counts: a principal that is not a text (SQLite would store 1 as '1'; PostgreSQL refuses it).
    "a requester that is a number": Guard([spec("issued", 1)] * 3, {1: "number requester", 2: "number requester",
                                                                     3: "number requester"}, _cached((False,))),
    # report_segments: a block whose greatest time is since holds an entry of the window (max_time < since); one
    # whose least time is since is wholly in it (min_time >= since).
    "a block whose greatest or least time is since": Guard(REFUSALS, {}, _cached((True, True)), sinces=(2, 3),
                                                           segments={2: [(0, False), (2, True), (4, False)],
                                                                     3: [(2, True), (4, False)]}),
    # block_entries: every body time of a cached block is a text to SQL (the window compares SQL's): a number is
    # one to SQLite (less than every text), a text to PostgreSQL; a key twice is the first to SQLite.
    "a number time": Guard(REFUSALS, {2: "number time"}, _cached((False, True), pg=(True, True))),
    "no time": Guard(REFUSALS, {2: "no time"}, _cached((False, True))),
    "a null time, then a time": Guard(REFUSALS, {2: "null time first"}, _cached((False, True), pg=(True, True))),
    "a number time, then a time": Guard(REFUSALS, {2: "number time first"}, _cached((False, True), pg=(True, True))),
    # _plain_id: a request id the body index would not find as Python compares it is not looked up (its steps are
    # kept) and does not stop the look-up of the others (req-2's step is still left out).
    "a request id with a NUL": Guard(PENDING_THEN_EXPIRED, {1: "nul request id", 3: "nul request id"},
                                     _cached((True, True)), steps=[("expired", "req-1\x00x")]),
    "a request id with a backslash": Guard(PENDING_THEN_EXPIRED, {1: "backslash request id", 3: "backslash request id"},
                                           _cached((True, True)), steps=[("expired", "req-1\\u0000")]),
    "a request id with a lone surrogate": Guard(PENDING_THEN_EXPIRED, {1: "surrogate request id",
                                                                       3: "surrogate request id"},
                                                _cached((True, True)), steps=[("expired", "req-1\ud800")],
                                                databases=("sqlite",)),
    # block_counts: a name or count the databases cannot store, or sum, is refused before the save.
    "a principal with a NUL": Guard(REFUSALS, {2: "nul actor"}, _cached((False, True))),
    "a principal with a lone surrogate": Guard(REFUSALS, {2: "surrogate actor"}, _cached((False, True)),
                                               databases=("sqlite",)),
    "a name too long for an index row": Guard(REFUSALS, {2: "long reason"}, _cached((False, True))),
    "a count past 64 bits": Guard(REFUSALS, {2: "huge count"}, _cached((False, True))),
    "counts whose sum is past 64 bits": Guard(REFUSALS, {1: "big count", 3: "big count"}, _cached((False, False))),
}


@pytest.mark.parametrize("name", GUARDS)
def test_each_guard_of_the_cache(database, name, caplog):
    guard = GUARDS[name]
    if ("postgres" if database.is_postgres else "sqlite") not in guard.databases:
        pytest.skip("PostgreSQL refuses such a body (the body indexes of migration 0012)")
    clear(database)
    with sizes(2, 16), caplog.at_level(logging.WARNING, logger="broker.audit"):
        append(database, guard.specs, guard.odd)
        audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
        audit.fill_report_blocks()
        assert audit.fill_report_blocks() == 0  # no block left behind
        with database.engine.connect() as connection:
            rows = dict(connection.execute(select(REPORT_BLOCKS.c.block, REPORT_BLOCKS.c.figures)).all())
        assert tuple(rows[block] is not None for block in sorted(rows)) == guard.cached[
            "postgres" if database.is_postgres else "sqlite"]
        if guard.steps is not None:
            assert [(kind, request_id) for kind, request_id, _, _ in json.loads(rows[1])["steps"]] == guard.steps
        for at in guard.sinces:
            since = BASE + timedelta(microseconds=at * AT)
            if at in guard.segments:
                with database.read() as repo:
                    segments = repo.report_segments(since, rules=REPORT_RULES)
                assert [(after, f is not None) for after, _, f in segments] == guard.segments[at]
            assert compare(database, audit, since)[0] == "report"
    # NOTE: what the database cannot store is refused before the save, not by the database.
    assert not [r for r in caplog.records if "cannot store" in r.getMessage()]


EMPTY_FIGURES = '{"refusals": [], "destructive": [], "high_risk": [], "steps": []}'


def _rules_of_rows(database: Database) -> list[tuple[int, int]]:
    with database.engine.connect() as connection:
        return sorted(connection.execute(select(REPORT_BLOCKS.c.rules, REPORT_BLOCKS.c.block)).all())


def test_rows_of_another_rules_version_are_not_read_and_are_filled_again(database):
    """A release whose tally rules differ (REPORT_RULES bumped) reads the blocks an older one filled as not filled,
    from their bodies, and fills them again, leaving the older rows to a replica still on the older rules (an
    upgrade under way), which goes on reading its own."""
    clear(database)
    old, new = REPORT_RULES, REPORT_RULES + 1
    with sizes(2, 16):
        append(database, REFUSALS)  # blocks 0 and 1 closed, seq 5 the tail
        audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
        assert audit.fill_report_blocks() == 2
        with database.engine.begin() as connection:  # figures the old rules' report reads, and the walk does not
            connection.execute(REPORT_BLOCKS.update().where(REPORT_BLOCKS.c.block == 0).values(figures=EMPTY_FIGURES))
        assert outcome(lambda: audit.report(principal=REVIEWER, since=BASE)) != \
            outcome(lambda: reference_report(database, BASE))
        with patch("broker.usecases.audit.REPORT_RULES", new):
            with database.read() as repo:
                assert repo.missing_report_blocks(rules=new) == [0, 1]
                assert repo.report_segments(BASE, rules=new) == [(0, None, None)]
            compare(database, audit, BASE)
            assert audit.fill_report_blocks() == 2
            assert _rules_of_rows(database) == [(old, 0), (old, 1), (new, 0), (new, 1)]
            with database.engine.connect() as connection:
                assert set(connection.execute(select(REPORT_COUNTS.c.rules)).scalars()) == {old, new}
            assert compare(database, audit, BASE)[0] == "report"
            with database.read() as repo:
                assert [f is not None for _, _, f in repo.report_segments(BASE, rules=new)] == [True, True, False]
        assert audit.fill_report_blocks() == 0  # the older rules' replica: its own rows, as they were
        with database.engine.connect() as connection:
            assert connection.execute(select(REPORT_BLOCKS.c.figures).where(
                REPORT_BLOCKS.c.rules == old, REPORT_BLOCKS.c.block == 0)).scalar_one() == EMPTY_FIGURES


def _rules_code(obj: Any) -> str:
    """An object's code as the rules digest reads it: without comments, docstrings or layout."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) and \
                isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def rules_digest() -> str:
    """A digest of what makes a cached block's figures and decides which blocks are cached: ReportTally and what
    it uses, the fill's choices, the storage's reads of a block, and the constants and event types they name."""
    from broker.domain import refusal_counts
    from broker.usecases import audit

    code = [audit.RefusalFigures, audit._reason, audit._agent_row, audit.ReportTally, audit._text_bytes,
            audit._countable, audit._plain_id, audit.AuditLog.fill_report_blocks, audit.AuditLog._block_figures,
            refusal_counts.carried_refusals, refusal_counts.carried_announcements, refusal_counts._count,
            refusal_counts._counts, report_blocks.block_entries, report_blocks.pending_request_ids]
    constants = [audit._ENTRY_COUNTS, [str(kind) for kind in audit.REQUEST_STATES], audit.COUNT_NAME_BYTES,
                 audit.COUNT_BOUND, [str(kind) for kind in CARRYING_TYPES], [str(kind) for kind in REFUSAL_TYPES],
                 refusal_counts.UNATTRIBUTED, [str(kind) for kind in EventType]]
    text = "\n".join([*(_rules_code(obj) for obj in code), repr(constants)])
    return hashlib.sha256(text.encode()).hexdigest()


# The digest of the rules of each REPORT_RULES version (rules_digest).  Never change a digest: add one for the new
# version.
RULES_DIGESTS = {1: "4907797c75b6d7100c880c2c789165044c1e1e9e284866285e44d182ffa63418"}


def test_the_report_rules_are_those_of_their_version():
    """Changing the tally (or what decides a block's cached figures) without bumping REPORT_RULES would have a
    release read the blocks filled by the one before it as its own: the report would differ from the walk, or fail."""
    digest = rules_digest()
    assert RULES_DIGESTS.get(REPORT_RULES) == digest, (
        f"The report's cached-block rules changed (digest {digest}), but REPORT_RULES is still {REPORT_RULES}"
        f" (pinned {RULES_DIGESTS.get(REPORT_RULES)}). Blocks cached by the old rules would be read as the new"
        f" ones. Bump broker.usecases.audit.REPORT_RULES to {max(RULES_DIGESTS) + 1} and add"
        f" {max(RULES_DIGESTS) + 1}: \"{digest}\" to RULES_DIGESTS in tests/storage/test_report_blocks.py (keep the"
        f" old digests)." if REPORT_RULES in RULES_DIGESTS else
        f"REPORT_RULES is {REPORT_RULES}: pin its rules' digest, {REPORT_RULES}: \"{digest}\", in RULES_DIGESTS.")


@pytest.mark.parametrize("approved_time", ["absent", None, 7, "2026-11-01T00:20:00.000000Z"])
def test_an_approved_entry_without_a_usable_time_fails_as_the_walk_did(approved_time):
    """A request's approval after its pending entry reads the approval's time: without one the walk of 2237c18
    raised KeyError, with a null or a number TypeError; the tally raises the same (it raised TypeError for all)."""
    pending = {"seq": 1, "type": "pending", "request_id": "req-1", "actor": "agent:a", "template": "t1",
               "time": "2026-11-01T00:10:00.000000Z", "details": {"requester": "agent:a"}}
    approved = {**pending, "seq": 2, "type": "approved"}
    if approved_time == "absent":
        del approved["time"]
    else:
        approved["time"] = approved_time

    def outcome_of(tally) -> tuple[str, Any]:
        try:
            for entry in (pending, approved):
                tally.add(entry)
            return "report", tally.view()
        except Exception as error:  # noqa: BLE001 - the classes are compared
            return "error", type(error).__name__

    assert outcome_of(ReportTally()) == outcome_of(ReferenceTally())
