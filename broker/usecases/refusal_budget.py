"""The refusal budget: how many of one principal's refusals a minute are logged one by one.

Every refusal of an authenticated caller is an issuance-log entry, and every append takes the
log's lock.  Refusals do not count against the rate limits (:mod:`broker.usecases.limits` counts stored
requests), so without a budget one agent could grow the log without bound at HTTP speed and,
through the lock, slow every other agent's issuance.  The budget keeps every refusal accounted
for while bounding what one principal can write.

What is written, per principal, in a window of ``WINDOW`` that opens at its first refusal:

* refusals 1..N (N = ``refusals_per_minute``): a ``refused`` entry each, exactly as without a budget;
* refusal N+1: instead of its own ``refused`` entry, ONE ``refusals_suppressed`` entry: the same
  entry (actor, template, reason code, message) retyped, with ``details.budget``,
  ``window_seconds``, ``window_start`` and ``window_end``;
* refusals N+2 and on: nothing is written (no database at all); they are counted, with their
  reason codes, in memory;
* once the window is over, its count K of suppressed refusals (N+1 included: K is every refusal
  without a ``refused`` entry of its own) reaches the log as ``details.suppressed`` (with
  ``suppressed_since``, ``suppressed_until``, ``suppressed_by_reason``,
  ``suppressed_announced_by_reason``) on the principal's next logged refusal or, if none comes,
  on a ``refusals_suppressed_summary`` entry that ``broker serve`` writes in its periodic sweep
  (every 60 s) and at shutdown (which closes the windows still open, ``suppressed_until`` then
  being the shutdown time).

Counting refusals from the log (metrics, ``broker audit report``): a ``refused`` entry is one
refusal, a ``refusals_suppressed`` entry is one refusal, and a carried count K adds K minus the
refusals among them that already have a ``refusals_suppressed`` entry, which
``suppressed_announced_by_reason`` names (one per window, by its reason code; see
:func:`carried_refusals`).  So every refusal is counted once, the (N+1)th as soon as it happens.

The caller's answer never changes: a suppressed refusal raises the very error it would have
(status, code, message, headers).  NOTE: the budget adds no ``Retry-After``: it decides what is
logged, not what is allowed (issuance is never blocked by it), and an answer must not tell the
caller whether its refusal was logged.

What holds, and where:

* The count is per replica (in-process).  With R replicas a principal can cause at most
  R x (N + 1) entries per window, plus one summary per replica and window that suppressed
  anything.  Nothing is shared between replicas, so no replica waits on another for this.
* Fail closed: an entry the budget lets through is written as before; if it cannot be, the
  caller gets 503 (never credentials: a refusal never issues) and the ticket goes back (a carried
  count returns to the budget, an announcement will be made by the next refusal).
* A clean shutdown writes every count.  A crash loses the counts not yet written; the
  ``refusals_suppressed`` entry, written before any refusal of that window is suppressed, stays
  as the record that suppression happened and that its summary is missing.

Pure logic: no database, no HTTP; time comes from the injected :class:`~broker.ports.Clock`.
Thread-safe: request threads share one budget, guarded by one lock held for dictionary updates only.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.domain.events import EventType
from broker.domain.refusal_counts import UNATTRIBUTED, carried_announcements, carried_refusals
from broker.domain.log import log_time
from broker.errors import InvalidInput
from broker.ports import Clock, SystemClock

WINDOW = timedelta(seconds=60)


class RefusalAction(StrEnum):
    LOG = "log"              # write the refusal's own entry
    ANNOUNCE = "announce"    # write this window's one `refusals_suppressed` entry instead
    SUPPRESS = "suppress"    # write nothing: counted


@dataclass(frozen=True)
class SuppressedRefusals:
    """K refusals of one principal that have no entry of their own, between ``since`` and ``until``."""

    principal_id: str
    count: int
    since: datetime
    until: datetime
    by_reason: Mapping[str, int]
    # Of these, the refusals written as a `refusals_suppressed` entry (one per window), by reason code:
    # readers that count refusals from the log have counted them already.
    announced_by_reason: Mapping[str, int] = field(default_factory=dict)

    def merged(self, other: SuppressedRefusals) -> SuppressedRefusals:
        by_reason = Counter(self.by_reason) + Counter(other.by_reason)
        announced = Counter(self.announced_by_reason) + Counter(other.announced_by_reason)
        return SuppressedRefusals(self.principal_id, self.count + other.count, min(self.since, other.since),
                                  max(self.until, other.until), dict(by_reason), dict(announced))

    def details(self) -> dict[str, Any]:
        return {"suppressed": self.count, "suppressed_since": log_time(self.since),
                "suppressed_until": log_time(self.until), "suppressed_by_reason": dict(sorted(self.by_reason.items())),
                "suppressed_announced_by_reason": dict(sorted(self.announced_by_reason.items()))}


@dataclass
class RefusalTicket:
    """The budget's answer for one refusal; :meth:`shape` gives the entry to write for it."""

    principal_id: str
    reason_code: str
    action: RefusalAction
    budget: int
    window_start: datetime
    window_end: datetime
    carried: SuppressedRefusals | None = None
    shaped: bool = False

    def shape(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body`` (the ``refused`` entry as it would be without a budget), as the budget wants it written."""
        self.shaped = True
        entry = {**body, "details": dict(body.get("details") or {})}
        if self.action is RefusalAction.ANNOUNCE:
            entry["type"] = EventType.REFUSALS_SUPPRESSED.value
            entry["details"].update(budget=self.budget, window_seconds=int(WINDOW.total_seconds()),
                                    window_start=log_time(self.window_start), window_end=log_time(self.window_end))
        if self.carried is not None:
            entry["details"].update(self.carried.details())
        return entry


@dataclass
class _Window:
    start: datetime
    logged: int = 0
    suppressed: int = 0
    announced: bool = False
    announced_reason: str | None = None
    by_reason: Counter[str] = field(default_factory=Counter)


class RefusalBudget:
    """Per principal: the first ``per_minute`` refusals of a window are logged, the rest counted."""

    def __init__(self, *, per_minute: int, clock: Clock) -> None:
        if per_minute < 0:
            raise InvalidInput("refusals_per_minute must be >= 0 (0 disables the refusal budget)",
                               code="config_invalid", field="refusals_per_minute")
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Window] = {}
        # Counts of windows that are over, waiting for an entry to carry them.
        self._closed: dict[str, SuppressedRefusals] = {}

    @classmethod
    def disabled(cls) -> RefusalBudget:
        """Every refusal logged one by one (the behaviour without a budget); keeps no state."""
        return cls(per_minute=0, clock=SystemClock())

    def admit(self, principal_id: str, *, reason_code: str) -> RefusalTicket:
        now = self._clock.now()
        if self.per_minute == 0:
            return RefusalTicket(principal_id, reason_code, RefusalAction.LOG, 0, now, now)
        with self._lock:
            self._close_if_over(principal_id, now)
            window = self._open.setdefault(principal_id, _Window(start=now))
            if window.logged < self.per_minute:
                window.logged += 1
                action = RefusalAction.LOG
            else:
                window.suppressed += 1
                window.by_reason[reason_code] += 1
                action = RefusalAction.SUPPRESS if window.announced else RefusalAction.ANNOUNCE
                if action is RefusalAction.ANNOUNCE:
                    window.announced_reason = reason_code
                window.announced = True
            # A suppressed refusal writes nothing, so it cannot carry a count.
            carried = None if action is RefusalAction.SUPPRESS else self._closed.pop(principal_id, None)
            return RefusalTicket(principal_id, reason_code, action, self.per_minute, window.start,
                                 window.start + WINDOW, carried)

    def release(self, ticket: RefusalTicket) -> None:
        """``ticket``'s entry was not written: its carried count goes back, its slot is freed."""
        with self._lock:
            if ticket.carried is not None:
                self._keep_closed(ticket.carried)
            window = self._open.get(ticket.principal_id)
            # NOTE: if the window ended meanwhile, its count stays as it is (at worst one too high).
            if window is None or window.start != ticket.window_start:
                return
            if ticket.action is RefusalAction.LOG:
                window.logged -= 1
            elif ticket.action is RefusalAction.ANNOUNCE:
                # The caller got 503, not a suppressed refusal; the next refusal over budget announces.
                window.announced = False
                window.announced_reason = None
                window.suppressed -= 1
                window.by_reason[ticket.reason_code] -= 1
                window.by_reason += Counter()  # drops codes counted down to zero

    def take_summaries(self, *, close_open: bool = False) -> list[SuppressedRefusals]:
        """The counts of windows that are over (all windows, with ``close_open``) that no entry carried
        yet; the caller writes them, or hands them back with :meth:`give_back`."""
        now = self._clock.now()
        with self._lock:
            for principal_id in list(self._open):
                self._close_if_over(principal_id, now, force=close_open)
            summaries = list(self._closed.values())
            self._closed.clear()
        return summaries

    def give_back(self, summaries: Iterable[SuppressedRefusals]) -> None:
        with self._lock:
            for summary in summaries:
                self._keep_closed(summary)

    def _close_if_over(self, principal_id: str, now: datetime, *, force: bool = False) -> None:
        window = self._open.get(principal_id)
        if window is None:
            return
        end = window.start + WINDOW
        if now < end and not force:
            return
        del self._open[principal_id]
        if window.suppressed:
            until = max(window.start, min(end, now))  # cut short when forced (shutdown)
            announced = {window.announced_reason: 1} if window.announced and window.announced_reason else {}
            self._keep_closed(SuppressedRefusals(principal_id, window.suppressed, window.start, until,
                                                 dict(window.by_reason), announced))

    def _keep_closed(self, summary: SuppressedRefusals) -> None:
        known = self._closed.get(summary.principal_id)
        self._closed[summary.principal_id] = summary if known is None else known.merged(summary)


@contextmanager
def refusal_entry(budget: RefusalBudget, principal_id: str, *, reason_code: str) -> Iterator[RefusalTicket | None]:
    """One refusal's log entry, as ``budget`` allows it.

    Yields ``None`` when the refusal is suppressed (write nothing), else a ticket: write
    ``ticket.shape(body)``.  A ticket whose entry was not shaped (nothing to write after all) or
    whose write raised goes back to the budget.
    """
    ticket = budget.admit(principal_id, reason_code=reason_code)
    if ticket.action is RefusalAction.SUPPRESS:
        yield None
        return
    try:
        yield ticket
    except BaseException:
        budget.release(ticket)
        raise
    if not ticket.shaped:
        budget.release(ticket)


__all__ = ["UNATTRIBUTED", "WINDOW",
           "RefusalAction", "RefusalBudget", "RefusalTicket", "SuppressedRefusals", "carried_announcements",
           "carried_refusals", "refusal_entry"]
