"""Who is calling: broker API keys and OIDC workload identity."""

from broker.identity.apikeys import (
    IssuedApiKey,
    generate_api_key,
    hash_api_key,
    parse_api_key,
    verify_api_key_hash,
)
from broker.identity.authenticator import Authenticator
from broker.ports import ApiKeyRecord, ApiKeyStore, PrincipalDirectory
from broker.identity.oidc import (
    HttpxJwksFetcher,
    JwksCache,
    JwksFetcher,
    JwksFetchError,
    OidcIssuerConfig,
    OidcVerifier,
)

__all__ = [
    "ApiKeyRecord",
    "ApiKeyStore",
    "Authenticator",
    "HttpxJwksFetcher",
    "IssuedApiKey",
    "JwksCache",
    "JwksFetchError",
    "JwksFetcher",
    "OidcIssuerConfig",
    "OidcVerifier",
    "PrincipalDirectory",
    "generate_api_key",
    "hash_api_key",
    "parse_api_key",
    "verify_api_key_hash",
]
