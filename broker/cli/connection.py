"""Which broker a command talks to, and as whom: the same options on every command that calls the API.

Precedence, per setting: the command's flags (``--url``, ``--token`` / ``--token-file`` / ``--token-command``),
then the environment (``BROKER_URL``, ``BROKER_TOKEN`` / ``BROKER_TOKEN_FILE`` / ``BROKER_TOKEN_COMMAND``), then the
named context (``--context NAME``, ``BROKER_CONTEXT``, else the current one: ``broker login`` / ``broker context
use``), then ``http://127.0.0.1:8080`` for the URL.

Contexts live in ``$BROKER_CLI_CONFIG`` (default ``$XDG_CONFIG_HOME/agent-broker/config.json``), 0600 in a 0700
directory.  A context names a URL and where its token comes from (a file or a command); a token given to
``broker login`` on standard input is kept in a 0600 file beside the configuration, like ``~/.aws/credentials``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.sdk.client import DEFAULT_URL, BrokerClient, TokenSource, checked_url
from broker.errors import BrokerError
from broker.sdk.errors import BrokerAPIError, ConfigurationError

CONTEXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_KINDS = ("token", "token_file", "token_command")


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """``--url``, the three token options and ``--context``: on every command that calls the broker."""
    group = parser.add_argument_group("broker connection")
    group.add_argument("--url", default=None, help=f"broker URL (env BROKER_URL; else the context; else {DEFAULT_URL})")
    group.add_argument("--token", default=None,
                       help="API key or OIDC token (env BROKER_TOKEN; prefer --token-file: a flag lands in history)")
    group.add_argument("--token-file", default=None, help="file holding the token (env BROKER_TOKEN_FILE)")
    group.add_argument("--token-command", default=None,
                       help="command printing an OIDC token (env BROKER_TOKEN_COMMAND)")
    group.add_argument("--context", default=None, help="a named context from broker login (env BROKER_CONTEXT)")


# ----------------------------------------------------------------------------- the configuration file
def config_path() -> Path:
    override = os.environ.get("BROKER_CLI_CONFIG")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "agent-broker" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {"current": None, "contexts": {}}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError("cli_config_invalid", f"{path} is not readable JSON: fix or remove it") from exc
    if not isinstance(config, dict) or not isinstance(config.get("contexts"), dict):
        raise ConfigurationError("cli_config_invalid", f"{path} has no 'contexts' object: fix or remove it")
    return config


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def save_config(config: dict[str, Any]) -> Path:
    path = config_path()
    _write_private(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def store_token(name: str, token: str) -> Path:
    path = config_path().parent / "tokens" / name
    _write_private(path, token.strip() + "\n")
    return path


# ----------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None = None
    token_file: str | None = None
    token_command: str | None = None
    context: str | None = None

    def bearer(self) -> str | None:
        """The token itself (read from its file or command now), or None when none is configured."""
        if not (self.token or self.token_file or self.token_command):
            return None
        return TokenSource(token=self.token, token_file=self.token_file, token_command=self.token_command).token()

    def client(self) -> BrokerClient:
        if not (self.token or self.token_file or self.token_command):
            raise ConfigurationError("missing_credentials", "no broker token: pass --token-file FILE (or --token, "
                                     "--token-command), set BROKER_TOKEN_FILE / BROKER_TOKEN, or run broker login")
        return BrokerClient(self.url, token=self.token, token_file=self.token_file, token_command=self.token_command)


def _context(name: str | None) -> tuple[str | None, dict[str, Any]]:
    config = load_config()
    chosen = name or os.environ.get("BROKER_CONTEXT") or config.get("current")
    if not chosen:
        return None, {}
    found = config["contexts"].get(chosen)
    if not isinstance(found, dict):
        if name or os.environ.get("BROKER_CONTEXT"):
            known = ", ".join(sorted(config["contexts"])) or "none (broker login URL makes one)"
            raise ConfigurationError("unknown_context", f"no context named {chosen!r}; known: {known}")
        return None, {}
    return chosen, found


def resolve(args: argparse.Namespace) -> Connection:
    """The URL and token source for this command (see the module docstring for the order)."""
    flags = {kind: getattr(args, kind, None) for kind in TOKEN_KINDS}
    environment = {"token": os.environ.get("BROKER_TOKEN"), "token_file": os.environ.get("BROKER_TOKEN_FILE"),
                   "token_command": os.environ.get("BROKER_TOKEN_COMMAND")}
    name, context = _context(getattr(args, "context", None))
    tokens: dict[str, Any] = {}
    for source in (flags, environment, {k: context.get(k) for k in TOKEN_KINDS}):
        given = {k: v for k, v in source.items() if v}
        if given and source is not flags:
            # NOTE: in the environment, BROKER_TOKEN wins over BROKER_TOKEN_FILE over BROKER_TOKEN_COMMAND (as in
            # the SDK); flags that name two sources are refused by the client instead.
            given = dict([next(iter(given.items()))])
        if given:
            tokens = given
            break
    url = getattr(args, "url", None) or os.environ.get("BROKER_URL") or context.get("url") or DEFAULT_URL
    return Connection(url=checked_url(url), context=name, **tokens)


def client_for(args: argparse.Namespace) -> BrokerClient:
    return resolve(args).client()


def call_api(args: argparse.Namespace, method: str, path: str, body: Mapping[str, Any] | None = None,
             params: Mapping[str, Any] | None = None) -> Any:
    """One JSON call through the SDK's client (its one error decoder); an error answer, or none, is raised as a
    ``BrokerError`` with the API's code and status, as the commands report it."""
    try:
        with client_for(args) as client:
            return client.call(method, path, json=body, params=params)
    except BrokerAPIError as exc:
        raise api_error(exc) from exc


def api_error(exc: BrokerAPIError) -> BrokerError:
    """The SDK's decoded API error as the ``BrokerError`` the commands report (its code and HTTP status)."""
    failure = BrokerError(exc.message, code=exc.code)
    failure.status = exc.status
    return failure


def valid_context_name(name: str) -> str:
    if not CONTEXT_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"a context name is letters, digits, '.', '_' or '-', not {name!r}")
    return name


__all__ = ["Connection", "add_api_options", "api_error", "call_api", "client_for", "config_path", "load_config", "resolve", "save_config",
           "store_token"]
