"""``broker keys create``: issue an API key for a principal (shown once, stored as a hash)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from broker.domain.principals import Role
from broker.errors import InvalidInput
from broker.settings import load_settings


def register(subparsers) -> None:
    keys = subparsers.add_parser("keys", help="manage broker API keys (local admin; talks to the database)")
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    create = sub.add_parser("create", help="create a key; the key is printed once and stored only as a hash")
    create.add_argument("--principal", required=True, help="principal id, e.g. agent:ci or human:alice")
    create.add_argument("--role", action="append", required=True, choices=[r.value for r in Role])
    create.add_argument("--acts-for", default=None, help="for agents: the human it acts for (human:NAME)")
    create.add_argument("--group", action="append", default=[], help="group membership (for approvers)")
    create.set_defaults(func=create_key)


def create_key(args: argparse.Namespace) -> int:
    from broker.identity.apikeys import generate_api_key
    from broker.storage.engine import Database, build_engine
    from broker.storage.migrations import migrate

    if ":" not in args.principal:
        raise InvalidInput("principal ids are namespaced: agent:NAME or human:NAME", code="invalid_principal_id")
    if "agent" in args.role and not args.acts_for:
        raise InvalidInput("an agent must act for a human: pass --acts-for human:NAME", code="missing_acts_for")
    database = Database(build_engine(load_settings().database_url))
    migrate(database.engine)
    issued = generate_api_key()
    now = datetime.now(UTC)
    with database.transaction() as repo:
        repo.upsert_principal(principal_id=args.principal, roles=args.role, groups=args.group,
                              acts_for=args.acts_for, now=now)
        repo.add_api_key(key_id=issued.key_id, token_hash=issued.token_hash, principal_id=args.principal, now=now)
    print(issued.token)
    return 0
