"""What the use cases need from outside, as Protocols.  Adapters implement them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from broker.domain.templates import ScopeTemplate


@dataclass(frozen=True)
class MintOrder:
    """Every AssumeRole field, decided by the broker."""

    role_arn: str
    session_name: str
    policy_json: str
    duration_seconds: int
    source_identity: str
    tags: Sequence[dict[str, str]]
    # Transitive keys are not set: tags must not survive role chaining out of the broker's control.
    transitive_tag_keys: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class MintedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    assumed_role_arn: str
    assumed_role_id: str


class CredentialMinter(Protocol):
    def mint(self, order: MintOrder) -> MintedCredentials: ...


class SessionRevoker(Protocol):
    """Makes AWS refuse sessions: a broker-managed inline deny policy on the target role."""

    def write_deny_policy(self, *, role_arn: str, policy_json: str | None) -> None: ...


class TemplateSource(Protocol):
    def get(self, name: str) -> ScopeTemplate: ...

    def all(self) -> list[ScopeTemplate]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class Notifier(Protocol):
    """Tells humans a request needs them.  Must never raise: failures are the notifier's to log."""

    def notify(self, *, event: str, request: dict[str, Any]) -> None: ...


class NullNotifier:
    def notify(self, *, event: str, request: dict[str, Any]) -> None:
        return None
