"""Counts of suppressed refusals carried by log entries (see broker.usecases.refusal_budget), read from the
entries' ``details``: pure, so that the reviewers' figures and their cache in storage count them alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

# The reason code given to a carried count that does not say (or cannot say) its reasons.
UNATTRIBUTED = "other"


def carried_refusals(details: object) -> dict[str, int]:
    """The refusals an entry's ``details`` carry (``suppressed``, from a ``refused`` or a summary entry)
    that no entry of their own counts, by reason code.

    That is K minus the ones announced by a ``refusals_suppressed`` entry, max(0, K - A) in all.
    Read from the log, so a malformed count yields nothing rather than an error, reasons that do
    not add up to K are not trusted (the count is then ``UNATTRIBUTED``), and an announcement whose
    reason is not among the count's is taken off the other reasons.
    """
    count = _count(details.get("suppressed")) if isinstance(details, Mapping) else 0
    if not count:
        return {}
    by_reason = _counts(details.get("suppressed_by_reason"))
    carried = Counter(by_reason) if sum(by_reason.values()) == count else Counter({UNATTRIBUTED: count})
    unmatched = 0
    for code, announced in _counts(details.get("suppressed_announced_by_reason")).items():
        matched = min(announced, carried[code])
        carried[code] -= matched
        unmatched += announced - matched
    for code in sorted(carried):
        matched = min(unmatched, carried[code])
        carried[code] -= matched
        unmatched -= matched
    return {code: n for code, n in sorted(carried.items()) if n > 0}


def carried_announcements(details: object) -> int:
    """How many ``refusals_suppressed`` entries (windows) the count in ``details`` covers."""
    if not isinstance(details, Mapping) or not _count(details.get("suppressed")):
        return 0
    return sum(_counts(details.get("suppressed_announced_by_reason")).values())


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {code: _count(n) for code, n in value.items() if isinstance(code, str) and _count(n)}


__all__ = ["UNATTRIBUTED", "carried_announcements", "carried_refusals"]
