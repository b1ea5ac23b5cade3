"""Agent-side commands: ``credential-process``, ``exec``, ``profile``, ``mcp``, ``demo``.

They find the broker and the agent's identity like every command (``broker.cli.connection``: ``--url``,
``--token-file`` / ``--token-command`` / ``--token``, ``--context``, or BROKER_URL / BROKER_TOKEN_FILE /
BROKER_TOKEN_COMMAND / BROKER_TOKEN).  Prefer a token file or command: a ``--token`` lands in shell history,
and ``broker profile`` never writes a literal token into an AWS config file.

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
import time
from collections.abc import Mapping
from typing import Any
from pathlib import Path

from broker.cli import demo
from broker.cli.child_env import DEFAULT_REGION, child_environment, resolve_region
from broker.cli.connection import add_api_options, client_for, resolve
from broker.cli.token_guard import protect_token_from_children
from broker.sdk.client import BrokerClient
from broker.sdk.credential_process import CredentialCache, ScopeCredentials
from broker.sdk.models import IssuedCredentials, PendingRequest
from broker.sdk.errors import BrokerAPIError

EXIT_REFUSED = 1
EXIT_PENDING = 3


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
    add_api_options(parser)


def client_from(args: argparse.Namespace) -> BrokerClient:
    client = client_for(args)
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


def wait_progress(wait_seconds: float, *, clock=time.monotonic, out=sys.stderr):
    """``on_wait`` for ``--wait``: each change of the request, with the time waited and the time left."""
    started = clock()

    def show(pending: PendingRequest) -> None:
        elapsed = clock() - started
        print(f"waiting ({_duration(elapsed)} elapsed, {_duration(max(0.0, wait_seconds - elapsed))} left): "
              f"{pending.message()}", file=out, flush=True)

    return show


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def obtain(args: argparse.Namespace) -> IssuedCredentials | PendingRequest:
    with client_from(args) as client:
        return scope_from(args, client).obtain(wait_seconds=args.wait, on_wait=wait_progress(args.wait))


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
def exec_options_parser() -> argparse.ArgumentParser:
    """Options given after TEMPLATE (argparse's REMAINDER swallows them; they are parsed here)."""
    parser = argparse.ArgumentParser(prog="broker exec TEMPLATE", add_help=False)
    add_scope_options(parser, with_template=False)
    add_exec_options(parser)
    return parser


def add_exec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default=None,
                        help=f"AWS_REGION for the child (default $AWS_REGION, $AWS_DEFAULT_REGION, {DEFAULT_REGION})")
    parser.add_argument("--server", action="store_true",
                        help="give the child a local credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI) "
                             "that refreshes through the broker, instead of static keys")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="default $BROKER_CACHE_DIR or ~/.cache/agent-broker")


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
    if args.server:
        return _exec_with_server(args, command)
    answer = obtain_or_exit_code(args)
    if isinstance(answer, int):
        return answer
    # NOTE: the keys go to the child's environment only; this process's environment is untouched.
    return _call(command, child_environment(answer, region=args.region))


def _call(command: list[str], env: dict[str, str]) -> int:
    try:
        return subprocess.call(command, env=env)
    except OSError as exc:
        print(f"error: cannot run {command[0]!r} ({exc.strerror})", file=sys.stderr)
        return 127


def _exec_with_server(args: argparse.Namespace, command: list[str]) -> int:
    """The child reads credentials from a local endpoint that refreshes them through the broker."""
    from broker.sdk.credential_server import SERVER_REFRESH_MARGIN_SECONDS, CredentialServer

    try:
        with client_from(args) as client:
            scope = scope_from(args, client)
            scope.refresh_margin = SERVER_REFRESH_MARGIN_SECONDS
            first = scope.obtain(wait_seconds=args.wait)  # refused or pending: say so before the child starts
            if isinstance(first, PendingRequest):
                return report_pending(first)
            with CredentialServer(scope.obtain) as server:
                return _call(command, child_environment(None, region=args.region, server=server.environment()))
    except BrokerAPIError as exc:
        return report_error(exc)


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


def _profile_sections(name: str) -> set[str]:
    return {f"profile {name}"} | ({"default"} if name == "default" else set())


def _section_of(raw: str) -> str | None:
    stripped = raw.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        return " ".join(stripped[1:-1].split())
    return None


def profile_exists(config_file: Path, name: str) -> bool:
    if not config_file.exists():
        return False
    targets = _profile_sections(name)
    return any(_section_of(raw) in targets for raw in config_file.read_text().splitlines())


def write_profile(config_file: Path, name: str, line: str, settings: Mapping[str, str] | None = None) -> None:
    """Replace (or add) ``[profile NAME]`` in an AWS config file; other sections stay byte for byte."""
    text = config_file.read_text() if config_file.exists() else ""
    targets = _profile_sections(name)
    kept: list[str] = []
    skipping = False
    for raw in text.splitlines(keepends=True):
        section = _section_of(raw)
        if section is not None:
            skipping = section in targets
        if not skipping:
            kept.append(raw)
    body = "".join(kept)
    if body and not body.endswith("\n"):
        body += "\n"
    if body and not body.endswith("\n\n"):
        body += "\n"
    section = "default" if name == "default" else f"profile {name}"
    extra = "".join(f"{key} = {value}\n" for key, value in (settings or {}).items())
    body += f"[{section}]\ncredential_process = {line}\n{extra}"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)


def _embedded_token_source(args: argparse.Namespace) -> None:
    """Fill ``args.url`` and ``args.token_file`` / ``args.token_command`` from the flags, the environment or the
    context, or refuse.  NOTE: a literal token (--token, BROKER_TOKEN) is never written into an AWS config file."""
    connection = resolve(args)
    if connection.token:
        raise BrokerAPIError("no_token_source", "a profile must say where the broker token comes from: pass "
                             "--token-file FILE or --token-command CMD (a literal token is never written "
                             "into an AWS config file)", 0)
    args.url, args.token = connection.url, None
    args.token_file, args.token_command = connection.token_file, connection.token_command
    if args.token_file:
        args.token_file = str(Path(args.token_file).expanduser().resolve())
    if not (args.token_file or args.token_command):
        raise BrokerAPIError("no_token_source", "a profile must say where the broker token comes from: pass "
                             "--token-file FILE or --token-command CMD", 0)


def _check_parameters(template: Mapping[str, Any], params: Mapping[str, str]) -> None:
    declared = template.get("parameters") or {}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise BrokerAPIError("unknown_parameter", f"template '{template.get('name')}' has no parameter "
                             f"{', '.join(unknown)} (it takes: {', '.join(sorted(declared)) or 'none'})", 0)
    missing = sorted(n for n, spec in declared.items() if n not in params and (spec or {}).get("default") is None)
    if missing:
        raise BrokerAPIError("missing_parameter", f"template '{template.get('name')}' needs "
                             + ", ".join(f"-p {n}=..." for n in missing), 0)


def run_profile(args: argparse.Namespace) -> int:
    if not PROFILE_NAME.match(args.name):
        print(f"error: profile name {args.name!r} must be letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    config_file = Path(args.config_file or os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")
    if profile_exists(config_file, args.name) and not args.force:
        print(f"error [profile_exists]: {config_file} already has [profile {args.name}]; pass --force to replace it",
              file=sys.stderr)
        return 1
    region = resolve_region(args.region)
    endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    try:
        _embedded_token_source(args)
        line = credential_process_line(args)
        with client_from(args) as client:
            # The template must exist, and the parameters fit it, before a profile names them.
            _check_parameters(client.template(args.template), dict(args.params))
    except BrokerAPIError as exc:
        return report_error(exc)
    settings = {"region": region, **({"endpoint_url": endpoint} if endpoint else {})}
    if any(c in value for value in settings.values() for c in "\r\n"):
        return report_error(BrokerAPIError("invalid_input", "profile values must not contain line breaks", 0))
    write_profile(config_file, args.name, line, settings)
    print(f"wrote [profile {args.name}] to {config_file} (broker {args.url}, region {region}"
          + (f", endpoint {endpoint}" if endpoint else "") + ")")
    print(f"  use it: AWS_PROFILE={args.name} aws sts get-caller-identity")
    return 0


# ----------------------------------------------------------------------------- mcp / demo (own modules)
def run_mcp(args: argparse.Namespace) -> int:
    # NOTE: imported here for weight, not for a cycle: the mcp package loads only for `broker mcp`.
    from broker.cli.mcp_server import serve

    return serve(url=args.url, token_file=args.token_file, token_command=args.token_command,
                 cache_dir=args.cache_dir, region=args.region, pass_env=args.pass_env)


def run_demo(args: argparse.Namespace) -> int:
    return demo.run(args)


def register(subparsers) -> None:
    cp = subparsers.add_parser("credential-process", help="print AWS credential_process JSON for a scope (cached)")
    add_scope_options(cp)
    cp.add_argument("--cache-dir", type=Path, default=None, help="default $BROKER_CACHE_DIR or ~/.cache/agent-broker")
    cp.set_defaults(func=run_credential_process)

    ex = subparsers.add_parser("exec", help="run a command with a scope's credentials in its environment only",
                               epilog="example: broker exec s3-read-prefix -p prefix=reports --reason 'bug 42' "
                                      "-- aws s3 ls s3://broker-demo-bucket/reports/\n"
                                      "         broker exec s3-read-prefix -p prefix=reports --reason 'bug 42' "
                                      "--server -- python long_job.py",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scope_options(ex)
    add_exec_options(ex)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    ex.set_defaults(func=run_exec)

    pr = subparsers.add_parser(
        "profile", help="write an ~/.aws/config profile that uses broker credential-process",
        description="Writes [profile NAME] with everything a request needs: the template and its parameters, the "
                    "reason, the broker URL, where the token comes from (a file or a command; never the token "
                    "itself), the region, and AWS_ENDPOINT_URL when set.  The template and its parameters are "
                    "checked with the broker first; an existing profile is replaced only with --force.",
        epilog="example: broker profile s3-read-prefix -p prefix=reports --reason 'bug 42' --name reports "
               "--token-file .broker/tokens/agent-demo")
    add_scope_options(pr, reason_required=True)
    pr.add_argument("--name", required=True, help="profile name")
    pr.add_argument("--region", default=None,
                    help=f"the profile's region (default $AWS_REGION, $AWS_DEFAULT_REGION, {DEFAULT_REGION})")
    pr.add_argument("--endpoint-url", default=None, help="the profile's endpoint_url (default $AWS_ENDPOINT_URL)")
    pr.add_argument("--force", action="store_true", help="replace an existing profile of that name")
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
