"""The environment of a command run with a scope's credentials (``broker exec`` and ``broker mcp``'s
``run_with_scope``): the given base, minus competing AWS identities and the broker token, plus the keys,
their expiry and a region."""

from __future__ import annotations

import os
from collections.abc import Mapping

from broker.sdk.models import IssuedCredentials, iso_time

# Variables a child must not inherit next to broker-issued keys (they would win or confuse the SDKs).
CONFLICTING_AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CREDENTIAL_EXPIRATION",
                             "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
# The broker's own variables: a child runs with AWS keys, not with the agent's broker identity.
BROKER_VARIABLES = ("BROKER_TOKEN", "BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND")
# Static keys the caller may have: with `exec --server` the child must use the endpoint, not these.
STATIC_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
DEFAULT_REGION = "us-east-1"


def resolve_region(region: str | None, base: Mapping[str, str] | None = None) -> str:
    """``--region``, else the caller's AWS_REGION / AWS_DEFAULT_REGION, else us-east-1 (AWS tools need one)."""
    env = os.environ if base is None else base
    return region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def child_environment(issued: IssuedCredentials | None, base: Mapping[str, str] | None = None,
                      region: str | None = None, *, server: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the caller's, minus competing AWS identities and the broker token, plus the
    keys and their expiry (or, with ``server``, the local credentials endpoint and no keys), and a region."""
    base = os.environ if base is None else base
    dropped = CONFLICTING_AWS_VARIABLES + BROKER_VARIABLES + (STATIC_KEY_VARIABLES if server is not None else ())
    env = {k: v for k, v in base.items() if k not in dropped}
    if server is not None:
        env.update(server)
    if issued is not None:
        env.update(issued.as_environment())
        env["AWS_CREDENTIAL_EXPIRATION"] = iso_time(issued.expiration)
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = resolve_region(region, base)
    # AWS_ENDPOINT_URL (e.g. the dev broker's fake AWS) passes through unchanged.
    return env
