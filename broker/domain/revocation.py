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
and a session entry is dropped once a revoke-all on its role covers it (issued before the cutoff,
of the agent or template the revoke-all names), which keeps the policy small.  IAM limits the
*aggregate* size of a role's inline policies (10,240 characters, whitespace not counted: about 255
sessions); if the policy does not fit in the room left, :func:`build_revocation_policy` compacts it
(the redundant ``aws:userid`` list goes first) and otherwise refuses with
:class:`~broker.errors.PolicyTooLarge`.  :func:`fit_revocation_policy` never writes half a list
either: it denies more instead.  When the sessions do not fit, they are replaced by "issued before
now" denies, narrowed to their agents (``aws:SourceIdentity``), else to their templates, else
role-wide: revocation can always deny, at the price of also denying the role's other sessions issued
before that moment (the caller records those as revoked too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.domain.sts_rules import TAG_GRANT, TAG_TEMPLATE
from broker.domain.templates import STS_MAX_DURATION
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
    """One session AWS must refuse: a revoked grant or an orphaned mint.

    ``issued_by`` (its token was issued at or before this), ``source_identity`` and ``template`` say
    which revoke-all covers it; unknown (None), no revoke-all is taken to cover it.
    """

    role_arn: str
    grant_id: str
    session_name: str
    expires_at: datetime          # when its credentials expire (at the latest)
    issued_by: datetime | None = None
    source_identity: str | None = None
    template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"kind": "session", "role_arn": self.role_arn, "grant_id": self.grant_id,
                               "session_name": self.session_name, "expires_at": iam_time(self.expires_at)}
        if self.issued_by is not None:
            raw["issued_by"] = iam_time(self.issued_by)
        raw.update({k: v for k, v in (("source_identity", self.source_identity), ("template", self.template))
                    if v is not None})
        return raw

    def covered_by(self, entry: "RevokeAll") -> bool:
        """Does ``entry`` deny this session already?  (Unknown issue time: never assumed covered.)"""
        if entry.role_arn != self.role_arn or self.issued_by is None:
            return False
        # NOTE: IAM compares aws:TokenIssueTime at second precision and DateLessThan is strict.
        if as_utc(self.issued_by).replace(microsecond=0) >= as_utc(entry.cutoff):
            return False
        narrowed_to = {RevokeScope.ROLE: None, RevokeScope.AGENT: self.source_identity,
                       RevokeScope.TEMPLATE: self.template}[entry.scope]
        return entry.scope is RevokeScope.ROLE or (narrowed_to is not None and narrowed_to == entry.value)


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
            issued_by = raw.get("issued_by")
            return RevokedSession(role_arn=_text(raw["role_arn"]), grant_id=_text(raw["grant_id"]),
                                  session_name=_text(raw["session_name"]), expires_at=_parse(raw["expires_at"]),
                                  issued_by=None if issued_by is None else _parse(issued_by),
                                  source_identity=_optional_text(raw.get("source_identity")),
                                  template=_optional_text(raw.get("template")))
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
    """One revoke-all per (role, scope, value): the latest cutoff covers every earlier one; and no session
    entry that one of them covers already."""
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
    alls = list(merged.values())
    kept = [s for s in sessions.values() if not any(s.covered_by(a) for a in alls)]
    return [*kept, *alls]


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


@dataclass(frozen=True)
class FittedPolicy:
    """What :func:`fit_revocation_policy` decided for one role: the policy, the role's entries as they are to
    be stored, and the revoke-alls that took the place of session entries that did not fit (if any)."""

    policy: RevocationPolicy
    entries: tuple[RevocationEntry, ...]
    fallbacks: tuple[RevokeAll, ...] = ()


def fit_revocation_policy(role_arn: str, entries: Iterable[RevocationEntry], *, now: datetime,
                          room: int = ROLE_INLINE_POLICY_LIMIT,
                          longest_session: timedelta = timedelta(seconds=STS_MAX_DURATION)) -> FittedPolicy:
    """The deny policy for ``role_arn``, always able to deny when a revoke-all fits at all.

    If the role's session entries do not fit, they give way to "issued before now" denies (cutoff
    :func:`revoke_all_cutoff` of ``now``), the narrowest that fits: one per agent (``aws:SourceIdentity``),
    else one per template, else one for the whole role.  Each lives as long as any session it denies may
    (``longest_session`` the role allows after its cutoff): the other sessions it denies are revoked too,
    and stay denied until they expire.  Raises :class:`PolicyTooLarge` only if not even the role-wide deny fits (the
    role's other inline policies leave no room).
    """
    mine = merge_revoke_all(live_entries([e for e in entries if e.role_arn == role_arn], now=now))
    try:
        return FittedPolicy(policy=build_revocation_policy(role_arn, mine, now=now, room=room), entries=tuple(mine))
    except PolicyTooLarge as exc:
        too_large = exc
    sessions = [e for e in mine if isinstance(e, RevokedSession)]
    others = [e for e in mine if not isinstance(e, RevokedSession)]
    cutoff = revoke_all_cutoff(now)
    for scope, key in ((RevokeScope.AGENT, "source_identity"), (RevokeScope.TEMPLATE, "template"),
                       (RevokeScope.ROLE, None)):
        fallbacks = _replacing(sessions, role_arn=role_arn, scope=scope, key=key, cutoff=cutoff,
                               expires_at=cutoff + longest_session)
        if fallbacks is None:
            continue
        kept = merge_revoke_all([*others, *fallbacks])
        try:
            policy = build_revocation_policy(role_arn, kept, now=now, room=room)
        except PolicyTooLarge as exc:
            too_large = exc
            continue
        notes = (f"{len(sessions)} session entries did not fit: every session issued before {iam_time(cutoff)} "
                 f"is denied ({scope.value}-wide)",)
        return FittedPolicy(policy=RevocationPolicy(role_arn=role_arn, document=policy.document,
                                                    sessions=policy.sessions, revoke_all=policy.revoke_all,
                                                    compacted=True, notes=(*policy.notes, *notes)),
                            entries=tuple(kept), fallbacks=tuple(fallbacks))
    raise too_large


def _replacing(sessions: Sequence[RevokedSession], *, role_arn: str, scope: RevokeScope, key: str | None,
               cutoff: datetime, expires_at: datetime) -> list[RevokeAll] | None:
    """Revoke-alls of ``scope`` (one per value of ``key``) that deny every one of ``sessions``, or None if
    some session does not say its value of ``key``."""
    groups: dict[str | None, datetime] = {}
    for session in sessions:
        value = None if key is None else getattr(session, key)
        if key is not None and value is None:
            return None
        groups[value] = max(groups.get(value, expires_at), session.expires_at)
    return [RevokeAll(role_arn=role_arn, scope=scope, value=value, cutoff=cutoff, expires_at=expires)
            for value, expires in sorted(groups.items(), key=lambda item: item[0] or "")]


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




def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _parse(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("expected an ISO 8601 time")
    return parse_time(text)


def iam_time(moment: datetime) -> str:
    """ISO 8601 UTC with a Z, seconds precision (what IAM's Date operators expect)."""
    return iso_seconds(moment)
