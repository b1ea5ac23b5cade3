"""Who is calling: principals and their roles."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


# A group that names a person: every principal id of one human carries the same one (README, *Approvers*).
PERSON_GROUP_PREFIX = "person:"


class Role(StrEnum):
    AGENT = "agent"
    APPROVER = "approver"
    REVIEWER = "reviewer"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``id`` is namespaced (``agent:demo``, ``human:alice``).  An agent always acts
    for a human (``acts_for``); humans act for themselves.  ``groups`` are used by
    approval rules (``group:sre``).
    """

    id: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    acts_for: str | None = None
    groups: frozenset[str] = field(default_factory=frozenset)
    # How the caller authenticated ("api_key" or "oidc:<issuer>"), for the log.
    auth_method: str = "api_key"
    # The verified OIDC token's claims (none for an API key) and the directory entry's attributes: what
    # templates' identity-bound values read (broker.domain.caller_identity).  Read-only mappings.
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False, repr=False)
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def has_role(self, role: Role) -> bool:
        return role in self.roles

    @property
    def person(self) -> str:
        """Who this is for the two-person rule: the directory's ``person:NAME`` group linking one person's ids
        (an API-key id and an OIDC subject), or the id itself when none links it."""
        linked = sorted(g for g in self.groups if g.startswith(PERSON_GROUP_PREFIX))
        return linked[0] if linked else self.id

    @property
    def human(self) -> str:
        """The human accountable for this principal's actions."""
        return self.acts_for or self.id

    def matches(self, selector: str) -> bool:
        """Does ``selector`` (a principal id, a glob such as ``agent:*``, or ``group:NAME``) name us?"""
        if selector.startswith("group:"):
            return selector[len("group:"):] in self.groups
        return fnmatch.fnmatchcase(self.id, selector)
