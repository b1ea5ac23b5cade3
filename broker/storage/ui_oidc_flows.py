"""Approver sign-in with OpenID Connect: the flows begun but not yet finished.

One row per authorization request sent to the identity provider, kept for ten minutes at most
and deleted by the first callback that names it (one-time use, enforced by the database: the
DELETE that consumes a row reports whether it removed it, so two concurrent callbacks cannot
both win).  The row is keyed by the SHA-256 of ``state``; the PKCE ``code_verifier`` and the
``nonce`` never leave the server; the browser that began the flow holds a random binding token in
an HttpOnly cookie, of which the row keeps only the SHA-256.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Field, SQLModel, col, delete

from broker.storage.repository import Repository
from broker.storage.ui_sessions import token_digest

FLOW_LIFETIME = timedelta(minutes=10)


class UiOidcFlowRow(SQLModel, table=True):
    __tablename__ = "ui_oidc_flows"
    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the flow's state
    browser_digest: str = Field(max_length=64)  # sha256 hex of the browser-binding cookie
    nonce: str = Field(max_length=128)
    code_verifier: str = Field(max_length=128)
    next_path: str = Field(max_length=200)
    created_at: datetime
    expires_at: datetime = Field(index=True)


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

    def begin(self, *, state: str, browser_token: str, nonce: str, code_verifier: str, next_path: str,
              now: datetime) -> None:
        self._session.add(UiOidcFlowRow(id=token_digest(state), browser_digest=token_digest(browser_token),
                                        nonce=nonce, code_verifier=code_verifier, next_path=next_path,
                                        created_at=now, expires_at=now + FLOW_LIFETIME))

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
        if removed != 1 or _aware(expires_at, now) <= now:
            return None
        return flow

    def purge_expired(self, *, now: datetime) -> None:
        self._session.exec(delete(UiOidcFlowRow).where(col(UiOidcFlowRow.expires_at) <= now))


def _aware(moment: datetime, like: datetime) -> datetime:
    return moment if moment.tzinfo or like.tzinfo is None else moment.replace(tzinfo=like.tzinfo)
