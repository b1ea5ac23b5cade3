"""The caller as the templates' identity-bound values see it (issue 23)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.domain.caller_identity import CallerIdentity
from broker.domain.principals import Principal


def caller_identity(principal: Principal) -> CallerIdentity:
    """The plain value rendering reads identity-bound values from: built from the authenticated principal only
    (its id, the human it acts for, its verified token's claims, its directory entry's attributes)."""
    return CallerIdentity(principal=principal.id, human=principal.human, claims=principal.claims,
                          attributes=principal.attributes)


def stored_identity(identity: Mapping[str, Any] | None) -> dict[str, Any]:
    """A request's ``identity`` values as a plain dict (None: the template binds nothing to the caller)."""
    return dict(identity) if identity else {}


__all__ = ["caller_identity", "stored_identity"]
