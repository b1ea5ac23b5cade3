"""The issuance log's events as values: every entry type the broker writes, and one builder of new entries.

The type strings are part of the log format (docs/log-format.md, section 3): a value here is never renamed
or removed, only added to.  :func:`log_entry` is the one way the broker starts an entry: every field of
:data:`broker.domain.log.ENTRY_FIELDS`, ``None`` where nothing is given, ``details`` an object.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from broker.domain.log import ENTRY_FIELDS
from broker.domain.times import log_time


class EventType(StrEnum):
    """Every ``type`` an entry of the issuance log has (the log format's vocabulary)."""

    # A request's life (broker.usecases.issuance).
    REQUESTED = "requested"
    PENDING = "pending"
    COSIGNED = "cosigned"
    APPROVED = "approved"
    DENIED = "denied"
    REDEEMING = "redeeming"
    ISSUED = "issued"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # Refusals, and the refusal budget's counts of those not written one by one.
    REFUSED = "refused"
    REFUSALS_SUPPRESSED = "refusals_suppressed"
    REFUSALS_SUPPRESSED_SUMMARY = "refusals_suppressed_summary"
    # Revocation and the kill switch (broker.usecases.revocation).
    REVOKED = "revoked"
    REVOKED_ALL = "revoked_all"
    REVOCATION_FAILED = "revocation_failed"
    REVOCATIONS_EXPIRED = "revocations_expired"
    ORPHANED = "orphaned"
    LOCKDOWN = "lockdown"
    LOCKDOWN_LIFT_REQUESTED = "lockdown_lift_requested"
    LOCKDOWN_LIFTED = "lockdown_lifted"
    # API keys and principals (broker.usecases.api_keys).
    API_KEY_CREATED = "api_key_created"
    API_KEY_REVOKED = "api_key_revoked"
    API_KEY_ROTATED = "api_key_rotated"
    PRINCIPAL_DISABLED = "principal_disabled"
    PRINCIPAL_ENABLED = "principal_enabled"
    # The log and the templates themselves.
    CHECKPOINT_REFUSED = "checkpoint_refused"
    TEMPLATES_LOADED = "templates_loaded"


# Entries that refuse something a caller asked for (one by one, or counted by the refusal budget).
REFUSAL_TYPES = (EventType.REFUSED, EventType.REFUSALS_SUPPRESSED)
# Entries whose details may carry counts of suppressed refusals.
CARRYING_TYPES = (*REFUSAL_TYPES, EventType.REFUSALS_SUPPRESSED_SUMMARY)
# Entries that end a grant before its expiry.
REVOKING_TYPES = (EventType.REVOKED, EventType.REVOKED_ALL)
# What a reviewer may filter ``issued`` entries by (``GET /v1/events?risk=``): ``risky``, a grant that declares a
# risk (destructive, permission-changing) or is for production (the dashboard's destructive and high-risk
# grants); ``destructive``, one that declares the destructive risk.
RISK_FILTERS = ("risky", "destructive")


def log_entry(kind: EventType | str, *, now: datetime, event_id: str | None = None,
              **fields: Any) -> dict[str, Any]:
    """A new entry of type ``kind`` at ``now``: every entry field, ``None`` unless given in ``fields``.

    ``details`` is ``{}`` unless given; an unknown type or field name (or ``time`` / ``type`` among ``fields``) is a programming error
    (ValueError).
    """
    unknown = sorted(set(fields) - set(ENTRY_FIELDS) | set(fields) & {"time", "type"})
    if unknown:
        raise ValueError(f"not entry fields: {', '.join(unknown)}")
    body: dict[str, Any] = dict.fromkeys(ENTRY_FIELDS)
    body.update(event_id=event_id or str(uuid.uuid4()), time=log_time(now), type=EventType(kind).value, details={})
    body.update(fields)
    return body


__all__ = ["CARRYING_TYPES", "REFUSAL_TYPES", "REVOKING_TYPES", "RISK_FILTERS", "EventType", "log_entry"]
