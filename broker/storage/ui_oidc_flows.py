"""Approver sign-in with OpenID Connect: the flows begun but not yet finished.

One row per authorization request sent to the identity provider, kept for ten minutes at most
and deleted by the first callback that names it (one-time use, enforced by the database: the
DELETE that consumes a row reports whether it removed it, so two concurrent callbacks cannot
both win).  The row is keyed by the SHA-256 of ``state``; the PKCE ``code_verifier`` and the
``nonce`` never leave the server; the browser that began the flow holds a random binding token in
an HttpOnly cookie, of which the row keeps only the SHA-256.

Beginning a flow needs no authentication, so how many flows may be outstanding (begun, not yet
finished or expired) is capped: per client address and in total (``FLOW_CAPS``).  Beyond a cap
the broker answers 429 and writes nothing.

NOTE: why a cap on what is stored, and not only a per-address rate limit.  What must be bounded
is the table (and, on SQLite, the writes that queue behind issuance): a per-address limit alone
bounds neither, because addresses are cheap (a botnet, an IPv6 prefix, or every user behind one
proxy counted as one) and nothing stops many of them from writing at once.  A cap on unexpired
rows bounds storage whatever the number of addresses: at most ``MAX_FLOWS`` live rows, plus the
expired ones the next flow purges.  The per-address cap only keeps one source from taking the
whole total by itself (it then needs ``MAX_FLOWS / MAX_FLOWS_PER_ADDRESS`` addresses).  Counting
the table itself needs no other state, holds across replicas, and frees a slot as soon as a flow
is finished or expires.  The price: while the total is taken, nobody can begin a new OIDC sign-in
(at most one flow lifetime after the flood stops); signed-in sessions are not affected.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Index
from sqlmodel import Field, SQLModel, col, delete, func, select

from broker.errors import RateLimited
from broker.storage.repository import Repository
from broker.storage.ui_sessions import token_digest
from broker.domain.times import aware_like

FLOW_LIFETIME = timedelta(minutes=10)
# Outstanding (unexpired, unfinished) flows: a person signing in has one or two; a whole office behind
# one address rarely more than a handful in ten minutes.
MAX_FLOWS_PER_ADDRESS = 20
MAX_FLOWS = 10_000
# IPv6 clients are counted by their /64: one subscriber commonly holds a whole /64.
IPV6_SOURCE_PREFIX = 64
# Client address of a request the server could not name (no peer address).
UNKNOWN_SOURCE = "unknown"
# PostgreSQL: the transaction-scoped advisory lock that makes "count, then insert" one step across
# replicas (SQLite units of work are BEGIN IMMEDIATE: one writer at a time already).
BEGIN_LOCK_KEY = 0x62726F6B65724F49  # "brokerOI"


class UiOidcFlowRow(SQLModel, table=True):
    __tablename__ = "ui_oidc_flows"
    __table_args__ = (Index("ix_ui_oidc_flows_client_address_expires_at", "client_address", "expires_at"),)
    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the flow's state
    browser_digest: str = Field(max_length=64)  # sha256 hex of the browser-binding cookie
    nonce: str = Field(max_length=128)
    code_verifier: str = Field(max_length=128)
    next_path: str = Field(max_length=200)
    created_at: datetime
    expires_at: datetime = Field(index=True)
    # The source that began the flow (see flow_source); None for flows begun before migration 0007.
    client_address: str | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class FlowCap:
    """At most ``maximum`` outstanding flows, from one client address or in total."""

    code: str
    maximum: int
    per_address: bool
    message: str  # shown on the sign-in page; {retry} is the seconds until a slot frees


def flow_caps(*, per_address: int, total: int) -> tuple[FlowCap, ...]:
    if per_address < 1 or total < 1:
        raise ValueError("a flow cap admits at least one flow")
    return (
        FlowCap("oidc_too_many_sign_ins_from_address", per_address, True,
                "Too many sign-ins from your network address are waiting for the identity provider. "
                "Finish one of them, or try again in {retry} seconds."),
        FlowCap("oidc_too_many_sign_ins", total, False,
                "Too many sign-ins are waiting for the identity provider right now. "
                "Try again in {retry} seconds."),
    )


FLOW_CAPS = flow_caps(per_address=MAX_FLOWS_PER_ADDRESS, total=MAX_FLOWS)


def flow_source(address: str | None) -> str:
    """The client address a flow is counted against: the IP (an IPv6 one as its /64), at most 64 characters."""
    if not address:
        return UNKNOWN_SOURCE
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/{IPV6_SOURCE_PREFIX}", strict=False))
    return str(ip)


@dataclass(frozen=True)
class UiOidcFlow:
    """A flow taken out of the store (consumed): what the callback checks the answer against."""

    browser_digest: str
    nonce: str
    code_verifier: str
    next_path: str

    def bound_to(self, browser_token: str | None) -> bool:
        """Was this flow begun by the browser that holds ``browser_token``?"""
        return (isinstance(browser_token, str) and 0 < len(browser_token) <= 200
                and hmac.compare_digest(token_digest(browser_token), self.browser_digest))


class UiOidcFlowStore:
    """Queries on ``ui_oidc_flows``; runs inside the caller's unit of work (never commits)."""

    def __init__(self, repo: Repository) -> None:
        self._session = repo.session

    def check_caps(self, *, client_address: str, now: datetime) -> None:
        """Raise ``RateLimited`` if one more flow from ``client_address`` would pass a cap (``FLOW_CAPS``).

        Reads only (fit for ``Database.read``).  Each count stops at its cap (``LIMIT``) and runs on an
        index: ``(client_address, expires_at)`` per address, ``expires_at`` in total.
        """
        caps = FLOW_CAPS
        if not caps:
            raise RuntimeError("no flow caps: refusing to leave sign-in flows unbounded")
        for cap in caps:
            source = client_address if cap.per_address else None
            if self._outstanding(source=source, now=now, up_to=cap.maximum) >= cap.maximum:
                retry = self._seconds_until_a_slot_frees(source=source, now=now)
                raise RateLimited(cap.message.format(retry=retry), code=cap.code,
                                  details={"retry_after": retry, "limit": cap.maximum})

    def serialize_begins(self) -> None:
        """Hold, until this unit of work ends, the lock that orders flow begins (PostgreSQL; see BEGIN_LOCK_KEY)."""
        connection = self._session.connection()
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({BEGIN_LOCK_KEY})")

    def begin(self, *, state: str, browser_token: str, nonce: str, code_verifier: str, next_path: str,
              now: datetime, client_address: str | None = None) -> None:
        self._session.add(UiOidcFlowRow(id=token_digest(state), browser_digest=token_digest(browser_token),
                                        nonce=nonce, code_verifier=code_verifier, next_path=next_path,
                                        created_at=now, expires_at=now + FLOW_LIFETIME,
                                        client_address=client_address))

    def known(self, state: str | None) -> bool:
        """Is there a flow row for ``state`` at all?  A read: the callback then ``take``-s it to use it."""
        if not state or len(state) > 200:
            return False
        return self._session.get(UiOidcFlowRow, token_digest(state)) is not None

    def take(self, state: str | None, *, now: datetime) -> UiOidcFlow | None:
        """Consume the flow named by ``state``: None if unknown, already used or expired."""
        if not state or len(state) > 200:
            return None
        key = token_digest(state)
        row = self._session.get(UiOidcFlowRow, key)
        if row is None:
            return None
        flow = UiOidcFlow(browser_digest=row.browser_digest, nonce=row.nonce, code_verifier=row.code_verifier,
                          next_path=row.next_path)
        expires_at = row.expires_at
        self._session.expunge(row)
        # NOTE: one-time use is decided by the DELETE's row count, not by the read above: of two
        # concurrent callbacks with the same state, only the one whose DELETE removed the row goes on.
        removed = self._session.exec(delete(UiOidcFlowRow).where(col(UiOidcFlowRow.id) == key)).rowcount
        if removed != 1 or aware_like(expires_at, now) <= now:
            return None
        return flow

    def purge_expired(self, *, now: datetime) -> None:
        self._session.exec(delete(UiOidcFlowRow).where(col(UiOidcFlowRow.expires_at) <= now))

    def _unexpired(self, query, *, source: str | None, now: datetime):
        query = query.where(col(UiOidcFlowRow.expires_at) > now)
        return query if source is None else query.where(col(UiOidcFlowRow.client_address) == source)

    def _outstanding(self, *, source: str | None, now: datetime, up_to: int) -> int:
        found = self._unexpired(select(UiOidcFlowRow.id), source=source, now=now).limit(up_to).subquery()
        return int(self._session.exec(select(func.count()).select_from(found)).one())

    def _seconds_until_a_slot_frees(self, *, source: str | None, now: datetime) -> int:
        """When the oldest outstanding flow expires (a finished flow frees its slot sooner)."""
        oldest = self._session.exec(self._unexpired(select(func.min(UiOidcFlowRow.expires_at)),
                                                    source=source, now=now)).one()
        if oldest is None:
            return 1
        return max(1, math.ceil((aware_like(oldest, now) - now).total_seconds()))
