"""Agent-side commands: ``credential-process``, ``exec``, ``profile``, ``mcp``, ``demo``.

They find the broker through ``--url`` or ``BROKER_URL`` and the agent's identity through
``BROKER_TOKEN`` / ``BROKER_TOKEN_FILE`` / ``BROKER_TOKEN_COMMAND`` (``--token-file`` and
``--token-command`` also work; there is no ``--token`` flag, so a secret never lands in a
command line, a shell history or an AWS config file).

Exit codes: 0 success (``exec``: the child's code), 1 the broker refused or failed,
3 the request waits for human approval (who must approve and the link are on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from broker.cli.token_guard import protect_token_from_children
from broker.sdk.client import BrokerClient, IssuedCredentials, PendingRequest
from broker.sdk.credential_process import CredentialCache, ScopeCredentials
from broker.sdk.errors import BrokerAPIError

EXIT_REFUSED = 1
EXIT_PENDING = 3
# Variables a child must not inherit next to broker-issued keys (they would win or confuse the SDKs).
CONFLICTING_AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CREDENTIAL_EXPIRATION",
                             "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
# The broker's own variables: a child runs with AWS keys, not with the agent's broker identity.
BROKER_VARIABLES = ("BROKER_TOKEN", "BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND")


# ----------------------------------------------------------------------------- shared options
def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="broker URL (env BROKER_URL)")
    parser.add_argument("--token-file", default=None, help="file holding the agent's token (env BROKER_TOKEN_FILE)")
    parser.add_argument("--token-command", default=None,
                        help="command printing an OIDC token (env BROKER_TOKEN_COMMAND)")


def add_scope_options(parser: argparse.ArgumentParser, *, reason_required: bool = False,
                      with_template: bool = True) -> None:
    if with_template:
        parser.add_argument("template", help="scope template name")
    parser.add_argument("-p", "--param", dest="params", action="append", type=key_value, default=[],
                        metavar="KEY=VALUE", help="template parameter (repeatable)")
    parser.add_argument("--reason", required=reason_required, default=None,
                        help="what the credentials are for (recorded in the issuance log)")
    parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (the template bounds it)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for co-signers of a production scope (default: do not wait)")
    add_broker_options(parser)


def client_from(args: argparse.Namespace) -> BrokerClient:
    client = BrokerClient(args.url, token_file=args.token_file, token_command=args.token_command)
    # NOTE: the client holds the token source from here on: the commands `exec` starts must not reach it
    # (not in this process's environment, this process not readable by them: broker.cli.token_guard).
    protect_token_from_children()
    return client


def scope_from(args: argparse.Namespace, client: BrokerClient) -> ScopeCredentials:
    cache_dir = getattr(args, "cache_dir", None)
    return ScopeCredentials(client=client, cache=CredentialCache(cache_dir), template=args.template,
                            params=dict(args.params), reason=args.reason, ttl=args.ttl)


def report_pending(pending: PendingRequest) -> int:
    print(f"waiting for human approval: {pending.message()}", file=sys.stderr)
    print("run the same command again once it is approved (or pass --wait SECONDS)", file=sys.stderr)
    return EXIT_PENDING


def report_error(exc: BrokerAPIError) -> int:
    print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
    return EXIT_REFUSED


def obtain(args: argparse.Namespace) -> IssuedCredentials | PendingRequest:
    with client_from(args) as client:
        return scope_from(args, client).obtain(wait_seconds=args.wait)


def obtain_or_exit_code(args: argparse.Namespace) -> IssuedCredentials | int:
    """Issued credentials, or the exit code after reporting a refusal or a pending approval."""
    try:
        answer = obtain(args)
    except BrokerAPIError as exc:
        return report_error(exc)
    if isinstance(answer, PendingRequest):
        return report_pending(answer)
    return answer


# ----------------------------------------------------------------------------- credential-process
def run_credential_process(args: argparse.Namespace) -> int:
    answer = obtain_or_exit_code(args)
    if isinstance(answer, int):
        return answer
    sys.stdout.write(json.dumps(answer.as_credential_process()) + "\n")
    return 0


# ----------------------------------------------------------------------------- exec
def child_environment(issued: IssuedCredentials, base: Mapping[str, str] | None = None,
                      region: str | None = None) -> dict[str, str]:
    """The child's environment: the caller's, minus competing AWS identities and the broker token, plus the keys."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in CONFLICTING_AWS_VARIABLES and k not in BROKER_VARIABLES}
    env.update(issued.as_environment())
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    # AWS_ENDPOINT_URL (e.g. the dev broker's fake AWS) passes through unchanged.
    return env


def exec_options_parser() -> argparse.ArgumentParser:
    """Options given after TEMPLATE (argparse's REMAINDER swallows them; they are parsed here)."""
    parser = argparse.ArgumentParser(prog="broker exec TEMPLATE", add_help=False)
    add_scope_options(parser, with_template=False)
    parser.add_argument("--region", default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    return parser


def split_exec_command(args: argparse.Namespace) -> list[str]:
    """Parse the options in ``args.command`` up to ``--`` into ``args``; return the command after it."""
    rest = list(args.command)
    if "--" not in rest:
        return []
    cut = rest.index("--")
    head, command = rest[:cut], rest[cut + 1:]
    if head:
        defaults = exec_options_parser().parse_args([])
        parsed = exec_options_parser().parse_args(head)
        for name, value in vars(parsed).items():
            if value != getattr(defaults, name):
                setattr(args, name, value + getattr(args, name) if name == "params" else value)
    return command


def run_exec(args: argparse.Namespace) -> int:
    command = split_exec_command(args)
    if not command:
        print("error: give the command after --, e.g. broker exec TEMPLATE -- aws s3 ls", file=sys.stderr)
        return 2
    answer = obtain_or_exit_code(args)
    if isinstance(answer, int):
        return answer
    try:
        # NOTE: the keys go to the child's environment only; this process's environment is untouched.
        return subprocess.call(command, env=child_environment(answer, region=args.region))
    except OSError as exc:
        print(f"error: cannot run {command[0]!r} ({exc.strerror})", file=sys.stderr)
        return 127


# ----------------------------------------------------------------------------- profile
def credential_process_line(args: argparse.Namespace) -> str:
    """The ``credential_process`` command line (botocore splits it with shlex; every word is quoted)."""
    words = [sys.executable, "-m", "broker.cli.main", "credential-process", args.template]
    for key, value in args.params:
        words += ["-p", f"{key}={value}"]
    for flag, value in (("--reason", args.reason), ("--ttl", args.ttl), ("--url", args.url),
                        ("--token-file", args.token_file), ("--token-command", args.token_command)):
        if value is not None:
            words += [flag, str(value)]
    line = shlex.join(words)
    if any(c in line for c in "\r\n"):
        raise BrokerAPIError("invalid_input", "profile values must not contain line breaks", 0)
    return line


PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def write_profile(config_file: Path, name: str, line: str) -> None:
    """Replace (or add) ``[profile NAME]`` in an AWS config file; other sections stay byte for byte."""
    text = config_file.read_text() if config_file.exists() else ""
    targets = {f"profile {name}"} | ({"default"} if name == "default" else set())
    kept: list[str] = []
    skipping = False
    for raw in text.splitlines(keepends=True):
        stripped = raw.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            skipping = " ".join(stripped[1:-1].split()) in targets
        if not skipping:
            kept.append(raw)
    body = "".join(kept)
    if body and not body.endswith("\n"):
        body += "\n"
    if body and not body.endswith("\n\n"):
        body += "\n"
    section = "default" if name == "default" else f"profile {name}"
    body += f"[{section}]\ncredential_process = {line}\n"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)


def run_profile(args: argparse.Namespace) -> int:
    if not PROFILE_NAME.match(args.name):
        print(f"error: profile name {args.name!r} must be letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    try:
        line = credential_process_line(args)
    except BrokerAPIError as exc:
        return report_error(exc)
    config_file = Path(args.config_file or os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")
    write_profile(config_file, args.name, line)
    print(f"wrote [profile {args.name}] to {config_file}")
    print(f"  use it: AWS_PROFILE={args.name} aws sts get-caller-identity")
    if not (args.url or os.environ.get("BROKER_URL")):
        print("  note: the profile reads BROKER_URL and the token from the environment of each AWS call",
              file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- mcp / demo (own modules)
def run_mcp(args: argparse.Namespace) -> int:
    from broker.cli.mcp_server import serve

    return serve(url=args.url, token_file=args.token_file, token_command=args.token_command,
                 cache_dir=args.cache_dir, region=args.region, pass_env=args.pass_env)


def run_demo(args: argparse.Namespace) -> int:
    from broker.cli.demo import run

    return run(args)


def register(subparsers) -> None:
    cp = subparsers.add_parser("credential-process", help="print AWS credential_process JSON for a scope (cached)")
    add_scope_options(cp)
    cp.add_argument("--cache-dir", type=Path, default=None, help="default $BROKER_CACHE_DIR or ~/.cache/agent-broker")
    cp.set_defaults(func=run_credential_process)

    ex = subparsers.add_parser("exec", help="run a command with a scope's credentials in its environment only")
    add_scope_options(ex)
    ex.add_argument("--region", default=None)
    ex.add_argument("--cache-dir", type=Path, default=None)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    ex.set_defaults(func=run_exec)

    pr = subparsers.add_parser("profile", help="write an ~/.aws/config profile that uses broker credential-process")
    add_scope_options(pr)
    pr.add_argument("--name", required=True, help="profile name")
    pr.add_argument("--config-file", default=None, help="default $AWS_CONFIG_FILE or ~/.aws/config")
    pr.set_defaults(func=run_profile)

    mcp = subparsers.add_parser("mcp", help="Model Context Protocol server (stdio) for coding agents")
    add_broker_options(mcp)
    mcp.add_argument("--cache-dir", type=Path, default=None)
    mcp.add_argument("--region", default=None,
                     help="AWS_REGION for run_with_scope's commands (default $AWS_REGION, $AWS_DEFAULT_REGION, "
                          "us-east-1)")
    mcp.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                     help="a host variable run_with_scope's commands may see (repeatable; by default only PATH, "
                          "HOME, locale, proxy and AWS endpoint/region settings)")
    mcp.set_defaults(func=run_mcp)

    demo = subparsers.add_parser("demo", help="replay the seed incident against a dev broker, step by step")
    demo.add_argument("--deny", action="store_true", help="one approver says 'absolutely not'")
    demo.add_argument("--keys", type=Path, default=None,
                      help="dev-keys.json of a running broker at BROKER_URL (default: start `broker dev`)")
    demo.add_argument("--url", default=None, help="a running dev broker (env BROKER_URL; needs --keys)")
    demo.add_argument("--aws-endpoint", default=None, help="its fake AWS (env AWS_ENDPOINT_URL)")
    demo.add_argument("--scopes", type=Path, default=None, help="templates for the started broker (default ./scopes)")
    demo.set_defaults(func=run_demo)
