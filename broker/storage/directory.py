"""The directory adapter: principal and API-key lookups for the authenticator, over the store."""

from __future__ import annotations

import threading
import time

from broker.domain.principals import Principal
from broker.storage.engine import Database


class DirectoryAdapter:
    """Principal directory and API-key store for the authenticator.

    An API-key lookup reads the key *and* its principal in one unit of work; the principal is
    handed to the very next ``get_principal`` call for that id on the same thread (the
    authenticator asks for it right after), so one authentication is one database round trip.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._just_loaded = threading.local()

    # A principal read with its key is handed on only this soon after (a failed key check leaves it
    # behind: it must not answer a later, unrelated lookup on the same thread).
    HANDOFF_SECONDS = 0.5

    def get_principal(self, principal_id: str) -> Principal | None:
        loaded = getattr(self._just_loaded, "principal", None)
        self._just_loaded.principal = None
        if (loaded is not None and loaded[0] == principal_id
                and time.monotonic() - loaded[2] < self.HANDOFF_SECONDS):
            return loaded[1]
        with self._database.transaction() as repo:
            return repo.get_principal(principal_id)

    def is_disabled(self, principal_id: str) -> bool:
        with self._database.transaction() as repo:
            return repo.is_principal_disabled(principal_id)

    def find_api_key(self, key_id: str):
        self._just_loaded.principal = None
        with self._database.read() as repo:
            found = repo.find_api_key_with_principal(key_id)
        if found is None:
            return None
        record, principal = found
        self._just_loaded.principal = (record.principal_id, principal, time.monotonic())
        return record
