"""Values bound to the caller's identity: who the caller is, as plain values, and what a template makes of it.

A template's ``identity:`` values (:class:`broker.domain.templates.IdentityValueSpec`) fill ``{name}``
placeholders like parameters do, but from the authenticated caller, never from the request: the principal
id, the human it acts for, a claim of its verified OIDC token or an attribute of its directory entry.  The
use case builds a :class:`CallerIdentity` from the authenticated principal and hands it to rendering.

A claim is input too: an identity provider signs what a workload's configuration says (a GitHub repository
name, a Kubernetes namespace).  So every value passes the checks a parameter passes (no wildcard, policy
variable, brace, quote, ARN separator, path traversal, control or non-ASCII character, nothing empty, its
``max_length``, its ``pattern``/``enum``/``map``), and one more: no ``/`` or ``,``, so one value is one path
segment.  A caller without the value is refused, never given a default (``identity_value_missing``); a
value that fails a check is refused (``identity_value_invalid``); sources that disagree are refused
(``identity_value_conflict``).  All three are 403: the caller cannot fix them by changing its request.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from broker.domain.templates import IdentityValueSpec, ScopeTemplate, parameter_pattern
from broker.errors import Forbidden

IDENTITY_MISSING = "identity_value_missing"
IDENTITY_INVALID = "identity_value_invalid"
IDENTITY_CONFLICT = "identity_value_conflict"
# The characters an identity value may have: a parameter's, less the path and list separators.
IDENTITY_VALUE = re.compile(r"^[A-Za-z0-9_.\-+=@]+$")
# Why a value is refused, one row each (checked in this order; the character rule catches the rest).
IDENTITY_WIDENING: tuple[tuple[str, str], ...] = (
    ("*", "a wildcard"), ("?", "a wildcard"), ("$", "a policy variable"), ("{", "a placeholder brace"),
    ("}", "a placeholder brace"), ('"', "a quote"), ("'", "a quote"), ("\\", "a backslash"),
    (":", "an ARN separator"), ("/", "a path separator"), (",", "a list separator"), ("..", "path traversal"),
    ("[", "a bracket"), ("]", "a bracket"),
)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class CallerIdentity:
    """The authenticated caller as plain values: what identity-bound template values are read from."""

    principal: str                                   # agent:demo
    human: str                                       # the accountable human: human:alice (itself for a human)
    # The verified OIDC token's claims (none for an API key) and the directory entry's attributes.
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)
    attributes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)

    def lookup(self, source: str) -> tuple[bool, Any]:
        """``(present, value)`` of one source (``principal``, ``human``, ``claim:a/b``, ``attribute:x``)."""
        if source == "principal":
            return True, _without_kind(self.principal)
        if source == "human":
            return True, _without_kind(self.human)
        kind, _, path = source.partition(":")
        value: Any = self.claims if kind == "claim" else self.attributes
        for part in path.split("/"):
            if not isinstance(value, Mapping) or part not in value:
                return False, None
            value = value[part]
        return value is not None, value


def _without_kind(principal_id: str) -> str:
    """``agent:demo`` -> ``demo``: the kind is the broker's namespace, not the caller's name."""
    kind, colon, name = principal_id.partition(":")
    return name if colon and kind.isalpha() else principal_id


def _refuse(code: str, name: str, message: str) -> Forbidden:
    return Forbidden(f"identity value '{name}' {message}", code=code, field=f"identity.{name}")


def _checked(name: str, spec: IdentityValueSpec, raw: Any) -> str:
    """One identity value, checked like a parameter and more (see the module's docstring)."""
    if not isinstance(raw, str):
        kind = "a list" if isinstance(raw, list | tuple) else type(raw).__name__
        raise _refuse(IDENTITY_INVALID, name, f"must be a string, and the caller's is {kind}")
    if not raw:
        raise _refuse(IDENTITY_INVALID, name, "is empty for this caller")
    if len(raw) > spec.max_length:
        raise _refuse(IDENTITY_INVALID, name, f"is longer than {spec.max_length} characters for this caller")
    for needle, why in IDENTITY_WIDENING:
        if needle in raw:
            raise _refuse(IDENTITY_INVALID, name, f"contains {why} ({needle!r}) for this caller, which could "
                                                  "widen the policy")
    if not IDENTITY_VALUE.fullmatch(raw):
        raise _refuse(IDENTITY_INVALID, name, "contains characters that are not allowed (letters, digits and "
                                              "_.-+=@ only) for this caller")
    if spec.enum is not None and raw not in spec.enum:
        raise _refuse(IDENTITY_INVALID, name, "is not one of the template's values for this caller")
    if spec.pattern is not None and not parameter_pattern(spec.pattern).fullmatch(raw):
        raise _refuse(IDENTITY_INVALID, name, f"does not match the pattern {spec.pattern} for this caller")
    if spec.map is not None:
        if raw not in spec.map:
            raise _refuse(IDENTITY_INVALID, name, "is not one the template maps for this caller")
        return spec.map[raw]
    return raw


def resolve_identity(template: ScopeTemplate, caller: CallerIdentity | None) -> dict[str, str]:
    """Every identity value of ``template`` for ``caller``, checked; raises a 403 ``Forbidden`` otherwise."""
    values: dict[str, str] = {}
    for name, spec in template.identity.items():
        found = [value for present, value in (caller.lookup(s) if caller else (False, None) for s in spec.sources)
                 if present]
        if not found:
            # NOTE: never a default: a caller without the value gets nothing bound to it.
            raise _refuse(IDENTITY_MISSING, name, f"comes from {' or '.join(spec.sources)}, which the caller "
                                                  "does not have")
        checked = [_checked(name, spec, value) for value in found]
        if len(set(checked)) > 1:
            raise _refuse(IDENTITY_CONFLICT, name, f"differs between {' and '.join(spec.sources)} for this caller")
        values[name] = checked[0]
    return values


def identity_session_tags(template: ScopeTemplate, values: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The session tags the identity values add, and the keys of those marked transitive."""
    tags = {spec.session_tag.key: values[name] for name, spec in template.identity.items() if spec.session_tag}
    transitive = tuple(spec.session_tag.key for spec in template.identity.values()
                       if spec.session_tag and spec.session_tag.transitive)
    return tags, transitive


__all__ = ["IDENTITY_CONFLICT", "IDENTITY_INVALID", "IDENTITY_MISSING", "CallerIdentity", "identity_session_tags",
           "resolve_identity"]
