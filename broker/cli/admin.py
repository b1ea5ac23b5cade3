"""``broker revoke``, ``revoke-all``, ``lockdown``, ``lockdown-lift``, ``lockdown-status``: the kill switch.

HTTP calls to the broker through the SDK's client (the connection options of ``broker.cli.connection``); an
API error is shown as ``error [code]: message`` with exit code 1.  Answers print as the API's JSON (``--format
json``, the default: scripts read it), or as readable lines and tables with ``--format text``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.audit import render_report
from broker.cli.connection import add_api_options, client_for
from broker.cli.connection import call_api
from broker.cli.requests import resolve_grant_id
from broker.errors import InvalidInput, NotFound


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return call_api(args, method, path, body)


def _show(args: argparse.Namespace, payload: Any) -> int:
    if getattr(args, "format", "json") == "text":
        print(render_report(payload))
    else:
        print(json.dumps(payload, indent=2, sort_keys=True))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if bool(args.grant_id) == bool(args.access_key_id):
        raise InvalidInput("give a GRANT_ID or --access-key-id (one of them)", code="invalid_revoke_target")
    if args.access_key_id:
        with client_for(args) as client:
            found = client.grants(access_key_id=args.access_key_id, include_expired=True)
        if not found:
            raise NotFound(f"no grant you can see has the access key id {args.access_key_id}",
                           code="grant_not_found", field="access_key_id")
        grant_id = found[-1]["id"]
    else:
        grant_id = resolve_grant_id(args, args.grant_id)
    return _show(args, _call(args, "POST", f"/v1/grants/{grant_id}/revoke", {"reason": args.reason}))


def _revoke_all(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, "agent": args.agent, "template": args.template, "role_arn": args.role}
    return _show(args, _call(args, "POST", "/v1/revocations", {k: v for k, v in body.items() if v is not None}))


def _lockdown(args: argparse.Namespace) -> int:
    return _show(args, _call(args, "POST", "/v1/lockdown", {"environment": args.environment, "reason": args.reason}))


def _lift(args: argparse.Namespace) -> int:
    result = _call(args, "POST", f"/v1/lockdown/{args.environment}/lift", {"reason": args.reason})
    _show(args, result)
    if result.get("status") == "lift_requested":
        print("lift requested: a second admin must run the same command to confirm")
    return 0


def _status(args: argparse.Namespace) -> int:
    return _show(args, _call(args, "GET", "/v1/lockdown"))


def _api_options(parser: argparse.ArgumentParser) -> None:
    add_api_options(parser)
    parser.add_argument("--format", choices=("json", "text"), default="json",
                        help="output format (default json: the API's answer; text: readable lines and tables)")


def register(subparsers) -> None:
    revoke = subparsers.add_parser("revoke", help="revoke one grant: AWS refuses its session from now on",
                                   epilog="example: broker revoke 3f2a --reason 'agent misbehaved'\n"
                                          "         broker revoke --access-key-id ASIA... --reason 'key in a log'",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    revoke.add_argument("grant_id", nargs="?", default=None,
                        help="grant id, or a unique prefix of at least 4 characters (broker grants list)")
    revoke.add_argument("--access-key-id", default=None, help="the grant of this AWS access key id instead")
    revoke.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
    _api_options(revoke)
    revoke.set_defaults(func=_revoke)

    revoke_all = subparsers.add_parser("revoke-all", help="revoke every session issued so far for an agent, "
                                                          "a template or a role",
                                       epilog="example: broker revoke-all --agent agent:demo --reason 'key leak'")
    target = revoke_all.add_mutually_exclusive_group(required=True)
    target.add_argument("--agent", help="every session of this agent, e.g. agent:demo")
    target.add_argument("--template", help="a scope template name")
    target.add_argument("--role", help="a target role ARN")
    revoke_all.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
    _api_options(revoke_all)
    revoke_all.set_defaults(func=_revoke_all)

    lock = subparsers.add_parser("lockdown", help="refuse every new issuance for an environment (admin)",
                                 epilog="example: broker lockdown production --reason 'incident 77'")
    lock.add_argument("environment", help="dev, staging, production or all")
    lock.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
    _api_options(lock)
    lock.set_defaults(func=_lockdown)

    lift = subparsers.add_parser("lockdown-lift", help="request, or confirm as a second admin, lifting a lockdown",
                                 epilog="example: broker lockdown-lift production --reason 'resolved'")
    lift.add_argument("environment", help="dev, staging, production or all")
    lift.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
    _api_options(lift)
    lift.set_defaults(func=_lift)

    status = subparsers.add_parser("lockdown-status", help="show active lockdowns",
                                   epilog="example: broker lockdown-status")
    _api_options(status)
    status.set_defaults(func=_status)
