"""Entry point of the ``broker`` command.

Each command group lives in its own module exposing ``register(subparsers)``;
a registered sub-command sets ``func`` (``args -> int`` exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from broker.errors import BrokerError
from broker.sdk.errors import BrokerAPIError

# Modules that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "broker.cli.server",     # dev, serve
    "broker.cli.keys",       # keys create
    "broker.cli.scopes",     # scopes lint/render/explain/simulate
    "broker.cli.requests",   # requests pending/show, approve, deny, revoke
    "broker.cli.audit",      # audit query/export/verify/report
    "broker.cli.agent",      # credential-process, exec, profile, mcp, demo
    "broker.cli.admin",      # revoke, revoke-all, lockdown, lockdown-lift, lockdown-status
    "broker.cli.session",    # login, whoami, context, completion
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("agent-credential-broker")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
        return "unknown"


# An example for every command whose module gives none (shown at the end of `broker COMMAND --help`).
EXAMPLES = {
    "dev": "broker dev --port 8080 --state-dir .broker",
    "serve": "BROKER_CONFIG_FILE=/etc/broker/broker.env broker serve --port 8080",
    "migrate": "BROKER_DATABASE_URL=postgresql+psycopg://broker@db/broker broker migrate",
    "scopes lint": "broker scopes lint scopes/ --format json",
    "scopes render": "broker scopes render s3-read-prefix -p prefix=reports",
    "scopes explain": "broker scopes explain prod-stack-recreate -p stack_name=cost-explorer-api",
    "scopes simulate": "broker scopes simulate s3-read-prefix -p prefix=reports --action s3:GetObject "
                       "--resource arn:aws:s3:::broker-demo-bucket/reports/a.csv",
    "audit query": "broker audit query --agent agent:demo --type issued --format json",
    "audit export": "broker audit export > log.ndjson",
    "audit verify": "broker audit verify log.ndjson --public-key .broker/log-public-key.pem",
    "audit report": "broker audit report --since 7d",
    "audit reconcile": "broker audit reconcile --cloudtrail trail/ --log log.jsonl --public-key "
                       ".broker/log-public-key.pem --since 48h --until 30m",
    "scopes diff": "broker scopes diff main:scopes scopes/ --format json      # or two folders, or two files",
    "scopes sign": "broker scopes sign scopes/ecs-update-service-prod.yaml --key alice.pem --owner alice",
    "scopes usage": "broker scopes usage s3-read-prefix --cloudtrail trail/ --log log.jsonl --suggest tight.yaml",
    "credential-process": "broker credential-process s3-read-prefix -p prefix=reports --reason 'bug 42'",
    "mcp": "broker mcp --token-file .broker/tokens/agent-demo",
    "demo": "broker demo            # starts its own dev broker; or --url/--keys/--aws-endpoint of a running one",
}
# Help for options whose module gives none, by option string.
OPTION_HELP = {
    "--format": "output format (default text)", "-p": "template parameter KEY=VALUE (repeatable)",
    "--port": "TCP port to listen on", "--host": "address to listen on", "--scopes": "folder of scope templates",
    "--state-dir": "folder for the dev database, keys and log signing key", "--agent": "only this agent",
    "--human": "only this human (acts_for)", "--template": "only this template", "--type": "only this entry type",
    "--request-id": "only this request", "--access-key-id": "only this AWS access key id",
    "--after-seq": "entries after this sequence number", "--limit": "at most this many entries",
    "--cache-dir": "default $BROKER_CACHE_DIR or ~/.cache/agent-broker",
}


def _complete_help(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Every command gets an example and every option a help line (from the tables above where missing)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _complete_help(sub, (*path, name))
        elif action.help is None and action.option_strings:
            action.help = next((OPTION_HELP[o] for o in action.option_strings if o in OPTION_HELP), None)
    leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    example = EXAMPLES.get(" ".join(path))
    if leaf and example and "example" not in (parser.epilog or ""):
        parser.epilog = ((parser.epilog or "") + "\n\nexample: " + example).strip()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker", description="Credential broker for AI agents.",
        epilog="start here: broker dev (a development broker), then broker COMMAND --help. "
               "Commands that call the broker take --url/--token/--token-file/--token-command/--context.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _complete_help(parser)
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
    except BrokerAPIError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
