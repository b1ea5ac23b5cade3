"""The records the broker keeps about a credential request: the request, its approvals, its mint intent and
its grant, as the use cases write them (the store's tables hold the same fields: ``broker.storage.models``).

They are plain values (keyword-only, slotted: the issuance path builds several per request).  JSON-valued
fields (``parameters``, ``session_tags``, ``policy``, ``identity``) hold the canonical text the store keeps.
A record is filled in while its unit of work decides (``status``, ``pending_expires_at``, ...) and written
once; rows read back from the store have the same attributes (``broker.ports.StoredRequest`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(kw_only=True, slots=True)
class CredentialRequest:
    """One request for a scope's credentials, with everything that would be minted for it."""

    id: str
    template: str
    template_digest: str
    environment: str
    parameters: str                 # JSON object (validated values)
    role_arn: str
    policy: str                     # the exact rendered session policy
    policy_digest: str
    ttl_seconds: int
    session_tags: str               # JSON list of [key, value]
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
    identity: str | None = None     # JSON object of the caller-bound values, when the template has any


@dataclass(kw_only=True, slots=True)
class Approval:
    """One co-signer's decision on a request (it signs the request's binding digest)."""

    id: int | None = None           # the store assigns it
    request_id: str
    approver: str
    decision: str
    binding_digest: str
    reason: str
    created_at: datetime


@dataclass(kw_only=True, slots=True)
class MintIntent:
    """Written before STS is called: an intent still open at start-up is a session that may exist (an orphan)."""

    grant_id: str
    request_id: str
    role_arn: str
    source_identity: str
    created_at: datetime
    resolved: bool = False


@dataclass(kw_only=True, slots=True)
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


__all__ = ["Approval", "CredentialRequest", "Grant", "MintIntent"]
