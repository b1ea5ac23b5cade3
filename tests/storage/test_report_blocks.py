"""``broker audit report`` from the cache of closed blocks (broker.storage.report_blocks) is the report of the walk over
every body (the walk of commit 2237c18, kept here as the reference, with its tally word for word): the same JSON,
byte for byte, over random logs with every entry type, requests that span blocks, times that do not follow the
seqs, decisions by others than the requester, risks, suppressed counts, odd bodies (a request id that is a number, a
requester that is a list, a body that does not parse), some blocks cached and some not, an open tail; on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import statistics
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from contextlib import contextmanager
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
from broker.usecases.audit import REQUEST_STATES, AuditLog, RefusalFigures, _agent_row
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
ODD = ("number request id", "list requester", "unparseable", "details list", "number time", "nul actor")

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
    elif odd == "unparseable":  # deeper than Python's parser goes (SQL reads it, so it can be stored)
        entry["details"]["deep"] = json.loads("[]")
        return issuance_log.canonical_json(entry).decode().replace('"deep":[]', '"deep":' + "[" * 1500 + "]" * 1500)
    return issuance_log.canonical_json(entry).decode()


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
                note(f"since {since}: segments {[(a, u, f is not None) for a, u, f in repo.report_segments(BASE + timedelta(microseconds=since))]}")
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
            assert [f is not None for _, _, f in repo.report_segments(since)] == [True, True, False]
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
            assert [figures is not None for _, _, figures in repo.report_segments(BASE)] == [True, True, False]
    with sizes(2, 16):  # blocks of another size: the rows of the old size are not read as theirs
        with database.read() as repo:
            assert repo.missing_report_blocks() == [0, 1, 2]
            assert repo.report_segments(BASE) == [(0, None, None)]
        assert compare(database, audit, BASE)[0] == "report"


def test_a_block_whose_counts_cannot_be_stored_is_left_to_the_walk_and_the_later_ones_are_cached(database):
    """A count past 64 bits rolls its block's save back: the block is cached without figures (read from its bodies),
    and the fill goes on to the blocks after it (it retried the same block at every sweep, caching nothing after it)."""
    clear(database)
    spec = {"type": "refused", "request": 0, "agent": "agent:a", "decider": "agent:a", "template": "t1",
            "reason": "rate_limited", "risks": None, "environment": None, "suppressed": 3, "requester": True,
            "jitter": 0}
    with sizes(3, 16):
        append(database, [spec] * 10, odd={2: "huge count"})
        audit = AuditLog(database=database, signer=None, clock=SystemClock())  # type: ignore[arg-type]
        assert audit.fill_report_blocks() == 3
        assert audit.fill_report_blocks() == 0
        with database.read() as repo:
            assert [f is not None for _, _, f in repo.report_segments(BASE)] == [False, True, True, False]
        compare(database, audit, BASE)
