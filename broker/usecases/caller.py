"""The caller as the templates' identity-bound values see it (issue 23)."""

from __future__ import annotations

import json
from typing import Any

from broker.domain.caller_identity import CallerIdentity
from broker.domain.principals import Principal


def caller_identity(principal: Principal) -> CallerIdentity:
    """The plain value rendering reads identity-bound values from: built from the authenticated principal only
    (its id, the human it acts for, its verified token's claims, its directory entry's attributes)."""
    return CallerIdentity(principal=principal.id, human=principal.human, claims=principal.claims,
                          attributes=principal.attributes)


def stored_identity(text: str | None) -> dict[str, Any]:
    """A request row's ``identity`` column (NULL: the template binds nothing to the caller)."""
    return json.loads(text) if text else {}


__all__ = ["caller_identity", "stored_identity"]
