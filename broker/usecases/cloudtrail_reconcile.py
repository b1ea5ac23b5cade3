"""Completeness against CloudTrail: every session of a target role is in the issuance log, and back.

For a time window, both ways:

* every successful ``AssumeRole`` of a target role (by the broker's own role or by anyone) with no
  matching ``issued`` entry (or ``orphaned`` entry: a session the broker could not record and then
  logged and revoked) is a session nobody accounted for;
* every ``issued`` entry with no ``AssumeRole`` in CloudTrail is a log entry AWS never saw.

Matching: an ``issued`` entry carries the minted access key id, which STS chose and CloudTrail
records in ``responseElements.credentials.accessKeyId``: that is the match.  The broker also set the
SourceIdentity (from the requester), the session name (from requester and request id) and the
``broker-request-id`` tag; a match whose other keys disagree is reported as a mismatch (a gap).  An
``orphaned`` entry has no access key id: it matches by the ``broker-request-id`` (or
``broker-grant-id``) tag, or by session name and SourceIdentity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.domain.cloudtrail import AssumeRoleCall, TrailRecords, iso
from broker.domain.events import EventType
from broker.domain.sts_rules import TAG_GRANT, TAG_REQUEST, role_session_name, source_identity_for
from broker.domain.times import parse_time
from broker.errors import InvalidInput

# STS answers before the broker writes `issued`: an AssumeRole a little outside the window may belong
# to an entry inside it (and the other way round).  Used for matching only, never for reporting.
MATCH_SLACK = timedelta(minutes=15)


@dataclass(frozen=True)
class LoggedSession:
    """A session the log accounts for: an ``issued`` or ``orphaned`` entry."""

    kind: str                         # issued | orphaned
    seq: int
    time: datetime
    request_id: str | None
    grant_id: str | None
    template: str | None
    requester: str | None
    access_key_id: str | None
    session_name: str | None
    source_identity: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "time": iso(self.time), "request_id": self.request_id,
                "grant_id": self.grant_id, "template": self.template, "requester": self.requester,
                "access_key_id": self.access_key_id, "session_name": self.session_name,
                "source_identity": self.source_identity}


def parse_entry_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise InvalidInput("a log entry has no time", code="log_entry_invalid")
    return parse_time(text)


def _expected_identity(requester: str | None) -> str | None:
    if not requester:
        return None
    try:
        return source_identity_for(requester)
    except InvalidInput:
        return None


def logged_sessions(entries: Iterable[Mapping[str, Any]]) -> list[LoggedSession]:
    sessions = []
    for entry in entries:
        kind = entry.get("type")
        if kind not in (EventType.ISSUED, EventType.ORPHANED):
            continue
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        requester = details.get("requester")
        request_id = entry.get("request_id")
        if kind == EventType.ISSUED:
            session_name = role_session_name(requester, request_id) if requester and request_id else None
        else:
            session_name = details.get("session_name")
        sessions.append(LoggedSession(
            kind=kind, seq=int(entry.get("seq") or 0), time=parse_entry_time(entry.get("time")),
            request_id=request_id, grant_id=entry.get("grant_id"), template=entry.get("template"),
            requester=requester, access_key_id=entry.get("access_key_id"), session_name=session_name,
            source_identity=_expected_identity(requester)))
    return sessions


@dataclass
class Reconciliation:
    since: datetime
    until: datetime
    target_roles: tuple[str, ...]
    trail: TrailRecords
    entries: int
    matched: list[tuple[LoggedSession, AssumeRoleCall]] = field(default_factory=list)
    unlogged: list[AssumeRoleCall] = field(default_factory=list)
    missing: list[LoggedSession] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    orphans_without_session: list[LoggedSession] = field(default_factory=list)
    failed_calls: list[AssumeRoleCall] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.unlogged or self.missing or self.mismatches)

    def to_dict(self) -> dict[str, Any]:
        def unlogged(call: AssumeRoleCall) -> dict[str, Any]:
            by_broker = TAG_REQUEST in call.tags
            return call.to_dict() | {"why": "carries the broker's tags but no log entry accounts for it" if by_broker
                                     else "not made through the broker"}
        return {
            "complete": self.complete,
            "window": {"since": iso(self.since), "until": iso(self.until)},
            "target_roles": list(self.target_roles),
            "cloudtrail": {"files": self.trail.files, "records": self.trail.records,
                           "assume_role_calls": len(self.trail.assume_role),
                           "first_record": iso(self.trail.first), "last_record": iso(self.trail.last)},
            "log": {"entries": self.entries},
            "matched": len(self.matched),
            "unlogged_sessions": [unlogged(c) for c in self.unlogged],
            "missing_from_cloudtrail": [s.to_dict() for s in self.missing],
            "mismatches": self.mismatches,
            "orphans_without_session": [s.to_dict() for s in self.orphans_without_session],
            "failed_assume_role_calls": len(self.failed_calls),
        }

    def to_text(self) -> str:
        lines = [f"window {iso(self.since)} .. {iso(self.until)}; CloudTrail: {self.trail.files} file(s), "
                 f"{self.trail.records} record(s) ({iso(self.trail.first)} .. {iso(self.trail.last)}); "
                 f"log: {self.entries} entries; target roles: {', '.join(self.target_roles)}"]
        for call in self.unlogged:
            origin = "broker-tagged" if TAG_REQUEST in call.tags else "not through the broker"
            lines.append(f"UNLOGGED  {iso(call.time)} AssumeRole {call.role_arn} session {call.session_name} "
                         f"key {call.access_key_id} by {call.caller} ({origin}; {call.source})")
        for session in self.missing:
            lines.append(f"MISSING   {iso(session.time)} issued seq {session.seq} request {session.request_id} "
                         f"key {session.access_key_id}: no AssumeRole in CloudTrail")
        for mismatch in self.mismatches:
            lines.append(f"MISMATCH  seq {mismatch['seq']} key {mismatch['access_key_id']}: {mismatch['problem']}")
        verdict = "COMPLETE" if self.complete else "GAPS"
        lines.append(f"{verdict}: {len(self.matched)} matched, {len(self.unlogged)} unlogged session(s), "
                     f"{len(self.missing)} issued entr{'y' if len(self.missing) == 1 else 'ies'} missing from "
                     f"CloudTrail, {len(self.mismatches)} mismatch(es); {len(self.failed_calls)} failed "
                     f"AssumeRole call(s) (no session)")
        return "\n".join(lines)


def _disagreements(session: LoggedSession, call: AssumeRoleCall) -> list[str]:
    problems = []
    checks = (("SourceIdentity", session.source_identity, call.source_identity),
              ("session name", session.session_name, call.session_name),
              (f"tag {TAG_REQUEST}", session.request_id, call.tags.get(TAG_REQUEST)))
    for label, expected, seen in checks:
        if expected is not None and seen != expected:
            problems.append(f"{label} is {seen!r} in CloudTrail, {expected!r} by the log")
    return problems


def reconcile(*, entries: Sequence[Mapping[str, Any]], trail: TrailRecords, since: datetime, until: datetime,
              is_target_role: Callable[[str], bool], target_roles: Sequence[str] = ()) -> Reconciliation:
    if since >= until:
        raise InvalidInput("the window is empty: --since must be before --until", code="invalid_time", field="since")
    first_seq = min((int(e.get("seq") or 0) for e in entries), default=1)
    first_time = min((parse_entry_time(e.get("time")) for e in entries), default=None)
    if first_seq > 1 and first_time is not None and first_time > since:
        # NOTE: a partial export cannot vouch for sessions before its first entry: refuse, do not guess.
        raise InvalidInput(f"the log export starts at seq {first_seq} ({iso(first_time)}), after the window's "
                           f"start {iso(since)}: export from earlier, or reconcile from {iso(first_time)}",
                           code="log_export_too_short", field="since")
    result = Reconciliation(since=since, until=until, target_roles=tuple(target_roles), trail=trail,
                            entries=len(entries))
    sessions = logged_sessions(entries)
    near = [c for c in trail.assume_role
            if since - MATCH_SLACK <= c.time <= until + MATCH_SLACK and is_target_role(c.role_arn)]
    # NOTE: a trail per region writing into one bucket delivers a global-endpoint call once per trail.
    near = list({c.event_id or f"{c.access_key_id}/{c.time}": c for c in near}.values())
    result.failed_calls = [c for c in near if not c.succeeded and since <= c.time <= until]
    calls = [c for c in near if c.succeeded]
    by_key = {c.access_key_id: c for c in calls}
    used: set[str] = set()
    for session in sessions:
        call: AssumeRoleCall | None = None
        if session.kind == EventType.ISSUED:
            call = by_key.get(session.access_key_id) if session.access_key_id else None
        else:
            call = next((c for c in calls if c.event_id not in used and (
                (session.request_id and c.tags.get(TAG_REQUEST) == session.request_id)
                or (session.grant_id and c.tags.get(TAG_GRANT) == session.grant_id)
                or (session.session_name and c.session_name == session.session_name
                    and c.source_identity == session.source_identity))), None)
        in_window = since <= session.time <= until
        if call is None:
            if in_window and session.kind == EventType.ISSUED:
                result.missing.append(session)
            elif in_window:
                result.orphans_without_session.append(session)
            continue
        used.add(call.event_id or call.access_key_id or "")
        result.matched.append((session, call))
        problems = _disagreements(session, call) if session.kind == EventType.ISSUED else []
        if problems and (in_window or since <= call.time <= until):
            result.mismatches.append({"seq": session.seq, "request_id": session.request_id,
                                      "access_key_id": session.access_key_id, "problem": "; ".join(problems)})
    result.unlogged = [c for c in calls if (c.event_id or c.access_key_id or "") not in used
                       and since <= c.time <= until]
    return result
