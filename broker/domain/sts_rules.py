"""STS's own input rules, checked by the broker (moto accepts anything).

Sources: the AssumeRole API reference (RoleSessionName, SourceIdentity, Tags,
DurationSeconds) and "Passing session tags in AWS STS".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from broker.domain.templates import STS_MAX_DURATION, STS_MIN_DURATION, ScopeTemplate
from broker.errors import InvalidInput, InvalidTtl

# [\w+=,.@-]* with 2..64 characters, for both RoleSessionName and SourceIdentity.
SESSION_NAME_CHARS = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
SOURCE_IDENTITY_CHARS = SESSION_NAME_CHARS
# Session tags: at most 50; key 1..128, value 0..256, characters [\p{L}\p{Z}\p{N}_.:/=+\-@].
TAG_CHARS = re.compile(r"^[\w .:/=+\-@]*$")
MAX_SESSION_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
# Tags the broker sets on every session; templates may not override them.
TAG_REQUEST = "broker-request-id"
TAG_TEMPLATE = "broker-template"
TAG_AGENT = "broker-agent"
TAG_HUMAN = "broker-on-behalf-of"
TAG_GRANT = "broker-grant-id"
RESERVED_TAGS = frozenset({TAG_REQUEST, TAG_TEMPLATE, TAG_AGENT, TAG_HUMAN, TAG_GRANT})


def resolve_ttl(template: ScopeTemplate, requested: int | None) -> int:
    """The session duration: the template default, or the requested value within bounds."""
    if requested is None:
        return template.ttl.default
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise InvalidTtl("ttl_seconds must be an integer number of seconds", field="ttl_seconds")
    if requested < STS_MIN_DURATION:
        raise InvalidTtl(f"ttl_seconds must be at least {STS_MIN_DURATION} (STS's minimum)", code="ttl_too_short",
                         field="ttl_seconds")
    if requested > template.ttl.max:
        raise InvalidTtl(f"ttl_seconds {requested} exceeds the template's maximum of {template.ttl.max}",
                         code="ttl_too_long", field="ttl_seconds")
    if requested > min(template.role_max_session, STS_MAX_DURATION):
        raise InvalidTtl("ttl_seconds exceeds the role's maximum session duration", code="ttl_too_long",
                         field="ttl_seconds")
    return requested


# SourceIdentity escaping: every character outside [A-Za-z0-9_+,.@-] becomes "=XX" per UTF-8 byte ("=" is
# the escape character, so it is escaped too).
_SOURCE_IDENTITY_PLAIN = re.compile(r"[A-Za-z0-9_+,.@-]")
SOURCE_IDENTITY_MAX = 64
_DIGEST_CHARS = 16


def source_identity_for(principal_id: str) -> str:
    """SourceIdentity for a principal id, STS-valid for every id, one-to-one up to 64 characters.

    ``agent:demo`` -> ``agent.demo`` (the kind's ':' becomes '.'; kinds are letters only).  Other
    characters STS refuses are escaped as ``=XX`` per UTF-8 byte, so a workload identity such as
    ``agent:repo:acme/app:ref:refs/heads/main`` keeps a readable, unambiguous SourceIdentity.  Past 64
    characters the value is cut and ends in ``=`` + 16 hex characters of the id's SHA-256 (the exact id
    is in the session tags and the issuance log either way).
    """
    kind, colon, name = principal_id.partition(":")
    escaped = "".join(ch if _SOURCE_IDENTITY_PLAIN.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode())
                      for ch in name)
    value = f"{kind}.{escaped}" if colon else escaped
    if len(value) > SOURCE_IDENTITY_MAX:
        digest = hashlib.sha256(principal_id.encode()).hexdigest()[:_DIGEST_CHARS]
        value = f"{value[:SOURCE_IDENTITY_MAX - _DIGEST_CHARS - 1]}={digest}"
    if not SOURCE_IDENTITY_CHARS.fullmatch(value):  # only an id of fewer than two characters gets here
        raise InvalidInput(f"principal id {principal_id!r} cannot be used as an STS SourceIdentity",
                           code="invalid_principal_id")
    return value


def role_session_name(principal_id: str, request_id: str) -> str:
    """``<agent name>-<request id>``, trimmed to 64 characters, always STS-valid."""
    name = re.sub(r"[^\w+=,.@-]", "-", principal_id.split(":", 1)[-1], flags=re.ASCII)
    rid = request_id.replace("-", "")[:24]
    return f"{name[: 64 - len(rid) - 1]}-{rid}"


def session_tags(*, request_id: str, template: ScopeTemplate, agent: str, human: str,
                 grant_id: str, extra: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    tags = {
        TAG_REQUEST: request_id,
        TAG_GRANT: grant_id,
        TAG_TEMPLATE: template.name,
        TAG_AGENT: agent,
        TAG_HUMAN: human,
    }
    for key, value in {**template.session_tags, **(extra or {})}.items():
        if key in RESERVED_TAGS:
            raise InvalidInput(f"session tag {key!r} is reserved for the broker", code="reserved_session_tag")
        tags[key] = value
    check_session_tags(tags)
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def check_session_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_SESSION_TAGS:
        raise InvalidInput(f"at most {MAX_SESSION_TAGS} session tags", code="invalid_session_tags")
    lowered: set[str] = set()
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_TAG_KEY or not TAG_CHARS.fullmatch(key):
            raise InvalidInput(f"session tag key {key!r} is not valid for STS", code="invalid_session_tags")
        if len(value) > MAX_TAG_VALUE or not TAG_CHARS.fullmatch(value):
            raise InvalidInput(f"session tag {key!r} has a value STS would refuse", code="invalid_session_tags")
        # Tag keys are case-insensitive in STS: duplicates differing in case are refused.
        if key.lower() in lowered:
            raise InvalidInput(f"duplicate session tag {key!r}", code="invalid_session_tags")
        lowered.add(key.lower())
