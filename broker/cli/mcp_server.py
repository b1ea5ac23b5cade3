"""``broker mcp``: a Model Context Protocol server (stdio) for coding agents.

Tools: ``list_scopes``, ``request_scope``, ``check_request``, ``run_with_scope``.

No tool result carries credentials.  ``request_scope`` answers with a status; issued credentials go
to the private credential cache (the same one ``broker credential-process`` uses).
``run_with_scope`` runs a command (no shell) with the scope's keys, region and expiry in its
environment and returns the exit code and output, scrubbed of every cached secret access key and
session token and of the broker token, in their plain, URL-, base64- and reversed forms.  A call that
failed (refused, not runnable, a non-zero exit) is answered with MCP's ``isError`` set.

The boundary (README, *Agents and MCP*): the command never gets the agent's broker token.  It is not in
the command's environment (which holds only :data:`HOST_VARIABLES` of the host's, plus ``--pass-env``
names, never the host's whole environment); and this server, once it read the token, removes it from its
own environment and is non-dumpable (``broker.cli.token_guard``), so the command, though it runs as the
same user, can read neither ``/proc/$PPID/environ`` nor the server's memory.  A token *file* or
*command* stays readable or runnable by that user: scrubbing the output is all that covers it.

Scrubbing is best effort, not a boundary: the command runs with the AWS keys in its environment, so a
command that *transforms* them some other way before printing (or sends them elsewhere) defeats it.
The command is as trusted as the agent that chose it; the scope's session policy and short TTL are
what limit the damage.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mcp.types import CallToolResult, TextContent

from broker.cli.child_env import child_environment
from broker.cli.token_guard import protect_token_from_children
from broker.sdk.client import BrokerClient, IssuedCredentials, PendingRequest
from broker.sdk.credential_process import CredentialCache, ScopeCredentials
from broker.sdk.errors import BrokerAPIError

MAX_OUTPUT_CHARS = 64_000
DEFAULT_COMMAND_TIMEOUT = 300
REDACTED = "[redacted by broker]"
# What a command gets of the host's environment (the MCP host's: often an agent holding its own API keys):
# what programs need to run, find their tools and reach AWS, nothing else.  `broker mcp --pass-env NAME` adds.
HOST_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "VIRTUAL_ENV",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE",
    "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_PAGER",
})
HOST_PREFIXES = ("LC_", "AWS_ENDPOINT_URL_")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its URL-encoded form) replaced."""
    for secret in secrets:
        if not secret:
            continue
        encoded = base64.b64encode(secret.encode()).decode()
        forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), secret[::-1],
                 encoded, encoded.rstrip("=")}
        for form in forms:
            text = text.replace(form, REDACTED)
    return text


def pending_status(pending: PendingRequest) -> dict[str, Any]:
    return {"status": pending.status, "request_id": pending.id, "template": pending.template,
            "approvals_required": pending.approvals_required, "approvals_counted": pending.approvals_counted,
            "approvers": list(pending.approvers), "approve_at": pending.page_url, "message": pending.message()}


def issued_status(issued: IssuedCredentials) -> dict[str, Any]:
    # NOTE: the access key id is an identifier (it is in the issuance log), not a secret; nothing else is shown.
    return {"status": "issued", "request_id": issued.request_id, "template": issued.template,
            "access_key_id": issued.access_key_id, "expiration": issued.as_credential_process()["Expiration"],
            "message": "credentials are held outside this conversation; call run_with_scope with the same "
                       "template and parameters to run a command with them"}


def error_status(exc: BrokerAPIError) -> dict[str, Any]:
    return {"status": "error", "code": exc.code, "message": exc.message, **({"field": exc.field} if exc.field else {})}


def failed(answer: Mapping[str, Any]) -> bool:
    """Whether a tool's answer reports a failed call (MCP's ``isError``): an error, or a command that exited
    non-zero (or timed out).  A request waiting for approval is not a failure."""
    return answer.get("status") == "error" or (answer.get("ran") is True and answer.get("exit_code") != 0)


def host_environment(environ: Mapping[str, str], passed: Iterable[str] = ()) -> dict[str, str]:
    """The part of the host's environment a command may see: :data:`HOST_VARIABLES`, ``passed``."""
    allowed = HOST_VARIABLES | set(passed)
    return {k: v for k, v in environ.items() if k in allowed or k.startswith(HOST_PREFIXES)}


class BrokerTools:
    """The tools' behaviour, independent of the MCP plumbing (and testable on its own)."""

    def __init__(self, client: BrokerClient, cache: CredentialCache, *, region: str | None = None,
                 pass_env: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> None:
        self.client, self.cache = client, cache
        self.pass_env = tuple(pass_env)
        self.environ = os.environ if environ is None else environ
        self.region = region

    def command_environment(self, issued: IssuedCredentials) -> dict[str, str]:
        """A command's environment: the allowed host variables, the scope's keys, their expiry and a region."""
        # NOTE: the region is --region, else the host's AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.
        return child_environment(issued, base=host_environment(self.environ, self.pass_env), region=self.region)

    def secrets(self, issued: IssuedCredentials) -> set[str]:
        """What no output may show: this scope's keys, every cached scope's, the broker token(s)."""
        tokens = self.client.tokens.recent() if self.client is not None else ()
        return {*issued.secrets(), *self.cache.all_secrets(), *tokens}

    def _scope(self, template: str, parameters: dict[str, Any] | None, reason: str | None) -> ScopeCredentials:
        return ScopeCredentials(client=self.client, cache=self.cache, template=template,
                                params={str(k): str(v) for k, v in (parameters or {}).items()}, reason=reason)

    def list_scopes(self) -> dict[str, Any]:
        try:
            templates = self.client.templates()
        except BrokerAPIError as exc:
            return error_status(exc)
        scopes = []
        for t in templates:
            parameters = {name: {k: spec.get(k) for k in ("type", "description", "enum", "default")
                                 if spec.get(k) is not None}
                          for name, spec in (t.get("parameters") or {}).items()}
            scopes.append({"name": t.get("name"), "description": t.get("description"),
                           "environment": t.get("environment"), "needs_approval": t.get("needs_approval"),
                           "you_may_request": t.get("you_may_request"), "parameters": parameters})
        return {"scopes": scopes}

    def request_scope(self, template: str, parameters: dict[str, Any] | None, reason: str) -> dict[str, Any]:
        try:
            answer = self._scope(template, parameters, reason).obtain()
        except BrokerAPIError as exc:
            return error_status(exc)
        return pending_status(answer) if isinstance(answer, PendingRequest) else issued_status(answer)

    def check_request(self, request_id: str) -> dict[str, Any]:
        try:
            return pending_status(self.client.get_request(request_id))
        except BrokerAPIError as exc:
            return error_status(exc)

    def run_with_scope(self, template: str, parameters: dict[str, Any] | None, reason: str, command: str,
                       timeout_seconds: int = DEFAULT_COMMAND_TIMEOUT) -> dict[str, Any]:
        try:
            argv = shlex.split(command)
        except ValueError:
            return {"status": "error", "code": "invalid_command", "message": "the command is not valid shell words"}
        if not argv:
            return {"status": "error", "code": "invalid_command", "message": "the command is empty"}
        try:
            answer = self._scope(template, parameters, reason).obtain()
        except BrokerAPIError as exc:
            return error_status(exc)
        if isinstance(answer, PendingRequest):
            return pending_status(answer) | {"ran": False}
        try:
            # NOTE: no shell; the keys live only in the child's environment.
            done = subprocess.run(argv, env=self.command_environment(answer), capture_output=True, text=True,
                                  timeout=max(1, min(int(timeout_seconds), 3600)), check=False, errors="replace")
            exit_code, output = done.returncode, (done.stdout or "") + (done.stderr or "")
        except subprocess.TimeoutExpired as exc:
            exit_code = -1
            output = _text(exc.stdout) + _text(exc.stderr) + f"\n[timed out after {timeout_seconds}s]"
        except OSError as exc:
            return {"status": "error", "code": "command_not_runnable",
                    "message": f"cannot run {argv[0]!r}: {exc.strerror}"}
        # This scope's secrets, every other scope's in the cache (a command could read the cache files), and the
        # broker token (a command could read a token file).
        output = scrub(output, self.secrets(answer))
        truncated = len(output) > MAX_OUTPUT_CHARS
        return {"status": "ran", "ran": True, "exit_code": exit_code, "output": output[-MAX_OUTPUT_CHARS:],
                "truncated": truncated, "request_id": answer.request_id, "access_key_id": answer.access_key_id}


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def tool_result(answer: dict[str, Any]) -> CallToolResult:
    """An MCP result: the answer as JSON text and structured content, ``isError`` when the call failed."""
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(answer))], structured_content=answer,
                          is_error=failed(answer))


def build_server(tools: BrokerTools):
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("agent-broker", log_level="WARNING", instructions=(
        "Short-lived, least-privilege AWS access through the credential broker. list_scopes shows what you may "
        "ask for; request_scope asks (always give a real reason; production scopes wait for two humans); "
        "check_request follows a pending request; run_with_scope runs a command with the scope's credentials. "
        "You never see the credentials themselves."))

    @server.tool()
    def list_scopes() -> CallToolResult:
        """The scope templates: name, description, environment, parameters, whether humans must approve."""
        return tool_result(tools.list_scopes())

    @server.tool()
    def request_scope(template: str, parameters: dict[str, str], reason: str) -> CallToolResult:
        """Ask for a scope with a reason. Answers with a status (issued, or pending with who must approve)."""
        return tool_result(tools.request_scope(template, parameters, reason))

    @server.tool()
    def check_request(request_id: str) -> CallToolResult:
        """The status of a request: pending (approvals so far, who must approve, link), approved, denied, ..."""
        return tool_result(tools.check_request(request_id))

    @server.tool()
    def run_with_scope(template: str, parameters: dict[str, str], reason: str, command: str,
                       timeout_seconds: int = DEFAULT_COMMAND_TIMEOUT) -> CallToolResult:
        """Run a command (no shell; split like a shell would) with the scope's AWS credentials, region and
        expiry in its environment. Returns the exit code and the output (secrets scrubbed)."""
        return tool_result(tools.run_with_scope(template, parameters, reason, command, timeout_seconds))

    return server


def serve(*, url: str | None, token_file: str | None, token_command: str | None, cache_dir: Path | None,
          region: str | None = None, pass_env: Iterable[str] = ()) -> int:
    client = BrokerClient(url, token_file=token_file, token_command=token_command)
    # NOTE: the client holds the token source now: the commands run_with_scope starts must not reach it.
    protect_token_from_children()
    if not sys.platform.startswith("linux"):
        print("broker mcp: warning: off Linux, commands run by run_with_scope may read this process's "
              "environment and memory (the broker token); see the README", file=sys.stderr)
    server = build_server(BrokerTools(client, CredentialCache(cache_dir), region=region, pass_env=pass_env))
    server.run("stdio")
    return 0
