"""Observers of the issuance log: callables told about the entries a unit of work appended, after it commits.

``ObservedDatabase`` is a ``Database`` whose units of work remember the entries they append and,
once the commit has succeeded, hand them to each observer (metrics counters, periodic
checkpoints).  An observer never sees an entry that was rolled back, and an observer that
fails is logged and ignored: it can neither undo nor block the operation it observes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from broker.storage.engine import Database
from broker.storage.repository import Repository

log = logging.getLogger("broker.log_observers")

# Called with the entries (sealed: seq, hash, type, template, ...) of one committed unit of work.
EntryObserver = Callable[[Sequence[Mapping[str, Any]]], None]


class ObservedDatabase(Database):
    """A ``Database`` that tells ``observers`` about the entries of each committed unit of work."""

    def __init__(self, engine, observers: Sequence[EntryObserver] = ()) -> None:
        super().__init__(engine)
        self.observers: list[EntryObserver] = list(observers)

    @contextmanager
    def transaction(self) -> Iterator[Repository]:
        with super().transaction() as repo:
            yield repo
        # Reached only after the commit succeeded.
        if repo.appended:
            for observer in tuple(self.observers):
                try:
                    observer(repo.appended)
                except Exception:  # noqa: BLE001 - an observer must not fail a committed operation
                    log.warning("log observer %r failed", observer, exc_info=True)
