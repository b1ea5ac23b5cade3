"""How far this replica's clock is from the database's, and what the broker does about it.

Replicas decide with their own clocks: request times, the rate limits' 60-second windows, which mint
intents are old enough to be orphans, when revocation entries expire.  A replica 90 s ahead let a
60-per-minute limit pass 81 and reconciled another replica's in-flight issuances as orphans (issue 22).
The database's clock is the one every replica shares, so each replica measures its own against it
(:meth:`ClockSkewMonitor.measure`, at start-up, on every ``/readyz`` and before every sweep).  Beyond
``BROKER_MAX_CLOCK_SKEW_SECONDS`` the replica is not ready, issues nothing (503 ``clock_skewed``, a gate
on every issuance) and its sweep neither reconciles orphans nor prunes revocations, until its clock is
fixed.  0 turns the check off.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broker.domain.principals import Principal
from broker.domain.templates import ScopeTemplate
from broker.errors import Unavailable
from broker.ports import Clock
from broker.storage.engine import Database

log = logging.getLogger("broker.clock")


class ClockSkewed(Unavailable):
    code = "clock_skewed"


@dataclass
class ClockSkewMonitor:
    database: Database
    clock: Clock
    max_skew_seconds: float
    # The last measurement: this replica's clock minus the database's (seconds), None before the first.
    skew_seconds: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def enabled(self) -> bool:
        return self.max_skew_seconds > 0

    def measure(self) -> float | None:
        """Compare the clocks once (the database's reading against the middle of the round trip)."""
        if not self.enabled:
            return None
        started = time.monotonic()
        before = self.clock.now()
        database_now = self.database.database_time()
        # NOTE: the database read its clock somewhere in the round trip: take its middle on ours.
        middle = before + timedelta(seconds=(time.monotonic() - started) / 2)
        skew = (middle - database_now).total_seconds()
        with self._lock:
            was_skewed = self._beyond(self.skew_seconds)
            self.skew_seconds = skew
        if self._beyond(skew) and not was_skewed:
            log.error("this replica's clock is %.1f s %s the database's (bound %.1f s): not ready, no issuance and "
                      "no sweep until it is fixed (NTP)", abs(skew), "ahead of" if skew > 0 else "behind",
                      self.max_skew_seconds)
        elif was_skewed and not self._beyond(skew):
            log.warning("this replica's clock is back within %.1f s of the database's (%.1f s)",
                        self.max_skew_seconds, skew)
        return skew

    def check(self) -> None:
        """Raise :class:`ClockSkewed` (503) if the last measurement was beyond the bound."""
        skew = self.skew_seconds
        if self._beyond(skew):
            assert skew is not None
            raise ClockSkewed(f"this broker replica's clock is {abs(skew):.0f} s off the database's (at most "
                              f"{self.max_skew_seconds:g} s allowed); try again, another replica may answer",
                              details={"skew_seconds": round(skew, 1), "retry_after": 5})

    def measure_and_check(self) -> None:
        self.measure()
        self.check()

    def gate(self, repo, principal: Principal, template: ScopeTemplate, now: datetime) -> None:  # noqa: ARG002
        """``IssuanceGate``: no issuance from a replica whose clock is off (the last measurement: no query)."""
        self.check()

    def _beyond(self, skew: float | None) -> bool:
        return self.enabled and skew is not None and abs(skew) > self.max_skew_seconds
