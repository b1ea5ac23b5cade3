"""``broker keys create | list | revoke | rotate | disable | enable``: broker API keys, on the broker's machine.

These commands write the broker's database (``BROKER_DATABASE_URL``) directly, as a local admin: they are how
the first admin key is made, and how a leaked admin key is revoked when no other admin key is left.  Remote
admins do the same over the API (``/v1/keys``, ``/v1/principals/{id}/disable``).  Every change is logged in
the issuance log with the actor ``local:<OS user>``.  A new key is printed once and stored only as a hash.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from datetime import UTC, datetime, timedelta

from broker.cli.output import add_format_option, emit, table
from broker.domain.principals import Role
from broker.domain.times import parse_time
from broker.errors import InvalidInput
from broker.settings import load_settings

_DURATION = re.compile(r"^(?P<n>[1-9][0-9]{0,5})(?P<unit>[smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
KEY_COLUMNS = {
    "KEY ID": lambda k: k["key_id"], "PRINCIPAL": lambda k: k["principal"], "STATUS": lambda k: k["status"],
    "ROLES": lambda k: ",".join(k.get("roles") or []), "CREATED": lambda k: k.get("created_at"),
    "EXPIRES": lambda k: k.get("expires_at") or "never",
}


def duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``3600s``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90d, 12h, 30m or 3600s, got {text!r}")
    return timedelta(seconds=int(match["n"]) * _UNIT_SECONDS[match["unit"]])


def moment(text: str) -> datetime:
    try:
        return parse_time(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time such as 2027-01-31T00:00:00Z, got {text!r}") \
            from exc


def _attribute(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _expiry(args: argparse.Namespace) -> datetime | None:
    if getattr(args, "expires_in", None) is not None:
        return datetime.now(UTC) + args.expires_in
    return getattr(args, "expires_at", None)


def _administration():
    from broker.identity.apikeys import generate_api_key
    from broker.ports import SystemClock
    from broker.storage.engine import Database, build_engine
    from broker.storage.migrations import migrate
    from broker.usecases.api_keys import ApiKeyAdministration, local_admin

    database = Database(build_engine(load_settings().database_url))
    migrate(database.engine)
    return (ApiKeyAdministration(database=database, clock=SystemClock(), generate_key=generate_api_key),
            local_admin(getpass.getuser()))


def create_key(args: argparse.Namespace) -> int:
    if ":" not in args.principal:
        raise InvalidInput("principal ids are namespaced: agent:NAME or human:NAME", code="invalid_principal_id")
    if "agent" in args.role and not args.acts_for:
        raise InvalidInput("an agent must act for a human: pass --acts-for human:NAME", code="missing_acts_for")
    keys, actor = _administration()
    created = keys.create_key(actor=actor, principal_id=args.principal, roles=args.role, groups=args.group,
                              acts_for=args.acts_for, expires_at=_expiry(args), reason=args.reason,
                              attributes=dict(args.attribute) if args.attribute is not None else None)
    if args.format == "json":
        print(json.dumps(created.to_dict(), indent=2, sort_keys=True))
    else:
        print(created.token)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    keys, actor = _administration()
    found = keys.list_keys(actor=actor, principal_id=args.principal)
    emit(args, {"keys": found}, table(KEY_COLUMNS, found, empty="No API keys."))
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    keys, actor = _administration()
    view = keys.revoke_key(actor=actor, key_id=args.key_id, reason=args.reason)
    emit(args, view, f"revoked key {view['key_id']} of {view['principal']}")
    return 0


def rotate_key(args: argparse.Namespace) -> int:
    keys, actor = _administration()
    created = keys.rotate_key(actor=actor, key_id=args.key_id, reason=args.reason, grace_seconds=args.grace,
                              expires_at=_expiry(args))
    if args.format == "json":
        print(json.dumps(created.to_dict(), indent=2, sort_keys=True))
        return 0
    old = created.view["replaces"]
    ends = "now" if old["status"] == "revoked" else f"at {old['expires_at']}"
    print(created.token)
    print(f"new key {created.view['key_id']} for {created.view['principal']}; the old key {old['key_id']} "
          f"ends {ends}", file=sys.stderr)
    return 0


def set_principal(args: argparse.Namespace) -> int:
    keys, actor = _administration()
    change = keys.disable_principal if args.disable else keys.enable_principal
    result = change(actor=actor, principal_id=args.principal, reason=args.reason)
    revoked = result.get("revoked_keys")
    text = f"{result['principal']} is {result['status']}" + (
        f"; revoked keys: {', '.join(revoked)}" if revoked else "") + f"\n{result['note']}"
    emit(args, result, text)
    return 0


def register(subparsers) -> None:
    keys = subparsers.add_parser(
        "keys", help="manage broker API keys and principals (local admin; writes the database)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    create = sub.add_parser("create", help="create a key; the key is printed once and stored only as a hash",
                            epilog="example: broker keys create --principal agent:ci --role agent "
                                   "--acts-for human:alice --expires-in 90d")
    create.add_argument("--principal", required=True, help="principal id, e.g. agent:ci or human:alice")
    create.add_argument("--role", action="append", required=True, choices=[r.value for r in Role],
                        help="a role of the principal (repeatable)")
    create.add_argument("--acts-for", default=None, help="for agents: the human it acts for (human:NAME)")
    create.add_argument("--group", action="append", default=[], help="group membership (for approvers; repeatable)")
    create.add_argument("--attribute", action="append", type=_attribute, default=None, metavar="NAME=VALUE",
                        help="a directory attribute that templates read as attribute:NAME (e.g. workspace=ws-a; "
                             "repeatable; given once or more, it replaces the principal's attributes)")
    _expiry_options(create)
    create.add_argument("--reason", default=None, help="why (recorded in the issuance log)")
    add_format_option(create, help_text="json: the key's record with its token")
    create.set_defaults(func=create_key)

    listing = sub.add_parser("list", help="list keys: id, principal, status (active, expired, revoked, disabled)",
                             epilog="example: broker keys list --principal agent:ci --format json")
    listing.add_argument("--principal", default=None, help="only this principal's keys")
    add_format_option(listing)
    listing.set_defaults(func=list_keys)

    revoke = sub.add_parser("revoke", help="revoke one key (final)",
                            epilog="example: broker keys revoke 0123456789ab --reason 'leaked in a CI log'")
    revoke.add_argument("key_id", help="the 12 hex characters after brk_ (broker keys list shows them)")
    revoke.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
    add_format_option(revoke)
    revoke.set_defaults(func=revoke_key)

    rotate = sub.add_parser("rotate", help="issue a new key for the same principal and end the old one",
                            epilog="example: broker keys rotate 0123456789ab --grace 3600 --reason 'quarterly'")
    rotate.add_argument("key_id", help="the key to replace")
    rotate.add_argument("--grace", type=int, default=0, metavar="SECONDS",
                        help="the old key keeps working this long (default 0: revoked now)")
    _expiry_options(rotate, default_help=" (default: as long as the old key was given)")
    rotate.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
    add_format_option(rotate, help_text="json: the new key's record with its token")
    rotate.set_defaults(func=rotate_key)

    for name, disable, help_text in (
            ("disable", True, "refuse a principal (API key or OIDC) and revoke all its keys"),
            ("enable", False, "accept a disabled principal again (its old keys stay revoked)")):
        parser = sub.add_parser(name, help=help_text,
                                epilog=f"example: broker keys {name} agent:ci --reason 'incident 77'")
        parser.add_argument("principal", help="principal id, e.g. agent:ci")
        parser.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
        add_format_option(parser)
        parser.set_defaults(func=set_principal, disable=disable)


def _expiry_options(parser: argparse.ArgumentParser, default_help: str = " (default: never)") -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--expires-in", type=duration, default=None, metavar="DURATION",
                      help="the key expires after this long: 90d, 12h, 30m, 3600s" + default_help)
    when.add_argument("--expires-at", type=moment, default=None, metavar="TIME",
                      help="the key expires at this ISO 8601 time")
