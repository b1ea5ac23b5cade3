"""The issuers file (``BROKER_OIDC_ISSUERS_FILE``): issuers that must be pinned, loading, warnings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from broker.errors import InvalidInput
from broker.identity.oidc.config import OidcIssuerConfig

# ---------------------------------------------------------------------------
# The issuers file
# ---------------------------------------------------------------------------

# Issuers that sign tokens for anyone's workloads, exactly as they write "iss": anyone can run a GitHub
# Actions workflow, a gitlab.com pipeline, a Terraform Cloud run or a Buildkite job, or own a Google
# account, and ask for a token with any audience.  Trusted with nothing pinned, they would make every
# stranger an agent; such an issuers file does not load.

SHARED_ISSUERS: frozenset[str] = frozenset({
    "https://token.actions.githubusercontent.com",
    "https://gitlab.com",
    "https://app.terraform.io",
    "https://agent.buildkite.com",
    "https://accounts.google.com",
    "accounts.google.com",  # Google's ID tokens may carry this scheme-less form of its issuer too
})


def issuer_config(entry: Mapping[str, Any]) -> OidcIssuerConfig:
    """One entry of the issuers file (JSON lists become tuples); invalid entries are a ValueError or TypeError."""
    if not isinstance(entry, Mapping):
        raise ValueError("an issuer is a JSON object")
    config = OidcIssuerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
    if config.issuer.rstrip("/").lower() in SHARED_ISSUERS and not config.pinned:
        raise ValueError(f"{config.issuer!r} signs tokens for every one of its users' workloads; pin it with "
                         "required_claims (e.g. repository_owner_id) and/or principal_pattern, or set "
                         "require_registered: true")
    return config


def load_issuer_configs(path: Path | None) -> list[OidcIssuerConfig]:
    """The issuers of ``BROKER_OIDC_ISSUERS_FILE`` (none without one); an unusable file is ``config_invalid``."""
    if path is None:
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"OIDC issuers file {path} cannot be read", code="config_invalid") from exc
    if not isinstance(entries, list):
        raise InvalidInput(f"OIDC issuers file {path} is not a JSON list of issuers", code="config_invalid")
    try:
        return [issuer_config(entry) for entry in entries]
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"OIDC issuers file {path} holds an invalid issuer: {exc}",
                           code="config_invalid") from exc


def issuer_warnings(configs: Iterable[OidcIssuerConfig]) -> list[str]:
    """What ``broker serve`` should say out loud at start-up: each issuer that accepts unregistered principals
    with neither required_claims nor principal_pattern."""
    return [warning for config in configs for warning in config.weaknesses()]
