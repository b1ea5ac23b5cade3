"""In-memory stand-ins for the use cases' ports (broker.ports), for tests where the logic is the point.

``MemoryStore`` keeps the records the use cases write in dicts, as they are written (records are frozen: what a
use case holds cannot change what is stored, nor the other way round); a unit of work that raises leaves them as
they were (the store snapshots its dicts when the unit of work begins).  The SQLite and PostgreSQL suites
(tests/storage, tests/api) are where locking and ordering are the point; here there is no SQL, no HTTP, no AWS.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.domain.records import Approval, CredentialRequest, Grant, MintIntent
from broker.domain.templates import ScopeTemplate
from broker.errors import TemplateNotFound, Unavailable
from broker.ports import MintedCredentials, MintOrder
from broker.storage.template_files import read_template
from broker.usecases.issuance import BrokerService
from tests.conftest import TEST_SCOPES, FrozenClock

START = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
AGENT = Principal(id="agent:demo", roles=frozenset({Role.AGENT}), acts_for="human:alice")
ALICE = Principal(id="human:alice", roles=frozenset({Role.APPROVER}), groups=frozenset({"sre"}))
BOB = Principal(id="human:bob", roles=frozenset({Role.APPROVER}), groups=frozenset({"sre"}))
CAROL = Principal(id="human:carol", roles=frozenset({Role.APPROVER}), groups=frozenset({"sre"}))
DAVE = Principal(id="human:dave", roles=frozenset({Role.APPROVER}), groups=frozenset({"dba"}))
PEOPLE = (AGENT, ALICE, BOB, CAROL, DAVE)


class MemoryUnitOfWork:
    """The part of ``broker.ports.UnitOfWork`` the request, co-signing and redemption use cases call."""

    def __init__(self, state: dict[str, Any], principals: Mapping[str, Principal]) -> None:
        self.s = state
        self._principals = principals

    # --- principals
    def get_principal(self, principal_id: str) -> Principal | None:
        return self._principals.get(principal_id)

    # --- requests and approvals
    def add_request(self, row: CredentialRequest) -> None:
        self.s["requests"][row.id] = row

    def get_request(self, request_id: str, *, for_update: bool = False) -> CredentialRequest | None:
        return self.s["requests"].get(request_id)

    def transition_request(self, request_id: str, *, from_statuses: Sequence[str], to_status: str,
                           **values: Any) -> bool:
        # Like the repository's conditional UPDATE: the stored request moves, the record the caller holds does not.
        row = self.s["requests"].get(request_id)
        if row is None or row.status not in from_statuses:
            return False
        self.s["requests"][request_id] = replace(row, status=to_status, **values)
        return True

    def list_requests(self, *, statuses: Sequence[str] | None = None, requester: str | None = None,
                      acts_for: str | None = None, limit: int = 100, offset: int = 0) -> list[CredentialRequest]:
        rows = [r for r in self.s["requests"].values() if (not statuses or r.status in statuses)
                and (requester is None or r.requester == requester) and (acts_for is None or r.acts_for == acts_for)]
        rows.sort(key=lambda r: (-r.created_at.timestamp(), r.id))
        return rows[offset:offset + limit]

    def count_requests_by_requester(self, *, statuses: Sequence[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.s["requests"].values():
            if row.status in statuses:
                counts[row.requester] = counts.get(row.requester, 0) + 1
        return counts

    def stale_requests(self, *, now: datetime) -> list[CredentialRequest]:
        return [r for r in self.s["requests"].values()
                if (r.status == "pending" and r.pending_expires_at and r.pending_expires_at < now)
                or (r.status == "approved" and r.redeem_by and r.redeem_by < now)]

    def add_approval(self, row: Approval) -> None:
        self.s["approvals"].append(replace(row, id=len(self.s["approvals"]) + 1))

    def approvals_for(self, request_id: str) -> list[Approval]:
        return [a for a in self.s["approvals"] if a.request_id == request_id]

    def has_decided(self, request_id: str, approver: str) -> bool:
        return any(a.approver == approver for a in self.approvals_for(request_id))

    # --- intents and grants
    def add_request_and_intent(self, row: CredentialRequest, intent: MintIntent, *,
                               entry: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        self.add_request(row)
        self.add_intent(intent)
        return None if entry is None else self.append_event(entry)

    def add_intent(self, row: MintIntent) -> None:
        self.s["intents"][row.grant_id] = row

    def resolve_intent(self, grant_id: str) -> None:
        intents = self.s["intents"]
        intents[grant_id] = replace(intents[grant_id], resolved=True)

    def record_issued(self, request_id: str, *, from_statuses: Sequence[str], to_status: str, grant: Grant,
                      now: datetime, entry: Mapping[str, Any] | None = None) -> bool:
        if not self.transition_request(request_id, from_statuses=from_statuses, to_status=to_status,
                                       issued_at=now, updated_at=now):
            return False
        self.s["grants"][grant.id] = grant
        self.resolve_intent(grant.id)
        if entry is not None:
            self.append_event(entry)
        return True

    def save_grant(self, grant: Grant) -> None:
        assert grant.id in self.s["grants"], "save_grant writes over a stored grant"
        self.s["grants"][grant.id] = grant

    def get_grant(self, grant_id: str) -> Grant | None:
        return self.s["grants"].get(grant_id)

    def grant_for_request(self, request_id: str) -> Grant | None:
        return next((g for g in self.s["grants"].values() if g.request_id == request_id), None)

    # --- the issuance log
    def lock_log_head(self) -> tuple[int, str]:
        return len(self.s["log"]), ""

    def append_event(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert tuple(body) == issuance_log.ENTRY_FIELDS, "an entry has exactly the log's fields"
        entry = {**copy.deepcopy(dict(body)), "seq": len(self.s["log"]) + 1}
        self.s["log"].append(entry)
        return entry


class MemoryStore:
    """``broker.ports.Store`` in memory: a unit of work that raises leaves nothing behind."""

    def __init__(self, principals: Iterable[Principal] = PEOPLE) -> None:
        self.principals = {p.id: p for p in principals}
        self.state: dict[str, Any] = {"requests": {}, "approvals": [], "intents": {}, "grants": {}, "log": []}
        self.fail_next: Exception | None = None   # raised when the next unit of work begins

    @contextmanager
    def transaction(self) -> Iterator[MemoryUnitOfWork]:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        # NOTE: the records are frozen and the entries never changed once appended: copies of the containers suffice.
        before = {name: copy.copy(value) for name, value in self.state.items()}
        try:
            yield MemoryUnitOfWork(self.state, self.principals)
        except BaseException:
            self.state.clear()
            self.state.update(before)
            raise

    read = transaction

    @contextmanager
    def exclusive(self, names: Iterable[str]) -> Iterator[None]:
        yield

    # --- what tests look at
    def entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.state["log"] if kind is None or e["type"] == kind]

    def request(self, request_id: str) -> CredentialRequest:
        return self.state["requests"][request_id]


@dataclass
class FakeMinter:
    """STS as the use cases see it: an order in, credentials out (or the failure it is told to raise)."""

    clock: FrozenClock
    failure: Exception | None = None
    orders: list[MintOrder] = field(default_factory=list)
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def mint(self, order: MintOrder) -> MintedCredentials:
        self.orders.append(order)
        if self.failure is not None:
            raise self.failure
        number = next(self._serial)
        return MintedCredentials(access_key_id=f"ASIAFAKE{number:012d}", secret_access_key="fake-secret",
                                 session_token="fake-token",
                                 expiration=self.clock.now() + timedelta(seconds=order.duration_seconds),
                                 assumed_role_arn=order.role_arn + "/" + order.session_name,
                                 assumed_role_id="AROAFAKE:" + order.session_name)


class DictCatalog:
    """``broker.ports.TemplateSource`` over templates read once from files."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._by_name = {t.name: t for t in (read_template(p) for p in paths)}

    def get(self, name: str) -> ScopeTemplate:
        try:
            return self._by_name[name]
        except KeyError:
            raise TemplateNotFound(f"no scope template named '{name}'") from None

    def all(self) -> list[ScopeTemplate]:
        return list(self._by_name.values())


@dataclass
class World:
    """A BrokerService on fakes, and the fakes to look at."""

    service: BrokerService
    store: MemoryStore
    minter: FakeMinter
    clock: FrozenClock


def world(**service_options: Any) -> World:
    clock = FrozenClock(START)
    store, minter = MemoryStore(), FakeMinter(clock)
    catalog = DictCatalog(sorted(TEST_SCOPES.glob("*.yaml")))
    service = BrokerService(catalog=catalog, database=store, minter=minter, clock=clock, **service_options)
    return World(service=service, store=store, minter=minter, clock=clock)


def ask(w: World, template: str = "test-prod-ecs", parameters: Mapping[str, str] | None = None, *,
        principal: Principal = AGENT, reason: str = "roll out the fix, CHG-1"):
    return w.service.request_credentials(principal=principal, template_name=template,
                                         parameters={"service": "checkout"} if parameters is None else parameters,
                                         ttl_seconds=None, reason=reason, source_ip="192.0.2.1")


STS_DOWN = Unavailable("STS is unavailable", code="sts_unavailable")
