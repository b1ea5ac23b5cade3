"""Per-class attack counts for the security suite's end-of-session summary.

Each attack test records what it tried and whether the broker refused it; attacks that
were accepted must have been proven harmless by the test (``contained``).  The counts
are printed by ``pytest_terminal_summary`` in ``tests/security/conftest.py``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class ClassCount:
    tried: int = 0
    refused: int = 0
    contained: int = 0      # accepted, and proven to grant nothing beyond the template


_LOCK = threading.Lock()
TALLY: dict[str, ClassCount] = defaultdict(ClassCount)


def record(attack_class: str, *, refused: bool) -> None:
    """Count one attempt; an accepted attempt counts as contained (the caller asserted it)."""
    with _LOCK:
        count = TALLY[attack_class]
        count.tried += 1
        if refused:
            count.refused += 1
        else:
            count.contained += 1


def summary_lines() -> list[str]:
    lines = []
    for name in sorted(TALLY):
        c = TALLY[name]
        extra = f", accepted {c.contained} (each checked: contained, or schema-valid)" if c.contained else ""
        lines.append(f"{name:<52} tried {c.tried:>4}  refused {c.refused:>4}{extra}")
    tried, refused = sum(c.tried for c in TALLY.values()), sum(c.refused for c in TALLY.values())
    lines.append(f"{'total':<52} tried {tried:>4}  refused {refused:>4}, accepted {tried - refused} (all checked)")
    return lines
