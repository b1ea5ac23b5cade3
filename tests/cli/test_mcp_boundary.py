"""``broker mcp``'s boundary (issue 15 item 5, issue 18 item 8), through a real MCP client over stdio.

The command ``run_with_scope`` runs is as trusted as the model that chose it.  What it must not get is
the agent's broker API key: not in its environment, not from its parent (``/proc/$PPID/environ``, the
parent's memory), not in what the tool hands back.  Nor does it see the host's whole environment.
When the test runs as root the server runs without any capability (``setpriv``): the command and its
parent then share a uid and nothing more, which is the case the boundary is about (a process holding
CAP_SYS_PTRACE may read any process).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

from mcp import ClientSession, StdioServerParameters, stdio_client

from broker.cli.mcp_server import REDACTED
from tests.event_loops import run_coroutine
from tests.sdk.conftest import live_broker  # noqa: F401 - fixture

REASON = "investigate bug 42 in the cost reports"
SCOPE = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": REASON}
HOST_SECRET = "host-secret-the-model-must-not-see-7f3a"
AS_ROOT = os.geteuid() == 0

# What the command reports: its parent's /proc environment as it can read it, its own environment.
PROBE = (
    "import os, json\n"
    "ppid = os.getppid()\n"
    "try:\n"
    "    parent = open(f'/proc/{ppid}/environ', 'rb').read().decode(errors='replace')\n"
    "except OSError as exc:\n"
    "    parent = 'DENIED ' + exc.__class__.__name__\n"
    "try:\n"
    "    open(f'/proc/{ppid}/mem', 'rb').read(1)\n"
    "    mem = 'READ'\n"
    "except OSError as exc:\n"
    "    mem = 'DENIED ' + exc.__class__.__name__\n"
    "print(json.dumps({'ppid': ppid, 'parent_environ': parent, 'parent_mem': mem, 'env': dict(os.environ)}))\n"
)


def _probe_command(directory: Path) -> str:
    script = directory / "probe.py"
    script.write_text(PROBE)
    script.chmod(0o644)
    return f"{sys.executable} {script}"


def _server_params(env: dict[str, str]) -> StdioServerParameters:
    main = [sys.executable, "-m", "broker.cli.main", "mcp"]
    if AS_ROOT:
        # Root's capabilities (CAP_SYS_PTRACE reads any process) dropped, for the server and its commands.
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run this test as root"
        main = [setpriv, "--inh-caps=-all", "--bounding-set=-all", *main]
    return StdioServerParameters(command=main[0], args=main[1:], env=env)


def _payload(result) -> dict:
    return json.loads(next(b.text for b in result.content if getattr(b, "text", None)))


def _base_env(live, directory: Path) -> dict[str, str]:
    return {"BROKER_URL": live.url, "BROKER_CACHE_DIR": str(directory / "cache"), "PATH": os.environ["PATH"],
            "AWS_ENDPOINT_URL": live.aws_endpoint, "HOME": str(directory), "SOME_HOST_TOKEN": HOST_SECRET}


async def _run(params: StdioServerParameters, steps):
    """Call the tools in ``steps`` (name, arguments, check(result, context)) within one session."""
    context: dict = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for name, arguments, check in steps:
            result = await session.call_tool(name, arguments)
            check(result, context)
    return context


def test_the_command_never_gets_the_broker_key(live_broker, tmp_path):  # noqa: F811
    token = live_broker.keys["agent:demo"]
    params = _server_params({**_base_env(live_broker, tmp_path), "BROKER_TOKEN": token})
    probe = _probe_command(tmp_path)

    def ran(result, context):
        assert result.is_error is False, result.content
        payload = _payload(result)
        assert payload["exit_code"] == 0, payload
        seen = json.loads(payload["output"])
        context["seen"] = seen
        # While the session is still open: the parent's environment as the kernel shows it (root reads it).
        context["parent_environ"] = Path(f"/proc/{seen['ppid']}/environ").read_bytes().decode(errors="replace")

    context = run_coroutine(_run, params, [("run_with_scope", {**SCOPE, "command": probe}, ran)])
    seen = context["seen"]
    # The parent is not readable by its own command (same uid): not its environment, not its memory.
    assert seen["parent_environ"].startswith("DENIED"), seen["parent_environ"][:200]
    assert seen["parent_mem"].startswith("DENIED"), seen["parent_mem"]
    # Not in the command's environment, nor anywhere in what it printed, nor left in the parent's environment.
    assert not any(name.startswith("BROKER_") for name in seen["env"])
    assert token not in json.dumps(seen)
    assert token not in context["parent_environ"] and "BROKER_TOKEN=" not in context["parent_environ"]
    # Not the host's whole environment: the keys, the region and what a command needs to run.
    assert "SOME_HOST_TOKEN" not in seen["env"] and HOST_SECRET not in json.dumps(seen)
    assert seen["env"]["AWS_REGION"] == seen["env"]["AWS_DEFAULT_REGION"] == "us-east-1"
    assert datetime.fromisoformat(seen["env"]["AWS_CREDENTIAL_EXPIRATION"].replace("Z", "+00:00")).tzinfo
    assert seen["env"]["AWS_ACCESS_KEY_ID"].startswith("ASIA") and seen["env"]["PATH"] == os.environ["PATH"]
    assert seen["env"]["AWS_ENDPOINT_URL"] == live_broker.aws_endpoint


def test_a_token_the_command_reads_from_its_file_is_scrubbed(live_broker, tmp_path):  # noqa: F811
    """A token file is readable by the same uid (README: the boundary); what the command prints is scrubbed."""
    token = live_broker.keys["agent:demo"]
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    params = _server_params({**_base_env(live_broker, tmp_path), "BROKER_TOKEN_FILE": str(token_file)})
    leak = f"{sys.executable} -c \"import base64; t = open('{token_file}').read().strip(); print(t, base64.b64encode(t.encode()).decode())\""

    def scrubbed(result, _context):
        payload = _payload(result)
        assert payload["exit_code"] == 0, payload
        assert token not in payload["output"] and payload["output"].count(REDACTED) == 2

    run_coroutine(_run, params, [("run_with_scope", {**SCOPE, "command": leak}, scrubbed)])


def test_failed_tool_calls_set_is_error(live_broker, tmp_path):  # noqa: F811
    params = _server_params({**_base_env(live_broker, tmp_path), "BROKER_TOKEN": live_broker.keys["agent:demo"]})

    def failed(code):
        def check(result, _context):
            assert result.is_error is True, result.content
            assert _payload(result)["code"] == code
        return check

    def ran_with_exit(exit_code, is_error):
        def check(result, _context):
            assert result.is_error is is_error, result.content
            assert _payload(result)["exit_code"] == exit_code
        return check

    def pending(result, _context):
        assert result.is_error is False and _payload(result)["status"] == "pending"

    run_coroutine(_run, params, [
        ("request_scope", {"template": "no-such-scope", "parameters": {}, "reason": REASON},
         failed("template_not_found")),
        ("run_with_scope", {**SCOPE, "command": "/no/such/program"}, failed("command_not_runnable")),
        ("run_with_scope", {**SCOPE, "command": ""}, failed("invalid_command")),
        ("check_request", {"request_id": "00000000-0000-0000-0000-000000000000"}, failed("request_not_found")),
        ("run_with_scope", {**SCOPE, "command": f"{sys.executable} -c 'raise SystemExit(3)'"},
         ran_with_exit(3, True)),
        ("run_with_scope", {**SCOPE, "command": "true"}, ran_with_exit(0, False)),
        ("request_scope", {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": REASON},
         pending),
    ])


def test_broker_exec_gives_its_command_no_way_to_the_token(live_broker, tmp_path):  # noqa: F811
    """``broker exec`` too: the token is not in the command's environment nor readable from its parent."""
    import subprocess

    token = live_broker.keys["agent:demo"]
    params = _server_params({})
    argv = [params.command, *params.args[:-1], "exec", "test-s3-read", "-p", "prefix=reports", "--reason", REASON,
            "--", *_probe_command(tmp_path).split()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**_base_env(live_broker, tmp_path), "BROKER_TOKEN": token})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["parent_environ"].startswith("DENIED") and seen["parent_mem"].startswith("DENIED"), seen
    assert token not in done.stdout and not any(name.startswith("BROKER_TOKEN") for name in seen["env"])
