"""Background work of the broker process: checkpoints every N entries, off the request's path.

``CheckpointEvery`` is a log observer (see :mod:`broker.storage.observed`) that asks for a signed
checkpoint when an appended entry's seq crosses a boundary; ``InBackground`` runs such a task on a
daemon thread so that the request which crossed the boundary does not wait for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from broker.errors import InvalidInput

log = logging.getLogger("broker.log_observers")


class CheckpointEvery:
    """Takes a signed checkpoint whenever an appended entry's seq is a multiple of ``every``.

    Replicas share one sequence, so each boundary is crossed by exactly one unit of work on
    one replica; the checkpoint signs the head as it is then (possibly a little past it).
    """

    def __init__(self, take_checkpoint: Callable[[], object], *, every: int) -> None:
        if every < 1:
            raise InvalidInput("checkpoint_every must be at least 1", code="config_invalid", field="checkpoint_every")
        self._take_checkpoint = take_checkpoint
        self.every = every

    def __call__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        if any(entry["seq"] % self.every == 0 for entry in entries):
            self._take_checkpoint()


class InBackground:
    """Runs ``task`` on a daemon thread, off the caller's path (a checkpoint's transaction and
    signature must not sit inside the request that crossed a boundary).

    Calls made while a run is under way coalesce into one more run.  The thread starts on the
    first call and ends after ``idle_seconds`` without one.  A failing run is logged; the next
    call (or ``broker serve``'s periodic checkpoint) tries again.
    """

    def __init__(self, task: Callable[[], object], *, name: str, idle_seconds: float = 10.0) -> None:
        self._task = task
        self._name = name
        self._idle_seconds = idle_seconds
        self._changed = threading.Condition()
        self._wanted = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        with self._changed:
            self._wanted = True
            self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._wanted:
                    self._changed.wait(self._idle_seconds)
                if not self._wanted:
                    self._thread = None  # idle: a later call starts a new thread
                    return
                self._wanted, self._busy = False, True
            try:
                self._task()
            except Exception:  # noqa: BLE001 - a background run must not die; the next call retries
                log.warning("background %s failed", self._name, exc_info=True)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no run is wanted or under way (tests, shutdown); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._wanted and not self._busy, timeout)
