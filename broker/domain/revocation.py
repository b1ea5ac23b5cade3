"""The broker-managed revocation deny policy of one target role, as a pure function.

STS credentials cannot be recalled.  What AWS offers instead is an explicit ``Deny`` on the
role the session belongs to: an explicit deny beats every allow, and it applies to sessions
that already exist (IAM User Guide, "Revoking IAM role temporary security credentials").
The broker keeps one inline policy, :data:`POLICY_NAME`, on each target role and rewrites it
from its own record of what is revoked:

* one session (a grant, or an orphaned mint): denied by the ``broker-grant-id`` session tag the
  broker set on ``AssumeRole`` and, belt and braces, by ``aws:userid`` (``role-id:session-name``;
  the role id is the same for every session of the role, so it is matched with ``*``);
* everything issued before a moment (revoke-all): ``DateLessThan aws:TokenIssueTime``, exactly
  as the console's "Revoke active sessions" does, optionally narrowed to one agent
  (``aws:SourceIdentity``) or one template (the ``broker-template`` session tag).

Entries are dropped once every credential they name has expired (plus a clock-skew margin),
which keeps the policy small.  IAM limits the *aggregate* size of a role's inline policies
(10,240 characters, whitespace not counted); if the policy does not fit in the room left, it is
compacted (the redundant ``aws:userid`` list goes first) and otherwise refused with
:class:`~broker.errors.PolicyTooLarge`: the caller must fail closed, never write half a list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.domain.sts_rules import TAG_GRANT, TAG_TEMPLATE
from broker.domain.times import as_utc, iso_seconds, parse_time
from broker.errors import InvalidInput, PolicyTooLarge

POLICY_NAME = "broker-revocations"
# IAM quota: "Role policy size cannot exceed 10,240 characters" (all inline policies of a role together).
ROLE_INLINE_POLICY_LIMIT = 10_240
# Entries outlive their credentials by this much: the broker's and AWS's clocks may disagree.
CLOCK_SKEW_MARGIN = timedelta(minutes=5)

KEY_GRANT_TAG = f"aws:PrincipalTag/{TAG_GRANT}"
KEY_TEMPLATE_TAG = f"aws:PrincipalTag/{TAG_TEMPLATE}"
KEY_SOURCE_IDENTITY = "aws:SourceIdentity"
KEY_USERID = "aws:userid"
KEY_TOKEN_ISSUE_TIME = "aws:TokenIssueTime"


class RevokeScope(StrEnum):
    """What a revoke-all entry covers on its role."""

    ROLE = "role"            # every session of the role issued before the cutoff
    AGENT = "agent"          # ... whose SourceIdentity is the agent's
    TEMPLATE = "template"    # ... whose broker-template tag is the template


# The condition key that narrows a revoke-all entry, per scope (ROLE is not narrowed).
SCOPE_KEYS: Mapping[RevokeScope, str | None] = {
    RevokeScope.ROLE: None,
    RevokeScope.AGENT: KEY_SOURCE_IDENTITY,
    RevokeScope.TEMPLATE: KEY_TEMPLATE_TAG,
}


@dataclass(frozen=True)
class RevokedSession:
    """One session AWS must refuse: a revoked grant or an orphaned mint."""

    role_arn: str
    grant_id: str
    session_name: str
    expires_at: datetime          # when its credentials expire (at the latest)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "session", "role_arn": self.role_arn, "grant_id": self.grant_id,
                "session_name": self.session_name, "expires_at": iam_time(self.expires_at)}


@dataclass(frozen=True)
class RevokeAll:
    """Every session of ``role_arn`` (narrowed by ``scope``/``value``) issued before ``cutoff``."""

    role_arn: str
    scope: RevokeScope
    value: str | None
    cutoff: datetime
    expires_at: datetime          # cutoff + the longest session the role allows

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "issued_before", "role_arn": self.role_arn, "scope": self.scope.value,
                "value": self.value, "cutoff": iam_time(self.cutoff), "expires_at": iam_time(self.expires_at)}


RevocationEntry = RevokedSession | RevokeAll


@dataclass(frozen=True)
class RevocationPolicy:
    """The deny policy for one role (``document`` is None when nothing is revoked any more)."""

    role_arn: str
    document: dict[str, Any] | None
    sessions: int = 0
    revoke_all: int = 0
    compacted: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def json(self) -> str | None:
        return None if self.document is None else policy_json(self.document)

    @property
    def size(self) -> int:
        return 0 if self.document is None else len(policy_json(self.document))


def policy_json(document: Mapping[str, Any]) -> str:
    """Compact JSON: IAM does not count whitespace, and neither do we."""
    return json.dumps(document, separators=(",", ":"), sort_keys=False)


# --------------------------------------------------------------------------- the entry list

def entry_from_dict(raw: Mapping[str, Any]) -> RevocationEntry:
    """Parse a stored entry; anything malformed is an error (never silently dropped)."""
    try:
        kind = raw["kind"]
        if kind == "session":
            return RevokedSession(role_arn=_text(raw["role_arn"]), grant_id=_text(raw["grant_id"]),
                                  session_name=_text(raw["session_name"]), expires_at=_parse(raw["expires_at"]))
        if kind == "issued_before":
            scope = RevokeScope(raw["scope"])
            value = raw.get("value")
            if (SCOPE_KEYS[scope] is None) != (value is None):
                raise ValueError("scope and value disagree")
            return RevokeAll(role_arn=_text(raw["role_arn"]), scope=scope,
                             value=None if value is None else _text(value), cutoff=_parse(raw["cutoff"]),
                             expires_at=_parse(raw["expires_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput("a stored revocation entry is malformed", code="revocation_state_invalid") from exc
    raise InvalidInput("a stored revocation entry has an unknown kind", code="revocation_state_invalid")


def revoke_all_cutoff(now: datetime) -> datetime:
    """The cutoff of a revoke-all made at ``now``: the next whole second after it.  IAM compares
    ``aws:TokenIssueTime`` with second precision, and ``DateLessThan`` is strict, so every session
    issued up to and including ``now``'s second is denied (one issued later in that same second is
    denied too: fail closed)."""
    return as_utc(now).replace(microsecond=0) + timedelta(seconds=1)


def live_entries(entries: Iterable[RevocationEntry], *, now: datetime) -> list[RevocationEntry]:
    """Entries whose credentials may still be in use at ``now`` (expiry plus the skew margin)."""
    return [e for e in entries if as_utc(e.expires_at) + CLOCK_SKEW_MARGIN > now]


def merge_revoke_all(entries: Sequence[RevocationEntry]) -> list[RevocationEntry]:
    """One revoke-all per (role, scope, value): the latest cutoff covers every earlier one."""
    merged: dict[tuple[str, RevokeScope, str | None], RevokeAll] = {}
    sessions: dict[tuple[str, str], RevokedSession] = {}
    for entry in entries:
        if isinstance(entry, RevokedSession):
            known = sessions.get((entry.role_arn, entry.grant_id))
            if known is None or entry.expires_at > known.expires_at:
                sessions[(entry.role_arn, entry.grant_id)] = entry
            continue
        key = (entry.role_arn, entry.scope, entry.value)
        known_all = merged.get(key)
        if known_all is None:
            merged[key] = entry
        else:
            merged[key] = RevokeAll(role_arn=entry.role_arn, scope=entry.scope, value=entry.value,
                                    cutoff=max(entry.cutoff, known_all.cutoff),
                                    expires_at=max(entry.expires_at, known_all.expires_at))
    return [*sessions.values(), *merged.values()]


# --------------------------------------------------------------------------- the policy

def _deny(sid: str, condition: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # NOTE: "Action": "*" and "Resource": "*": a revoked session may do nothing at all.
    return {"Sid": sid, "Effect": "Deny", "Action": "*", "Resource": "*", "Condition": condition}


def _statements(role_arn: str, entries: Sequence[RevocationEntry], *, with_userid: bool) -> list[dict[str, Any]]:
    sessions = sorted({e.grant_id: e for e in entries if isinstance(e, RevokedSession)}.values(),
                      key=lambda e: e.grant_id)
    statements: list[dict[str, Any]] = []
    if sessions:
        statements.append(_deny("BrokerRevokedGrants",
                                 {"StringEquals": {KEY_GRANT_TAG: [s.grant_id for s in sessions]}}))
        if with_userid:
            statements.append(_deny("BrokerRevokedSessions",
                                     {"StringLike": {KEY_USERID: [f"*:{s.session_name}" for s in sessions]}}))
    alls = sorted((e for e in entries if isinstance(e, RevokeAll)),
                  key=lambda e: (e.scope.value, e.value or "", e.cutoff))
    for index, entry in enumerate(alls):
        condition: dict[str, dict[str, Any]] = {"DateLessThan": {KEY_TOKEN_ISSUE_TIME: iam_time(entry.cutoff)}}
        key = SCOPE_KEYS[entry.scope]
        if key is not None:
            condition["StringEquals"] = {key: entry.value}
        statements.append(_deny(f"BrokerRevokeAll{entry.scope.value.capitalize()}{index}", condition))
    return statements


def build_revocation_policy(role_arn: str, entries: Iterable[RevocationEntry], *, now: datetime,
                            room: int = ROLE_INLINE_POLICY_LIMIT) -> RevocationPolicy:
    """The deny policy for ``role_arn`` from the live entries for that role.

    ``room`` is how many characters the role's *other* inline policies leave.  Raises
    :class:`PolicyTooLarge` (code ``revocation_policy_too_large``) if even the compact form
    does not fit: the caller refuses the revocation rather than write an incomplete list.
    """
    if not role_arn.startswith("arn:") or ":role/" not in role_arn:
        raise InvalidInput("revocations apply to IAM role ARNs only", code="invalid_role_arn", field="role_arn")
    mine = merge_revoke_all(live_entries([e for e in entries if e.role_arn == role_arn], now=now))
    sessions = sum(isinstance(e, RevokedSession) for e in mine)
    alls = len(mine) - sessions
    if not mine:
        return RevocationPolicy(role_arn=role_arn, document=None)
    # Compaction ladder, most complete first.  Every rung denies every entry.
    ladder = (
        (True, ()),
        (False, ("aws:userid list dropped to fit; sessions are denied by their broker-grant-id tag",)),
    )
    size = 0
    for with_userid, notes in ladder:
        document = {"Version": "2012-10-17", "Statement": _statements(role_arn, mine, with_userid=with_userid)}
        size = len(policy_json(document))
        if size <= room:
            return RevocationPolicy(role_arn=role_arn, document=document, sessions=sessions, revoke_all=alls,
                                    compacted=bool(notes), notes=notes)
    raise PolicyTooLarge(
        f"the revocation policy for this role needs {size} characters but IAM leaves {max(room, 0)}; "
        "revoke everything on the role instead (broker revoke-all --role)",
        code="revocation_policy_too_large", field="role_arn",
        details={"role_arn": role_arn, "needed": size, "room": max(room, 0), "sessions": sessions})


def session_is_named(document: Mapping[str, Any] | None, *, grant_id: str) -> bool:
    """Does the policy name this grant (by its tag)?  For read-back checks and tests."""
    if not document:
        return False
    for statement in document.get("Statement", []):
        values = statement.get("Condition", {}).get("StringEquals", {}).get(KEY_GRANT_TAG, [])
        if grant_id in ([values] if isinstance(values, str) else values):
            return True
    return False


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ValueError("expected a non-empty string")
    return value




def _parse(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("expected an ISO 8601 time")
    return parse_time(text)


def iam_time(moment: datetime) -> str:
    """ISO 8601 UTC with a Z, seconds precision (what IAM's Date operators expect)."""
    return iso_seconds(moment)
