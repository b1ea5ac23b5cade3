"""Which AWS account is which environment, and which roles the broker may hand out.

A template's ``environment`` is a label its author writes; the account its role lives in is a
fact.  The broker's configuration names every target account's environment
(``BROKER_ACCOUNTS`` / ``BROKER_ACCOUNTS_FILE``), and the guardrails refuse a template whose
role's account is unnamed or is another environment: a ``dev`` template cannot reach the
production account and skip its co-signers.  The role-name prefix of the roles meant to be
handed out (``BROKER_TARGET_ROLE_PREFIX``, CloudFormation's ``TargetRolePrefix``) lives here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.domain.templates import Environment
from broker.errors import InvalidInput

DEFAULT_TARGET_ROLE_PREFIX = "broker-target-"
ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
# IAM role names: letters, digits and +=,.@_- (a prefix is the start of one).
ROLE_PREFIX = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,63}$")


@dataclass(frozen=True)
class TargetAccounts:
    """The accounts configuration.  ``environments`` None means "not configured": only ``broker
    scopes lint`` runs so (it then checks no account); the broker itself always has a mapping, and a
    role in an account it does not name is refused."""

    environments: Mapping[str, Environment] | None = None
    role_prefix: str = DEFAULT_TARGET_ROLE_PREFIX
    source: str = "configuration"

    @property
    def configured(self) -> bool:
        return self.environments is not None

    def environment_of(self, account: str) -> Environment | None:
        return (self.environments or {}).get(account)


def parse_accounts(raw: Any, *, source: str) -> dict[str, Environment]:
    """``{"123456789012": "dev", ...}`` -> account id -> :class:`Environment`; refuses anything else."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping) and set(raw) == {"accounts"}:
        raw = raw["accounts"]
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{source}: accounts must map AWS account ids to environments", code="config_invalid",
                           field="accounts")
    known = ", ".join(e.value for e in Environment)
    accounts: dict[str, Environment] = {}
    for account, environment in raw.items():
        account = str(account)
        if not ACCOUNT_ID.fullmatch(account):
            raise InvalidInput(f"{source}: {account!r} is not a 12-digit AWS account id", code="config_invalid",
                               field="accounts")
        try:
            accounts[account] = Environment(str(environment))
        except ValueError:
            raise InvalidInput(f"{source}: account {account} has environment {environment!r}; known: {known}",
                               code="config_invalid", field="accounts") from None
    return accounts


def target_accounts(*sources: tuple[str, Any], role_prefix: str = DEFAULT_TARGET_ROLE_PREFIX,
                    configured: bool = True) -> TargetAccounts:
    """Merge account mappings from several sources (settings, a file); one account named with two
    environments is a configuration error, not a choice."""
    if not ROLE_PREFIX.fullmatch(role_prefix):
        raise InvalidInput(f"target role prefix {role_prefix!r} is not the start of an IAM role name",
                           code="config_invalid", field="target_role_prefix")
    merged: dict[str, Environment] = {}
    names = []
    for source, raw in sources:
        for account, environment in parse_accounts(raw, source=source).items():
            if merged.get(account, environment) is not environment:
                raise InvalidInput(f"account {account} is {merged[account].value} in one source and "
                                   f"{environment.value} in {source}", code="config_invalid", field="accounts")
            merged[account] = environment
        names.append(source)
    return TargetAccounts(merged if configured else None, role_prefix=role_prefix,
                          source=" + ".join(names) or "empty: set BROKER_ACCOUNTS or BROKER_ACCOUNTS_FILE")
