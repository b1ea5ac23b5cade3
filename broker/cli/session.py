"""``broker login``, ``broker whoami``, ``broker context use | list``, ``broker completion bash | zsh``."""

from __future__ import annotations

import argparse
import sys

from broker.cli.connection import (Connection, add_api_options, client_for, config_path, load_config, resolve,
                                   save_config, store_token, valid_context_name)
from broker.cli.output import add_format_option, emit, table
from broker.sdk.client import checked_url
from broker.sdk.errors import ConfigurationError

CONTEXT_COLUMNS = {
    "": lambda c: "*" if c["current"] else "", "NAME": lambda c: c["name"], "URL": lambda c: c["url"],
    "TOKEN FROM": lambda c: c["token_from"],
}


def _token_from(context: dict) -> str:
    if context.get("token_file"):
        return f"file {context['token_file']}"
    if context.get("token_command"):
        return f"command {context['token_command']}"
    return "the environment"


def _login(args: argparse.Namespace) -> int:
    url = checked_url(args.url)
    name = args.name or "default"
    if args.token:
        raise ConfigurationError("token_on_command_line", "broker login reads a token from standard input "
                                 "(--token-stdin) or names a --token-file or --token-command; not --token")
    source = {"token_file": args.token_file, "token_command": args.token_command}
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise ConfigurationError("missing_token", "no token on standard input")
        source = {"token_file": str(store_token(name, token)), "token_command": None}
    source = {k: v for k, v in source.items() if v}
    if not source:
        raise ConfigurationError("missing_token", "say where the token comes from: --token-file FILE, "
                                 "--token-command CMD, or --token-stdin")
    with Connection(url=url, context=name, **source).client() as client:
        me = client.whoami()  # the context is saved only once the broker accepts it
    config = load_config()
    config["contexts"][name] = {"url": url, **source}
    config["current"] = name
    path = save_config(config)
    emit(args, {"context": name, "url": url, "principal": me}, f"logged in to {url} as {me['id']} "
         f"({', '.join(me['roles']) or 'no roles'}); context '{name}' is current ({path})")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    connection = resolve(args)
    with connection.client() as client:
        me = client.whoami()
    acts = f", acting for {me['acts_for']}" if me.get("acts_for") else ""
    where = f" (context '{connection.context}')" if connection.context else ""
    emit(args, {**me, "url": connection.url, "context": connection.context},
         f"{me['id']} on {connection.url}{where}: roles {', '.join(me['roles']) or 'none'}{acts}; "
         f"signed in with {me['auth_method']}")
    return 0


def _context_use(args: argparse.Namespace) -> int:
    config = load_config()
    if args.name not in config["contexts"]:
        known = ", ".join(sorted(config["contexts"])) or "none (broker login URL makes one)"
        raise ConfigurationError("unknown_context", f"no context named {args.name!r}; known: {known}")
    config["current"] = args.name
    save_config(config)
    print(f"context '{args.name}' is current ({config['contexts'][args.name]['url']})")
    return 0


def _context_list(args: argparse.Namespace) -> int:
    config = load_config()
    rows = [{"name": name, "url": ctx.get("url"), "current": name == config.get("current"),
             "token_from": _token_from(ctx)} for name, ctx in sorted(config["contexts"].items())]
    emit(args, {"current": config.get("current"), "contexts": rows, "file": str(config_path())},
         table(CONTEXT_COLUMNS, rows, empty="No contexts: broker login URL makes one."))
    return 0


def _completion(args: argparse.Namespace) -> int:
    import shtab

    from broker.cli.main import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def register(subparsers) -> None:
    login = subparsers.add_parser(
        "login", help="check a broker URL and token, and save them as a named context",
        epilog="example: broker login http://127.0.0.1:8080 --name dev --token-file .broker/tokens/human-bob\n"
               "         printf '%s\\n' \"$KEY\" | broker login https://broker.example.com --name prod --token-stdin",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    login.add_argument("url", help="the broker, e.g. https://broker.example.com (no /v1)")
    login.add_argument("--name", type=valid_context_name, default=None, help="context name (default 'default')")
    login.add_argument("--token-stdin", action="store_true",
                       help="read the token from standard input and keep it in a 0600 file beside the config")
    login.add_argument("--token", default=None, help=argparse.SUPPRESS)
    login.add_argument("--token-file", default=None, help="file holding the token (re-read on every call)")
    login.add_argument("--token-command", default=None, help="command printing an OIDC token")
    add_format_option(login)
    login.set_defaults(func=_login)

    whoami = subparsers.add_parser("whoami", help="who the broker says you are: principal, roles, the human you "
                                                  "act for", epilog="example: broker whoami --format json")
    add_api_options(whoami)
    add_format_option(whoami)
    whoami.set_defaults(func=_whoami)

    context = subparsers.add_parser("context", help="named broker contexts (URL + token source)")
    sub = context.add_subparsers(dest="context_command", metavar="COMMAND", required=True)
    use = sub.add_parser("use", help="make a context current", epilog="example: broker context use prod")
    use.add_argument("name", type=valid_context_name, help="a context saved by broker login")
    use.set_defaults(func=_context_use)
    listing = sub.add_parser("list", help="list contexts (* marks the current one)",
                             epilog="example: broker context list --format json")
    add_format_option(listing)
    listing.set_defaults(func=_context_list)

    completion = subparsers.add_parser(
        "completion", help="print a shell completion script",
        epilog="example: source <(broker completion bash)      # or, for zsh:\n"
               "         broker completion zsh > \"${fpath[1]}/_broker\"",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    completion.set_defaults(func=_completion)


__all__ = ["client_for", "register"]
