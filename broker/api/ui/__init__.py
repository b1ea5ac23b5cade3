"""Approvers' web pages, server-rendered, mounted at ``/ui/``.

Sign-in exchanges an approver key (dev mode) for a server-side session; the pending list;
one request with its agent, accountable human, reason, blast radius, exact session policy
and TTL; approve or deny with a reason; sign-out.  Every form carries a per-session CSRF
token; every page is sent with a strict Content-Security-Policy and ``no-store``.
"""

from broker.api.ui.oidc import router as oidc_router
from broker.api.ui.pages import router
from broker.api.ui.review import router as review_router

router.include_router(oidc_router)  # OIDC sign-in: /ui/login/oidc, /ui/oidc/callback
router.include_router(review_router)  # the reviewers' dashboard: /ui/review

__all__ = ["router"]
