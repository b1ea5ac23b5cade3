"""OIDC workload identity: verify a JWT issued by a trusted identity provider.

One :class:`OidcVerifier` per trusted issuer.  The verifier reads the unverified
JOSE header only to *reject* things (algorithm, forbidden headers, token type)
and to pick a key by ``kid`` from the issuer's JWKS, which is fetched from the
configured URL and never from a URL found in the token.  The key then decides
the single algorithm handed to :func:`jwt.decode`.

A valid token says only that its issuer signed it.  An issuer that signs for
many tenants (GitHub Actions, GitLab, a shared Kubernetes cluster) signs for
strangers too, so an issuer is pinned to *its* workloads: ``required_claims``
(exact string claims, e.g. ``repository_owner_id``) and ``principal_pattern``
(a bounded regular expression the principal claim must fully match), checked
by the claim rules of :mod:`broker.identity.claim_rules`; and
``require_registered`` has the authenticator accept only principals of the
broker's directory.  :func:`issuer_warnings` names the issuers pinned by none
of them.

Every failure is an :class:`~broker.errors.Unauthenticated` (401) whose message
never echoes the token; an unreachable JWKS endpoint with no usable cached keys
is an :class:`~broker.errors.IdentityProviderUnavailable` (503).

The package: :mod:`.algorithms` (algorithms, keys, refused headers, limits), :mod:`.config` (one issuer),
:mod:`.jwks` (fetching and caching keys), :mod:`.urls`, :mod:`.verifier`, :mod:`.issuers_file`.
"""

from __future__ import annotations

from broker.identity.oidc.algorithms import (  # noqa: F401 - re-exported
    ASYMMETRIC_ALGORITHMS,
    CLAIM_MISMATCH,
    FORBIDDEN_HEADERS,
    HUMAN_PREFIX,
    JWK_LOADERS,
    KEY_FIT,
    MAX_GROUPS,
    MAX_KID_CHARS,
    MAX_TOKEN_CHARS,
    MIN_RSA_KEY_BITS,
    PREFIX_FORMAT,
    PRIVATE_JWK_MEMBERS,
    SAFE_IDENTIFIER,
    UNSUPPORTED_HEADERS,
    Clock,
    invalid_token,
)
from broker.identity.oidc.config import (  # noqa: F401 - re-exported
    STRANGERS,
    VERIFIED_ANYWAY,
    OidcIssuerConfig,
)
from broker.identity.oidc.issuers_file import (  # noqa: F401 - re-exported
    SHARED_ISSUERS,
    issuer_config,
    issuer_warnings,
    load_issuer_configs,
)
from broker.identity.oidc.jwks import (  # noqa: F401 - re-exported
    HttpxJwksFetcher,
    JwksCache,
    JwksFetcher,
    JwksFetchError,
    JwksKey,
    parse_jwks,
)
from broker.identity.oidc.urls import (  # noqa: F401 - re-exported
    is_loopback,
)
from broker.identity.oidc.verifier import (  # noqa: F401 - re-exported
    ClaimCheck,
    OidcVerifier,
)

__all__ = [
    "Clock",
    "ASYMMETRIC_ALGORITHMS",
    "KEY_FIT",
    "JWK_LOADERS",
    "PRIVATE_JWK_MEMBERS",
    "MIN_RSA_KEY_BITS",
    "FORBIDDEN_HEADERS",
    "UNSUPPORTED_HEADERS",
    "MAX_TOKEN_CHARS",
    "MAX_KID_CHARS",
    "MAX_GROUPS",
    "SAFE_IDENTIFIER",
    "CLAIM_MISMATCH",
    "PREFIX_FORMAT",
    "HUMAN_PREFIX",
    "invalid_token",
    "is_loopback",
    "OidcIssuerConfig",
    "VERIFIED_ANYWAY",
    "STRANGERS",
    "JwksFetchError",
    "JwksFetcher",
    "HttpxJwksFetcher",
    "JwksKey",
    "parse_jwks",
    "JwksCache",
    "ClaimCheck",
    "OidcVerifier",
    "SHARED_ISSUERS",
    "issuer_config",
    "load_issuer_configs",
    "issuer_warnings",
]
