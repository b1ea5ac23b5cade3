"""``broker mcp``: a Model Context Protocol server (stdio) for coding agents.

Tools: ``list_scopes``, ``request_scope``, ``check_request``, ``run_with_scope``.

No tool result carries credentials.  ``request_scope`` answers with a status; issued credentials go
to the private credential cache (the same one ``broker credential-process`` uses).
``run_with_scope`` puts them in the environment of the command it runs and returns the exit code
and output, scrubbed of every cached secret access key and session token in their plain, URL-,
base64- and reversed forms.

Scrubbing is best effort, not a boundary: the command runs with the keys in its environment, so a
command that *transforms* them some other way before printing (or sends them elsewhere) defeats it.
The command is as trusted as the agent that chose it; the scope's session policy and short TTL are
what limit the damage.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from broker.cli.agent import child_environment
from broker.sdk.client import BrokerClient, IssuedCredentials, PendingRequest
from broker.sdk.credential_process import CredentialCache, ScopeCredentials
from broker.sdk.errors import BrokerAPIError

MAX_OUTPUT_CHARS = 64_000
DEFAULT_COMMAND_TIMEOUT = 300
REDACTED = "[redacted by broker]"


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


class BrokerTools:
    """The tools' behaviour, independent of the MCP plumbing (and testable on its own)."""

    def __init__(self, client: BrokerClient, cache: CredentialCache) -> None:
        self.client, self.cache = client, cache

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
            done = subprocess.run(argv, env=child_environment(answer), capture_output=True, text=True,
                                  timeout=max(1, min(int(timeout_seconds), 3600)), check=False, errors="replace")
            exit_code, output = done.returncode, (done.stdout or "") + (done.stderr or "")
        except subprocess.TimeoutExpired as exc:
            exit_code = -1
            output = _text(exc.stdout) + _text(exc.stderr) + f"\n[timed out after {timeout_seconds}s]"
        except OSError as exc:
            return {"status": "error", "code": "command_not_runnable",
                    "message": f"cannot run {argv[0]!r}: {exc.strerror}"}
        # This scope's secrets, and every other scope's in the cache (a command could read the cache files).
        output = scrub(output, {*answer.secrets(), *self.cache.all_secrets()})
        truncated = len(output) > MAX_OUTPUT_CHARS
        return {"status": "ran", "ran": True, "exit_code": exit_code, "output": output[-MAX_OUTPUT_CHARS:],
                "truncated": truncated, "request_id": answer.request_id, "access_key_id": answer.access_key_id}


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def build_server(tools: BrokerTools):
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("agent-broker", log_level="WARNING", instructions=(
        "Short-lived, least-privilege AWS access through the credential broker. list_scopes shows what you may "
        "ask for; request_scope asks (always give a real reason; production scopes wait for two humans); "
        "check_request follows a pending request; run_with_scope runs a command with the scope's credentials. "
        "You never see the credentials themselves."))

    @server.tool()
    def list_scopes() -> dict[str, Any]:
        """The scope templates: name, description, environment, parameters, whether humans must approve."""
        return tools.list_scopes()

    @server.tool()
    def request_scope(template: str, parameters: dict[str, str], reason: str) -> dict[str, Any]:
        """Ask for a scope with a reason. Answers with a status (issued, or pending with who must approve)."""
        return tools.request_scope(template, parameters, reason)

    @server.tool()
    def check_request(request_id: str) -> dict[str, Any]:
        """The status of a request: pending (approvals so far, who must approve, link), approved, denied, ..."""
        return tools.check_request(request_id)

    @server.tool()
    def run_with_scope(template: str, parameters: dict[str, str], reason: str, command: str,
                       timeout_seconds: int = DEFAULT_COMMAND_TIMEOUT) -> dict[str, Any]:
        """Run a command (no shell; split like a shell would) with the scope's AWS credentials in its
        environment. Returns the exit code and the output (secrets scrubbed)."""
        return tools.run_with_scope(template, parameters, reason, command, timeout_seconds)

    return server


def serve(*, url: str | None, token_file: str | None, token_command: str | None, cache_dir: Path | None) -> int:
    client = BrokerClient(url, token_file=token_file, token_command=token_command)
    server = build_server(BrokerTools(client, CredentialCache(cache_dir)))
    server.run("stdio")
    return 0
