"""Running a coroutine from a synchronous test, whatever else the worker process runs.

Playwright's sync API (tests/ui, a session-scoped browser) keeps an asyncio loop running in the main
thread for the rest of the session; ``anyio.run`` / ``asyncio.run`` refuse to start a second one there
("Already running asyncio in this thread").  Which modules share a process depends on how the suite is
split over workers, so a test that runs a coroutine does it on a thread of its own, always.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio


def run_coroutine(function: Callable[..., Any], *args: Any) -> Any:
    """``anyio.run(function, *args)`` on a fresh thread; its result, or its exception re-raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-event-loop") as pool:
        return pool.submit(anyio.run, function, *args).result()
