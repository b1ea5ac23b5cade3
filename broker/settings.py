"""Configuration: environment variables (``BROKER_*``) and/or a YAML/JSON file (``BROKER_CONFIG_FILE``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.domain.documents import DuplicateKey, load_reviewed
from broker.errors import InvalidInput


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BROKER_", extra="forbid")

    database_url: str = "sqlite:///.broker/broker.db"
    scopes_dir: Path = Path("scopes")
    # Which environment each target AWS account is (production / staging / dev): a template's role must
    # be in an account named here, of the template's environment.  BROKER_ACCOUNTS is JSON
    # ({"123456789012": "dev"}); BROKER_ACCOUNTS_FILE a YAML/JSON file of the same mapping.  Both may be
    # used; an account named twice with different environments is refused.
    accounts: dict[str, str] = Field(default_factory=dict)
    accounts_file: Path | None = None
    # Roles the broker may hand out start with this (CloudFormation's TargetRolePrefix).
    target_role_prefix: str = "broker-target-"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    signing_key_file: Path | None = None
    # The log's signing key in AWS KMS instead of a file (key id, ARN, alias name or alias ARN of an
    # ECC_NIST_EDWARDS25519 SIGN_VERIFY key; broker.aws.kms_signing), reached like STS (aws_endpoint_url,
    # aws_region).  Set one of signing_key_file and signing_kms_key_id, not both.
    signing_kms_key_id: str | None = None
    oidc_issuers_file: Path | None = None
    public_url: str = "http://127.0.0.1:8080"
    webhook_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # `broker serve` processes behind the one port (PostgreSQL only; `--workers` overrides it).
    workers: int = 1
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma- or space-separated IP
    # addresses or networks).  Empty (the default): none, the logged source_ip is always the TCP peer's.
    trusted_proxies: str = ""
    max_body_bytes: int = 64 * 1024
    checkpoint_every: int = 100
    # Checkpoint anchors: each signed checkpoint is also put in this S3 bucket (Object Lock, COMPLIANCE mode,
    # retained anchor_retention_days), where the broker cannot rewrite it (broker.aws.anchors).  None: off.
    anchor_bucket: str | None = None
    anchor_prefix: str = "checkpoints/"
    anchor_retention_days: int = 400
    # Add a Server-Timing header (the app's own time and the STS call's) to every response: for
    # measuring the broker's overhead from outside.  Off by default: callers need not see timings.
    server_timing: bool = False
    # The broker's own operational log (stderr): level, and "text" or "json" lines (one object a line, for a
    # log shipper).  It never holds a secret: no key, token or credential is ever logged.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # PostgreSQL session limits (see broker.storage.engine.PostgresSessionLimits); 0 turns one off.  A
    # request waiting longer than db_lock_timeout_ms for a lock answers 503; a session idle inside a
    # transaction for db_idle_in_transaction_timeout_ms (a frozen replica holding the log's lock) is ended.
    db_lock_timeout_ms: int = Field(default=5_000, ge=0)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=15_000, ge=0)
    db_keepalive_seconds: int = Field(default=10, ge=0)
    # SQLite on a filling disk (see broker.storage.sqlite_space): a truncating checkpoint once the WAL passes
    # sqlite_wal_checkpoint_bytes, and sqlite_reserve_bytes kept allocated beside the database so that a
    # checkpoint can finish when the disk is full.  0 turns either off.
    sqlite_wal_checkpoint_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    sqlite_reserve_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # How far this replica's clock may be from the database's (seconds; see broker.runtime.clock_skew): beyond
    # it the replica is not ready, issues nothing (503 clock_skewed) and does not sweep.  0 turns it off.
    max_clock_skew_seconds: float = Field(default=5.0, ge=0)
    # Rate limits (per agent / per template); 0 disables that limit.
    agent_requests_per_minute: int = 60
    template_requests_per_minute: int = 300
    agent_max_live_grants: int = 20
    # Requests one agent may have waiting for co-signers at once (so none can bury another under new ones).
    agent_max_pending_requests: int = 20
    # Refusals of one principal logged one by one per minute (per replica); beyond it they are counted and
    # the count is logged (broker.usecases.refusal_budget).  0 disables the budget (every refusal its own entry); < 0 is refused.
    refusals_per_minute: int = 30
    # Template owners (their Ed25519 public keys) and how many distinct owners must sign a production template
    # (or one whose risk needs co-signing).  Unset: signatures are not required (`broker serve` warns).
    template_owners_file: Path | None = None
    template_signatures_required: int | None = None
    # A development broker: demo principals, in-process AWS endpoint.
    dev_mode: bool = False
    state_dir: Path | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    # Approver pages: sign-in with OpenID Connect (authorization code + PKCE).  Off while the issuer is unset.
    ui_oidc_issuer: str | None = None
    ui_oidc_client_id: str | None = None
    # The client secret is read from this file (never set inline); unset means a public client (PKCE only).
    ui_oidc_client_secret_file: Path | None = None
    ui_oidc_authorization_endpoint: str | None = None
    ui_oidc_token_endpoint: str | None = None
    ui_oidc_jwks_url: str | None = None
    # The ID-token claim naming the approver: principal id = "human:" + its value, never rewritten.
    # The default, preferred_username, is editable at many providers: prefer sub, or a verified email
    # pinned to your domains below (`broker serve` warns about an unpinned preferred_username).
    ui_oidc_principal_claim: str = "preferred_username"
    ui_oidc_scopes: str = "openid profile email"
    # Comma- or space-separated domains; when set, the principal claim must be local@domain (ASCII,
    # domain exactly one of these, any case) with email_verified true.  Empty: no domain pinning.
    ui_oidc_allowed_domains: str = ""
    # Comma- or space-separated name=value pairs (e.g. "hd=example.com" for Google, "tid=<tenant id>"
    # for Entra ID): every named claim must be present and be exactly that string.  Empty: none.
    ui_oidc_required_claims: str = ""


def trusted_proxy_networks(settings: BrokerSettings) -> list[str]:
    """``trusted_proxies`` as networks (an address is its /32 or /128); ``config_invalid`` for anything else
    (host names, ports, ``*``: write the networks out, e.g. ``0.0.0.0/0`` if that is really meant)."""
    networks = []
    for item in settings.trusted_proxies.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise InvalidInput(f"BROKER_TRUSTED_PROXIES: {item[:60]!r} is not an IP address or network",
                               code="config_invalid", field="trusted_proxies") from None
    return networks


def load_settings(**overrides: Any) -> BrokerSettings:
    """Settings from ``BROKER_CONFIG_FILE`` (if set), then environment, then explicit overrides."""
    file_values: dict[str, Any] = {}
    config_file = os.environ.get("BROKER_CONFIG_FILE")
    if config_file:
        try:
            text = Path(config_file).read_text(encoding="utf-8")
            file_values = load_reviewed(text, json_format=config_file.endswith(".json")) or {}
        except DuplicateKey as exc:
            raise InvalidInput(f"configuration file {config_file}: {exc.problem}", code="config_invalid") from exc
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise InvalidInput(f"configuration file {config_file} cannot be read", code="config_invalid") from exc
    env_values = BrokerSettings().model_dump(exclude_unset=True)
    return BrokerSettings(**{**file_values, **env_values, **overrides})


def accounts_configured(settings: BrokerSettings) -> bool:
    """True when the settings name any account source (lint checks environments only then)."""
    return bool(settings.accounts) or settings.accounts_file is not None


def load_target_accounts(settings: BrokerSettings, *, required: bool = True):
    """The accounts configuration (:class:`broker.domain.accounts.TargetAccounts`) from the settings and
    the accounts file.  ``required=False`` (``broker scopes lint``): nothing configured means "do not
    check accounts"; the broker itself always checks, so an unconfigured broker refuses every role."""
    from broker.domain.accounts import target_accounts

    sources: list[tuple[str, Any]] = []
    if settings.accounts:
        # NOTE: pydantic decodes BROKER_ACCOUNTS keeping the last of an account written twice: read it again.
        raw_environment = os.environ.get("BROKER_ACCOUNTS")
        if raw_environment:
            try:
                load_reviewed(raw_environment, json_format=True)
            except DuplicateKey as exc:
                raise InvalidInput(f"BROKER_ACCOUNTS: {exc.problem}", code="config_invalid",
                                   field="accounts") from exc
            except ValueError:
                pass  # not JSON: the settings read it already, or refused it
        sources.append(("BROKER_ACCOUNTS", settings.accounts))
    if settings.accounts_file is not None:
        try:
            text = settings.accounts_file.read_text(encoding="utf-8")
            # NOTE: an account named twice (production, then dev) must not quietly become the last one.
            raw = load_reviewed(text, json_format=settings.accounts_file.suffix == ".json")
        except DuplicateKey as exc:
            raise InvalidInput(f"accounts file {settings.accounts_file}: {exc.problem}", code="config_invalid",
                               field="accounts_file") from exc
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise InvalidInput(f"accounts file {settings.accounts_file} cannot be read ({exc.__class__.__name__})",
                               code="config_invalid", field="accounts_file") from exc
        sources.append((str(settings.accounts_file), raw))
    return target_accounts(*sources, role_prefix=settings.target_role_prefix,
                           configured=required or bool(sources))
