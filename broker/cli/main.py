"""Entry point of the ``broker`` command.

Each command group lives in its own module exposing ``register(subparsers)``;
a registered sub-command sets ``func`` (``args -> int`` exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from broker.errors import BrokerError

# Modules that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "broker.cli.server",     # dev, serve
    "broker.cli.keys",       # keys create
    "broker.cli.scopes",     # scopes lint/render/explain/simulate
    "broker.cli.requests",   # requests pending/show, approve, deny, revoke
    "broker.cli.audit",      # audit query/export/verify/report
    "broker.cli.agent",      # credential-process, exec, profile, mcp, demo
    "broker.cli.admin",      # revoke, revoke-all, lockdown, lockdown-lift, lockdown-status
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="Credential broker for AI agents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except BrokerError as exc:
        print(f"error [{exc.code}]: {exc.diagnostics()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
