"""What the broker knows about IAM actions: access level, resource types, risk.

The knowledge itself comes from outside (an offline copy of AWS's service
authorization reference, see :mod:`broker.aws.action_database`) through the
:class:`ActionKnowledge` protocol.  This module holds the value types and the
*classification* the guardrails and the blast radius rely on: which actions
destroy things and which change who can do what.  The classification is data
(tables with a reason for each row), checked by one function.

Action names are case-insensitive in IAM: lookups normalise to lower case, and
:class:`ActionInfo` carries AWS's spelling for display.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class AccessLevel(StrEnum):
    """AWS's access levels, in the order a reviewer should read them (most dangerous last)."""

    LIST = "List"
    READ = "Read"
    TAGGING = "Tagging"
    WRITE = "Write"
    PERMISSIONS_MANAGEMENT = "Permissions management"

    @property
    def read_only(self) -> bool:
        return self in (AccessLevel.LIST, AccessLevel.READ)


class Risk(StrEnum):
    """Why an action needs a human to look before it is granted: the classes of
    :mod:`broker.domain.risk` (which holds their sentences, capabilities and approvals), most
    dangerous first.  The values are part of the finding codes (``undeclared_<value>``)."""

    ORGANIZATION_CONTROL = "organization-control"  # the organization or account itself
    PERMISSION_CHANGING = "permission-changing"    # changes who may do what (policies, roles, grants)
    DEFENSE_EVASION = "defense-evasion"            # audit, detection and logging turned off or redirected
    CODE_EXECUTION = "code-execution"              # code runs as another identity
    CREDENTIAL_EXPOSURE = "credential-exposure"    # secrets and credentials handed out
    RESOURCE_EXPOSURE = "resource-exposure"        # public or cross-account access
    DATA_EXFILTRATION = "data-exfiltration"        # paths that copy data out
    DESTRUCTIVE = "destructive"                    # deletes, terminates, purges, schedules key deletion
    PRODUCTION_TRAFFIC = "production-traffic"      # DNS, load balancers, deployments, scaling, databases


@dataclass(frozen=True)
class ResourceType:
    name: str
    arn_pattern: str          # AWS's pattern, e.g. arn:${Partition}:logs:${Region}:${Account}:log-group:${LogGroupName}


@dataclass(frozen=True)
class ActionInfo:
    """One IAM action as AWS documents it."""

    service: str              # service prefix, lower case ("s3")
    name: str                 # AWS's spelling ("GetObject")
    access_level: AccessLevel
    resource_types: tuple[ResourceType, ...] = ()
    condition_keys: tuple[str, ...] = ()
    description: str = ""

    @property
    def key(self) -> str:
        """``service:Name`` with AWS's spelling."""
        return f"{self.service}:{self.name}"

    @property
    def lower(self) -> str:
        return self.key.lower()

    @property
    def supports_resource_level_permissions(self) -> bool:
        """True when the action can be scoped to resource ARNs (so ``Resource: "*"`` is too wide).

        Resource types listed in :data:`OPTIONAL_RESOURCE_SCOPING` do not count: for those AWS's
        reference lists a resource type that only applies when the caller opts into it.
        """
        return any((self.service, rt.name) not in OPTIONAL_RESOURCE_SCOPING for rt in self.resource_types)


# (service, resource type) pairs that the service authorization reference lists but that do not
# make "Resource: *" wrong, with the reason.  Keep this short and cite why.
OPTIONAL_RESOURCE_SCOPING: dict[tuple[str, str], str] = {
    ("ce", "billingview"): "Cost Explorer queries run against the account's primary billing view unless the "
                           "caller passes a BillingViewArn; AWS documents Resource \"*\" for them",
}


_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*|[a-z0-9]+")


def action_words(name: str) -> str:
    """``DeleteObject`` -> ``delete object``; ``ListDBInstances`` -> ``list db instances``."""
    return " ".join(word.lower() for word in _WORD.findall(name))


@runtime_checkable
class ActionKnowledge(Protocol):
    """What the broker needs to know about IAM actions (an offline database behind it)."""

    @property
    def source(self) -> str:
        """Where the knowledge comes from, with a version (shown in lint output and the log)."""

    def lookup(self, action: str) -> ActionInfo | None:
        """The action named exactly (case-insensitive), or None when AWS documents no such action."""

    def expand(self, pattern: str) -> tuple[ActionInfo, ...]:
        """Every action a pattern such as ``s3:Get*`` matches (case-insensitive); empty if none."""

    def has_service(self, service: str) -> bool:
        """True when the service prefix is known."""

    def services(self) -> tuple[str, ...]:
        """Every known service prefix, lower case, sorted."""


@dataclass(frozen=True)
class StaticActionKnowledge:
    """A small in-memory :class:`ActionKnowledge` built from a list: for tests and fakes."""

    actions: tuple[ActionInfo, ...]
    source: str = "static action table (test fake)"
    _index: dict[str, ActionInfo] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for info in self.actions:
            self._index[info.lower] = info

    def lookup(self, action: str) -> ActionInfo | None:
        return self._index.get(action.lower())

    def expand(self, pattern: str) -> tuple[ActionInfo, ...]:
        regex = action_pattern_regex(pattern)
        return tuple(info for key, info in sorted(self._index.items()) if regex.fullmatch(key))

    def has_service(self, service: str) -> bool:
        return any(info.service == service.lower() for info in self.actions)

    def services(self) -> tuple[str, ...]:
        return tuple(sorted({info.service for info in self.actions}))


def action_pattern_regex(pattern: str) -> re.Pattern[str]:
    """IAM action wildcards: ``*`` any run, ``?`` one character, case-insensitive (match lower-cased keys)."""
    parts = []
    for char in pattern.lower():
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def services_of(actions: Iterable[str]) -> set[str]:
    return {action.split(":", 1)[0].lower() for action in actions if ":" in action}
