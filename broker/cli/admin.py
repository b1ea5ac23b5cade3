"""``broker revoke``, ``revoke-all``, ``lockdown``, ``lockdown-lift``, ``lockdown-status``: the kill switch.

HTTP calls to the broker (``--url`` or ``BROKER_URL``, ``--token`` or ``BROKER_TOKEN``); an
API error is shown as ``error [code]: message`` with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from broker.cli.requests import call_api

DEFAULT_URL = "http://127.0.0.1:8080"


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return call_api(args, method, path, body)


def _show(payload: Any) -> int:
    print(json.dumps(payload, indent=2, sort_keys=True))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    return _show(_call(args, "POST", f"/v1/grants/{args.grant_id}/revoke", {"reason": args.reason}))


def _revoke_all(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, "agent": args.agent, "template": args.template, "role_arn": args.role}
    return _show(_call(args, "POST", "/v1/revocations", {k: v for k, v in body.items() if v is not None}))


def _lockdown(args: argparse.Namespace) -> int:
    return _show(_call(args, "POST", "/v1/lockdown", {"environment": args.environment, "reason": args.reason}))


def _lift(args: argparse.Namespace) -> int:
    result = _call(args, "POST", f"/v1/lockdown/{args.environment}/lift", {"reason": args.reason})
    _show(result)
    if result.get("status") == "lift_requested":
        print("lift requested: a second admin must run the same command to confirm")
    return 0


def _status(args: argparse.Namespace) -> int:
    return _show(_call(args, "GET", "/v1/lockdown"))


def _api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("BROKER_URL", DEFAULT_URL),
                        help="broker URL (env BROKER_URL, default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("BROKER_TOKEN"), help="API token (env BROKER_TOKEN)")


def register(subparsers) -> None:
    revoke = subparsers.add_parser("revoke", help="revoke one grant: AWS refuses its session from now on")
    revoke.add_argument("grant_id")
    revoke.add_argument("--reason", required=True)
    _api_options(revoke)
    revoke.set_defaults(func=_revoke)

    revoke_all = subparsers.add_parser("revoke-all", help="revoke every session issued so far for an agent, "
                                                          "a template or a role")
    target = revoke_all.add_mutually_exclusive_group(required=True)
    target.add_argument("--agent", help="e.g. agent:demo")
    target.add_argument("--template", help="a scope template name")
    target.add_argument("--role", help="a target role ARN")
    revoke_all.add_argument("--reason", required=True)
    _api_options(revoke_all)
    revoke_all.set_defaults(func=_revoke_all)

    lock = subparsers.add_parser("lockdown", help="refuse every new issuance for an environment (admin)")
    lock.add_argument("environment", help="dev, staging, production or all")
    lock.add_argument("--reason", required=True)
    _api_options(lock)
    lock.set_defaults(func=_lockdown)

    lift = subparsers.add_parser("lockdown-lift", help="request, or confirm as a second admin, lifting a lockdown")
    lift.add_argument("environment")
    lift.add_argument("--reason", required=True)
    _api_options(lift)
    lift.set_defaults(func=_lift)

    status = subparsers.add_parser("lockdown-status", help="show active lockdowns")
    _api_options(status)
    status.set_defaults(func=_status)
