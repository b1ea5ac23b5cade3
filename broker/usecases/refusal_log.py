"""Refusals in the issuance log: each in its own unit of work, or counted by the refusal budget instead.

A refusal is logged before the caller hears of it; if its entry cannot be written the caller gets 503 (nothing
unlogged).  Over a principal's budget, refusals are counted, not written one by one, and the counts reach the
log on the next refusal or sweep (``broker.usecases.refusal_budget``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker.domain.events import EventType, log_entry
from broker.domain.principals import Principal
from broker.errors import BrokerError
from broker.ports import Clock, Store
from broker.usecases.refusal_budget import RefusalBudget, refusal_entry


def append_refusal(database: Store, budget: RefusalBudget, principal_id: str, body: dict[str, Any]) -> None:
    """Write a refusal's entry in its own unit of work, or let the principal's refusal budget count it instead.

    NOTE: if the entry cannot be written the caller gets 503 instead: nothing unlogged.  Over the budget it is
    counted, not written (broker.usecases.refusal_budget); the caller raises its error all the same.
    """
    with refusal_entry(budget, principal_id, reason_code=body["reason_code"]) as ticket:
        if ticket is not None:
            with database.transaction() as repo:
                repo.append_event(ticket.shape(body))


class RefusalLogging:
    """The refusal entries of the request, co-signing and redemption use cases (a part of ``BrokerService``)."""

    clock: Clock
    database: Store
    refusal_budget: RefusalBudget

    def _log_refusal(self, *, principal: Principal, template_name: str, error: BrokerError, source_ip: str | None,
                     now: datetime) -> None:
        body = log_entry(EventType.REFUSED, now=now)
        # NOTE: the name is the caller's: cut to a length a reviewer can read (a NUL in it is replaced when the
        # entry is sealed, broker.domain.log.chain.seal_entry, as in every entry).
        body.update(actor=principal.id, acts_for=principal.acts_for,
                    template=str(template_name)[:100],
                    source_ip=source_ip, reason_code=error.code,
                    details={"message": error.message[:300], **({"field": error.field} if error.field else {})})
        append_refusal(self.database, self.refusal_budget, principal.id, body)

    def flush_suppressed_refusals(self, *, close_open: bool = False) -> int:
        """Write the counts of suppressed refusals that no later refusal carried (``broker serve``'s
        periodic sweep; at shutdown with ``close_open``).  Returns the number of entries written."""
        summaries = self.refusal_budget.take_summaries(close_open=close_open)
        if not summaries:
            return 0
        now = self.clock.now()
        try:
            with self.database.transaction() as repo:
                for summary in summaries:
                    body = log_entry(EventType.REFUSALS_SUPPRESSED_SUMMARY, now=now)
                    body.update(actor=summary.principal_id, details=summary.details())
                    repo.append_event(body)
        except BaseException:
            self.refusal_budget.give_back(summaries)  # the next sweep or refusal writes them
            raise
        return len(summaries)

    def _log_request_refusal(self, *, request_id: str, principal: Principal, error: BrokerError,
                             source_ip: str | None) -> None:
        """A refused decision or redemption on an existing request is itself a logged step."""
        now = self.clock.now()
        with refusal_entry(self.refusal_budget, principal.id, reason_code=error.code) as ticket:
            if ticket is None:
                return  # over the principal's refusal budget: counted, not logged
            with self.database.transaction() as repo:
                row = repo.get_request(str(request_id)[:64])
                if row is None:
                    return
                extra: dict[str, Any] = {"source_ip": source_ip} if source_ip else {}
                repo.append_event(ticket.shape(self._event(EventType.REFUSED, row, actor=principal.id, now=now,
                                                           reason_code=error.code,
                                                           details={"message": error.message[:300]}, **extra)))


__all__ = ["RefusalLogging", "append_refusal"]
