"""Approver web sessions: an approver's key (or sign-in) exchanged for a server-side session.

The browser holds only a random session token in an HttpOnly cookie; the table keeps its
SHA-256, never the token itself, nor the API key that was exchanged for it (only the key's
public id, so revoking the key ends the session).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Field, SQLModel, col, delete, select

from broker.storage.repository import Repository
from broker.domain.times import aware_like

# Absolute lifetime and idle timeout of an approver session.
SESSION_LIFETIME = timedelta(hours=8)
SESSION_IDLE = timedelta(minutes=30)
TOKEN_BYTES = 32


class UiSessionRow(SQLModel, table=True):
    __tablename__ = "ui_sessions"
    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the cookie's token
    principal_id: str = Field(index=True, max_length=200)
    api_key_id: str | None = Field(default=None, max_length=64)
    auth_method: str = Field(max_length=200)
    csrf_token: str = Field(max_length=64)
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime = Field(index=True)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class UiSession:
    """A live approver session as the pages see it (no token inside)."""

    principal_id: str
    api_key_id: str | None
    auth_method: str
    csrf_token: str

    def csrf_matches(self, candidate: object) -> bool:
        return isinstance(candidate, str) and hmac.compare_digest(candidate.encode(), self.csrf_token.encode())


class UiSessionStore:
    """Queries on ``ui_sessions``; runs inside the caller's unit of work (never commits)."""

    def __init__(self, repo: Repository) -> None:
        self._session = repo.session

    def create(self, *, principal_id: str, api_key_id: str | None, auth_method: str, now: datetime) -> str:
        """A new session; returns the cookie token (shown to the browser once, stored hashed)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._session.add(UiSessionRow(id=token_digest(token), principal_id=principal_id, api_key_id=api_key_id,
                                       auth_method=auth_method, csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
                                       created_at=now, last_seen_at=now, expires_at=now + SESSION_LIFETIME))
        return token

    def known(self, token: str | None) -> bool:
        """Is there a session row for ``token`` at all?  A read: the page then finds (and touches) it to use it."""
        if not token or len(token) > 200:
            return False
        return self._session.get(UiSessionRow, token_digest(token)) is not None

    def find(self, token: str | None, *, now: datetime) -> UiSession | None:
        """The live session for ``token`` (touching its idle timer), or None; expired ones are removed."""
        if not token or len(token) > 200:
            return None
        row = self._session.get(UiSessionRow, token_digest(token))
        if row is None:
            return None
        if aware_like(row.expires_at, now) <= now or aware_like(row.last_seen_at, now) + SESSION_IDLE <= now:
            self._session.delete(row)
            return None
        row.last_seen_at = now
        self._session.add(row)
        return UiSession(principal_id=row.principal_id, api_key_id=row.api_key_id, auth_method=row.auth_method,
                         csrf_token=row.csrf_token)

    def end(self, token: str | None) -> None:
        if token and len(token) <= 200:
            self._session.exec(delete(UiSessionRow).where(col(UiSessionRow.id) == token_digest(token)))

    def end_all_for(self, principal_id: str) -> None:
        self._session.exec(delete(UiSessionRow).where(col(UiSessionRow.principal_id) == principal_id))

    def purge_expired(self, *, now: datetime) -> None:
        self._session.exec(delete(UiSessionRow).where(col(UiSessionRow.expires_at) <= now))

    def count(self) -> int:
        return len(list(self._session.exec(select(UiSessionRow.id))))
