"""What a requester waiting for co-signers is told: each co-signature as it arrives, with the time
since the request and the time left before it expires, then the outcome (a denial with its reason).

Pure: :class:`WaitProgress` turns successive views of one request (``GET /v1/requests/{id}``) into
lines; ``BrokerClient.wait`` prints them (logger ``broker.sdk``) and hands them to ``on_progress``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``: short enough for a terminal line."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _since(view: Mapping[str, Any], at: str | None) -> str:
    created = view.get("created_at")
    if not created or not at:
        return ""
    return f" {duration((parse_time(at) - parse_time(created)).total_seconds())} after the request"


@dataclass
class WaitProgress:
    """Remembers what was already said about one request, so each line is said once."""

    request_id: str
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _status: str | None = None

    def lines(self, view: Mapping[str, Any], *, now: datetime) -> list[str]:
        out = []
        required = int(view.get("approvals_required") or 0)
        counted = int(view.get("approvals_counted") or 0)
        status = str(view.get("status", ""))
        approvals = sorted(view.get("approvals") or [], key=lambda a: str(a.get("at")))
        ordinal = 0
        for approval in approvals:
            key = (str(approval.get("approver")), str(approval.get("decision")))
            ordinal += key[1] == "approve"
            if key in self._seen:
                continue
            self._seen.add(key)
            if key[1] != "approve":
                continue  # a denial ends the request: the outcome line names who and why
            line = f"request {self.request_id}: {key[0]} approved ({ordinal} of {required}){_since(view, approval.get('at'))}"
            if status == "pending" and view.get("pending_expires_at"):
                left = (parse_time(view["pending_expires_at"]) - now).total_seconds()
                line += f"; {duration(left)} left before it expires"
            out.append(line)
        if status != self._status:
            first = self._status is None
            self._status = status
            outcome = self._outcome(view, status, counted, required, now=now, first=first)
            if outcome:
                out.append(outcome)
        return out

    def _outcome(self, view: Mapping[str, Any], status: str, counted: int, required: int, *, now: datetime,
                 first: bool) -> str | None:
        rid = self.request_id
        if status == "pending":
            if not first:
                return None
            left = ""
            if view.get("pending_expires_at"):
                left = f"; {duration((parse_time(view['pending_expires_at']) - now).total_seconds())} left"
            return f"request {rid}: waiting for {required - counted} more approval(s) ({counted} of {required}){left}"
        if status in ("approved", "issued"):
            return f"request {rid}: approved ({counted} of {required}){_since(view, view.get('approved_at'))}"
        if status == "denied":
            denials = [a for a in view.get("approvals") or [] if a.get("decision") == "deny"]
            by = f" by {denials[-1].get('approver')}{_since(view, denials[-1].get('at'))}" if denials else ""
            return f"request {rid}: denied{by}: {view.get('decided_reason') or 'no reason given'}"
        if status == "expired":
            return f"request {rid}: expired with {counted} of {required} approvals"
        return f"request {rid}: {status}"
