"""What ``broker scopes simulate`` decides with, as pure functions: the action a request names,
and the request context of one issued session rebuilt from its issuance-log entry.

The context of a real session, from the ``issued`` entry (the log holds no secret and no role id):

==============================  ==============================================================
``aws:SourceIdentity``          :func:`~broker.domain.sts_rules.source_identity_for` (requester)
``aws:PrincipalTag/<key>``      the session tags the broker set (:func:`~broker.domain.sts_rules.session_tags`)
``aws:userid``                  ``<role id>:<session name>``; without ``role_id`` the role id is
                                unknown (:class:`~broker.domain.evaluator.KnownSuffix`)
``aws:TokenIssueTime``          STS's expiration minus the session duration (both logged), i.e.
                                STS's own issue time to the second; else the entry's time
``aws:PrincipalArn``            the role ARN (for a role session AWS gives the role's ARN)
``aws:PrincipalAccount``        the role's account
``aws:PrincipalType``           ``AssumedRole``
``aws:username``                absent (roles have none)
==============================  ==============================================================

Every other key stays unknown unless the caller gives it, so conditions on it are undecidable
rather than guessed.  The template and parameters of the entry are rendered again by the caller;
:func:`session_context` refuses a template whose digest differs from the logged one (the session
tags and policy may have been different), and the caller checks the policy digest.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.domain.actions import ActionKnowledge
from broker.domain.evaluator import KnownSuffix
from broker.domain.events import REVOKING_TYPES, EventType
from broker.domain.revocation import KEY_SOURCE_IDENTITY, KEY_TOKEN_ISSUE_TIME, KEY_USERID, iam_time
from broker.domain.sts_rules import role_session_name, session_tags, source_identity_for
from broker.domain.templates import ScopeTemplate
from broker.domain.times import parse_time
from broker.errors import InvalidInput

PRINCIPAL_TAG = "aws:PrincipalTag/"


# --------------------------------------------------------------------------------------------- actions

@dataclass(frozen=True)
class ActionProblem:
    """Why a simulated request's action cannot be evaluated (``kind``: unknown_action, unknown_service,
    action_pattern), with close names from the action database."""

    kind: str
    message: str
    suggestions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message, "did_you_mean": list(self.suggestions)}


def check_action(action: str, knowledge: ActionKnowledge) -> ActionProblem | None:
    """None when the database knows ``action``; otherwise what is wrong, with "did you mean"."""
    service, sep, name = action.partition(":")
    if any(c in action for c in "*?"):
        return ActionProblem("action_pattern", f"{action!r} is a pattern; a request names one action")
    if not sep or not service or not name:
        return ActionProblem("unknown_action", f"{action!r} is not an action (expected service:Action, "
                                               "e.g. s3:GetObject)")
    if not knowledge.has_service(service):
        return ActionProblem("unknown_service", f"the action database ({knowledge.source}) knows no service "
                                                f"{service!r}")
    if knowledge.lookup(action) is not None:
        return None
    names = {info.name.lower(): info.key for info in knowledge.expand(f"{service}:*")}
    close = difflib.get_close_matches(name.lower(), list(names), n=3, cutoff=0.6)
    suggestions = tuple(names[c] for c in close)
    hint = f"; did you mean {' or '.join(suggestions)}?" if suggestions else ""
    return ActionProblem("unknown_action", f"{action} is not an action of {service} in the action database "
                                           f"({knowledge.source}){hint}", suggestions)


# --------------------------------------------------------------------------------------------- grants

@dataclass(frozen=True)
class IssuedGrant:
    """The facts of one issued session, as its ``issued`` log entry records them."""

    grant_id: str
    request_id: str
    template: str
    template_digest: str
    parameters: Mapping[str, Any]
    policy_digest: str
    requester: str
    on_behalf_of: str | None
    access_key_id: str | None
    issued_at: str                  # the entry's time (the broker recorded the grant)
    expiration: str | None
    ttl_seconds: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The values bound to the caller's identity the session was rendered with (details.identity).
    identity: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], *, notes: tuple[str, ...] = ()) -> "IssuedGrant":
        details = entry.get("details") if isinstance(entry.get("details"), Mapping) else {}
        try:
            ttl = details.get("ttl_seconds")
            return cls(grant_id=_text(entry["grant_id"]), request_id=_text(entry["request_id"]),
                       template=_text(entry["template"]), template_digest=_text(entry["template_digest"]),
                       parameters=dict(entry.get("parameters") or {}), policy_digest=_text(entry["policy_digest"]),
                       requester=_text(details.get("requester") or entry["actor"]),
                       on_behalf_of=details.get("on_behalf_of") or None,
                       access_key_id=entry.get("access_key_id"), issued_at=_text(entry["time"]),
                       expiration=entry.get("expiration"),
                       ttl_seconds=ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None, notes=notes,
                       identity={str(k): str(v) for k, v in (details.get("identity") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("the issued entry of this grant is malformed", code="grant_entry_invalid",
                               field="grant") from exc

    @property
    def token_issue_time(self) -> str:
        """STS's issue time: its expiration minus the duration asked for, else the entry's time."""
        if self.expiration and self.ttl_seconds:
            return iam_time(_parse(self.expiration) - timedelta(seconds=self.ttl_seconds))
        return iam_time(_parse(self.issued_at))


def find_grant(entries: Iterable[Mapping[str, Any]], wanted: str) -> IssuedGrant:
    """The grant whose id (or unique id prefix, or access key id) is ``wanted``, from log entries;
    revocations the entries record for it become notes."""
    wanted = wanted.strip()
    if not wanted:
        raise InvalidInput("name a grant id", code="grant_not_found", field="grant")
    issued: dict[str, Mapping[str, Any]] = {}
    revocations: list[Mapping[str, Any]] = []
    for entry in entries:
        kind = entry.get("type")
        if kind == EventType.ISSUED and isinstance(entry.get("grant_id"), str):
            issued[entry["grant_id"]] = entry
        elif kind in REVOKING_TYPES:
            revocations.append(entry)
    matches = [e for g, e in issued.items() if g == wanted or e.get("access_key_id") == wanted]
    if not matches:
        matches = [e for g, e in issued.items() if g.startswith(wanted)]
    if not matches:
        raise InvalidInput(f"no issued grant {wanted!r} in the log", code="grant_not_found", field="grant")
    if len(matches) > 1:
        raise InvalidInput(f"{wanted!r} names {len(matches)} grants; give more of the id", code="grant_ambiguous",
                           field="grant")
    entry = matches[0]
    grant_id = entry["grant_id"]
    notes = tuple(_revocation_note(r) for r in revocations
                  if r.get("grant_id") == grant_id or grant_id in ((r.get("details") or {}).get("grants_revoked") or []))
    return IssuedGrant.from_entry(entry, notes=notes)


def _revocation_note(entry: Mapping[str, Any]) -> str:
    what = "revoked" if entry.get("type") == EventType.REVOKED else "revoked (revoke-all)"
    return f"the log records this grant {what} at {entry.get('time')} by {entry.get('actor')} (seq {entry.get('seq')})"


@dataclass(frozen=True)
class SessionContext:
    context: dict[str, Any]
    absent: frozenset[str]
    role_arn: str


def session_context(grant: IssuedGrant, template: ScopeTemplate, role_arn: str, *,
                    role_id: str | None = None) -> SessionContext:
    """The request context AWS would see for a call made with this grant's credentials."""
    if template.version_digest != grant.template_digest:
        raise InvalidInput(f"template {template.name!r} changed since this grant was issued (logged "
                           f"{grant.template_digest}, now {template.version_digest}); simulate it with the "
                           "template version it was issued from (--scopes DIR)", code="template_changed",
                           field="grant")
    human = grant.on_behalf_of or grant.requester
    tags = session_tags(request_id=grant.request_id, template=template, agent=grant.requester, human=human,
                        grant_id=grant.grant_id)
    session_name = role_session_name(grant.requester, grant.request_id)
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else None
    context: dict[str, Any] = {
        KEY_SOURCE_IDENTITY: source_identity_for(grant.requester),
        KEY_USERID: f"{role_id}:{session_name}" if role_id else KnownSuffix(":" + session_name),
        KEY_TOKEN_ISSUE_TIME: grant.token_issue_time,
        "aws:PrincipalArn": role_arn,
        "aws:PrincipalType": "AssumedRole",
        **({"aws:PrincipalAccount": account} if account else {}),
    }
    for tag in tags:
        context[PRINCIPAL_TAG + tag["Key"]] = tag["Value"]
    return SessionContext(context=context, absent=frozenset({"aws:username"}), role_arn=role_arn)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _parse(text: str) -> datetime:
    try:
        return parse_time(text)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{text!r} is not a log time", code="grant_entry_invalid", field="grant") from exc
