"""The records the broker keeps: a credential request, its approvals, its mint intent and its grant, a
principal's directory entry and its API keys (the store's tables hold the same fields:
``broker.storage.models``).

They are frozen values (keyword-only, slotted: the issuance path builds several per request), with decoded
values: ``parameters`` and ``identity`` are read-only mappings, ``session_tags`` a tuple of (key, value)
pairs.  Only ``policy`` stays text: it is the exact rendered policy, hashed and bound as it is.  The store
(``broker.storage.repository``) encodes and decodes the JSON the tables keep; a use case changes a record with
:func:`dataclasses.replace` and writes it back through its unit of work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The key under which the store hands back a stored value that does not decode (text edited in the database):
# no template parameter, identity value or tag key is named so, so it never matches what was approved.
UNREADABLE = "(unreadable)"


@dataclass(frozen=True, kw_only=True, slots=True)
class CredentialRequest:
    """One request for a scope's credentials, with everything that would be minted for it."""

    id: str
    template: str
    template_digest: str
    environment: str
    parameters: Mapping[str, Any]             # the validated values
    role_arn: str
    policy: str                               # the exact rendered session policy (text)
    policy_digest: str
    ttl_seconds: int
    session_tags: tuple[tuple[str, str], ...]  # (key, value), in the order STS receives them
    source_identity: str
    session_name: str
    grant_id: str
    binding_digest: str
    requester: str
    acts_for: str | None = None
    reason: str
    source_ip: str | None = None
    status: str
    approvals_required: int = 0
    created_at: datetime
    updated_at: datetime
    pending_expires_at: datetime | None = None
    approved_at: datetime | None = None
    redeem_by: datetime | None = None
    issued_at: datetime | None = None
    decided_reason: str | None = None
    identity: Mapping[str, str] | None = None  # the caller-bound values, when the template has any


@dataclass(frozen=True, kw_only=True, slots=True)
class Approval:
    """One co-signer's decision on a request (it signs the request's binding digest)."""

    id: int | None = None           # the store assigns it
    request_id: str
    approver: str
    decision: str
    binding_digest: str
    reason: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class MintIntent:
    """Written before STS is called: an intent still open at start-up is a session that may exist (an orphan)."""

    grant_id: str
    request_id: str
    role_arn: str
    source_identity: str
    created_at: datetime
    resolved: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Grant:
    """Credentials issued for a request (never the secret parts)."""

    id: str
    request_id: str
    template: str
    agent: str
    acts_for: str | None = None
    role_arn: str
    access_key_id: str
    source_identity: str
    session_name: str
    policy_digest: str
    environment: str
    issued_at: datetime
    expiration: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PrincipalEntry:
    """A principal as the broker's directory stores it, disabled or not (admin views; authentication reads
    :class:`broker.domain.principals.Principal`)."""

    id: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    acts_for: str | None = None
    disabled: bool = False
    created_at: datetime
    # The directory entry's attributes, read by templates as attribute:NAME (None: none).
    attributes: Mapping[str, str] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKey:
    """An API key as stored: its id and hash, never the key itself."""

    key_id: str
    token_hash: str
    principal_id: str
    created_at: datetime
    revoked: bool = False
    expires_at: datetime | None = None   # None: the key never expires
    revoked_at: datetime | None = None
    revoked_by: str | None = None


__all__ = ["UNREADABLE", "ApiKey", "Approval", "CredentialRequest", "Grant", "MintIntent", "PrincipalEntry"]
