"""Rate limits and budgets, as issuance gates.

A gate runs inside unit of work A of an issuance (see :mod:`broker.usecases.issuance`) and raises
:class:`~broker.errors.RateLimited` (429) to refuse; the service then logs a ``refused``
entry whose ``reason_code`` is the limit's code.  Counts come from the database, so the
limits hold across broker replicas:

* ``agent_requests_per_minute``: requests an agent made in the last 60 s (``rate_limited``);
* ``template_requests_per_minute``: requests for one template in the last 60 s, all agents
  together (``template_rate_limited``): this bounds what the broker as a whole can ask STS
  for, so no single agent exhausts the account's AssumeRole quota;
* ``agent_max_live_grants``: unexpired, unrevoked grants an agent holds (``too_many_live_grants``);
* ``agent_max_pending_requests``: requests of an agent waiting for co-signers
  (``too_many_pending_requests``), checked only for templates that need approval: no agent can bury
  another's request in the approvers' list under a flood of its own.

Refused requests are not stored, so they do not count: a flooding agent gets its quota and
429s, never a lockout.  ``0`` disables a limit.  On PostgreSQL the gate first takes the lock
every log append takes anyway (the log head row), so concurrent requests are counted one at
a time and a limit is exact, not "roughly".  On SQLite every unit of work is ``BEGIN
IMMEDIATE``, which serializes them already.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.domain.principals import Principal
from broker.domain.templates import ScopeTemplate
from broker.errors import RateLimited
from broker.domain.times import as_utc
from broker.ports import UnitOfWork

WINDOW = timedelta(seconds=60)




def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((as_utc(moment) - now).total_seconds()))


@dataclass(frozen=True)
class Limit:
    """One limit: a name, its configured maximum, which count it bounds, when a slot frees up."""

    code: str
    maximum: int
    counted: str  # a key of UnitOfWork.issuance_counts
    retry_after: Callable[[UnitOfWork, Principal, ScopeTemplate, datetime], int]
    message: str
    # Which requests the limit binds (every one unless it says otherwise).
    applies: Callable[[ScopeTemplate], bool] = lambda _template: True


def _window_retry(maximum: int, *, by_template: bool) -> Callable[..., int]:
    def retry_after(repo: UnitOfWork, principal: Principal, template: ScopeTemplate, now: datetime) -> int:
        # The maximum-th newest request in the window is the one whose leaving brings the count under the limit.
        edge = repo.nth_newest_request_since(nth=maximum, since=now - WINDOW,
                                             template=template.name if by_template else None,
                                             requester=None if by_template else principal.id)
        if edge is None:
            return int(WINDOW.total_seconds())
        # NOTE: the window includes its start (created_at >= now - 60 s): that request still counts at exactly
        # edge + 60 s, so the first whole second after it.
        return max(1, math.floor((as_utc(edge) + WINDOW - now).total_seconds()) + 1)
    return retry_after


def _pending_retry(repo: UnitOfWork, principal: Principal, _t: ScopeTemplate, now: datetime) -> int:
    # A slot frees when the agent's oldest waiting request expires (sooner if it is decided or cancelled).
    expiry = repo.earliest_pending_expiry(requester=principal.id, now=now)
    return 1 if expiry is None else _seconds_until(expiry, now)


def _grant_retry(repo: UnitOfWork, principal: Principal, _t: ScopeTemplate, now: datetime) -> int:
    # NOTE: none expiring means the budget is taken by issuances in flight: they settle within seconds.
    expiry = repo.earliest_live_grant_expiry(agent=principal.id, now=now)
    return 1 if expiry is None else _seconds_until(expiry, now)


@dataclass(frozen=True)
class RateLimitGate:
    """The gate (``IssuanceGate``): checks every configured limit in one loop."""

    limits: tuple[Limit, ...]

    @classmethod
    def from_settings(cls, *, agent_requests_per_minute: int, template_requests_per_minute: int,
                      agent_max_live_grants: int, agent_max_pending_requests: int = 0) -> "RateLimitGate":
        table = (
            Limit("rate_limited", agent_requests_per_minute, "agent_requests",
                  _window_retry(agent_requests_per_minute, by_template=False),
                  "this agent made {count} requests in the last minute (limit {maximum})"),
            Limit("template_rate_limited", template_requests_per_minute, "template_requests",
                  _window_retry(template_requests_per_minute, by_template=True),
                  "this scope template was requested {count} times in the last minute (limit {maximum})"),
            Limit("too_many_live_grants", agent_max_live_grants, "agent_live_grants", _grant_retry,
                  "this agent holds {count} live grants (limit {maximum}); revoke or let some expire"),
            Limit("too_many_pending_requests", agent_max_pending_requests, "agent_pending_requests", _pending_retry,
                  "this agent has {count} requests waiting for co-signers (limit {maximum}); cancel some or wait "
                  "for decisions", applies=lambda template: template.needs_approval),
        )
        for limit in table:
            if limit.maximum < 0:
                raise ValueError(f"limit {limit.code} must be >= 0 (0 disables it)")
        return cls(limits=tuple(limit for limit in table if limit.maximum > 0))

    def for_redemption(self) -> "RateLimitGate":
        """The limits that also bind when an approved request is redeemed: the live-grant budget.

        (The per-minute limits counted the request when it was made; counting it again would refuse
        a redemption for requests made since.)
        """
        return RateLimitGate(limits=tuple(limit for limit in self.limits if limit.code == "too_many_live_grants"))

    def __call__(self, repo: UnitOfWork, principal: Principal, template: ScopeTemplate, now: datetime) -> None:
        binding = [limit for limit in self.limits if limit.applies(template)]
        if not binding:
            return  # every limit was disabled on purpose by configuration, or none binds this template
        # NOTE: counted under the log's lock (a no-op if the unit of work holds it already), so a limit is exact.
        repo.lock_log_head()
        counts = repo.issuance_counts(agent=principal.id, template=template.name, since=now - WINDOW, now=now)
        for limit in binding:
            count = counts[limit.counted]
            if count >= limit.maximum:
                retry = limit.retry_after(repo, principal, template, now)
                raise RateLimited(limit.message.format(count=count, maximum=limit.maximum) + f"; retry in {retry}s",
                                  code=limit.code,
                                  details={"retry_after": retry, "limit": limit.maximum, "count": count})


__all__ = ["Limit", "RateLimitGate"]
