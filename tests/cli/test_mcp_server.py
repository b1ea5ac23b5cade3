"""``broker mcp`` over stdio with a real MCP client (the ``mcp`` package): no secret in any tool result."""

from __future__ import annotations

import json
import sys

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from broker.cli.mcp_server import REDACTED, scrub
from tests.conftest import moto_sts_sessions
from tests.event_loops import run_coroutine
from tests.sdk.conftest import live_broker  # noqa: F401 - fixture

REASON = "investigate bug 42 in the cost reports"


def _result_text(result) -> str:
    parts = [json.dumps(result.structured_content or {})] if getattr(result, "structured_content", None) else []
    for block in result.content:
        parts.append(getattr(block, "text", "") or "")
    return "\n".join(parts)


async def _session_calls(params: StdioServerParameters, calls):
    results = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        results.append(("list_tools", {t.name for t in tools.tools}))
        for name, arguments in calls:
            if callable(arguments):
                arguments = arguments(results)
            result = await session.call_tool(name, arguments)
            results.append((name, result))
    return results


def _payload(result) -> dict:
    return json.loads(next(b.text for b in result.content if getattr(b, "text", None)))


def test_mcp_tools_answer_with_status_never_credentials(live_broker, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    env = {"BROKER_URL": live_broker.url, "BROKER_TOKEN": live_broker.keys["agent:demo"],
           "BROKER_CACHE_DIR": str(cache), "AWS_ENDPOINT_URL": live_broker.aws_endpoint}
    params = StdioServerParameters(command=sys.executable, args=["-m", "broker.cli.main", "mcp"], env=env)
    leak_command = (f"{sys.executable} -c \"import os; print(os.environ['AWS_SECRET_ACCESS_KEY']); "
                    f"print(os.environ['AWS_SESSION_TOKEN']); print('key', os.environ['AWS_ACCESS_KEY_ID'])\"")
    list_command = (f"{sys.executable} -c \"import boto3; print(boto3.client('s3', region_name='us-east-1')"
                    f".list_objects_v2(Bucket='broker-demo-bucket', Prefix='reports/')['KeyCount'])\"")
    calls = [
        ("list_scopes", {}),
        ("request_scope", {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": REASON}),
        ("run_with_scope", {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": REASON,
                            "command": leak_command}),
        ("run_with_scope", {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": REASON,
                            "command": list_command}),
        ("request_scope", {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": REASON}),
        ("check_request", lambda results: {"request_id": _payload(results[-1][1])["request_id"]}),
        ("run_with_scope", {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": REASON,
                            "command": "echo should-not-run"}),
        ("request_scope", {"template": "no-such-scope", "parameters": {}, "reason": REASON}),
    ]
    results = run_coroutine(_session_calls, params, calls)

    assert results[0][1] == {"list_scopes", "request_scope", "check_request", "run_with_scope"}
    by_call = [(name, _payload(result)) for name, result in results[1:]]
    scopes = {s["name"]: s for s in by_call[0][1]["scopes"]}
    assert scopes["test-prod-ecs"]["needs_approval"] is True and "prefix" in scopes["test-s3-read"]["parameters"]
    issued = by_call[1][1]
    assert issued["status"] == "issued" and issued["access_key_id"].startswith("ASIA")
    leaked = by_call[2][1]
    assert leaked["exit_code"] == 0 and leaked["output"].count(REDACTED) == 2
    assert f"key {issued['access_key_id']}" in leaked["output"]
    assert by_call[3][1]["exit_code"] == 0 and by_call[3][1]["output"].strip() == "2"
    pending = by_call[4][1]
    assert pending["status"] == "pending" and pending["approvers"] == ["group:sre"]
    assert pending["approve_at"] == f"{live_broker.url}/ui/requests/{pending['request_id']}"
    assert by_call[5][1]["status"] == "pending" and by_call[5][1]["approvals_required"] == 2
    assert by_call[6][1]["ran"] is False and "should-not-run" not in json.dumps(by_call[6][1])
    assert by_call[7][1]["status"] == "error" and by_call[7][1]["code"] == "template_not_found"
    # The secrets of every session minted for this broker's agent appear in no tool result.
    session = next(s for s in moto_sts_sessions(live_broker.aws_endpoint)
                   if s["access_key_id"] == issued["access_key_id"])
    secrets = [session[k] for k in session if k in {"secret_access_key", "session_token"}]
    assert len(secrets) == 2 and all(len(s) > 16 for s in secrets)
    everything = "\n".join(_result_text(result) for _, result in results[1:])
    for secret in secrets:
        assert secret not in everything
    # One issuance served request_scope and both runs (the private cache).
    assert live_broker.harness.request_count() == 2


@pytest.mark.parametrize(("text", "secrets", "expected"), [
    ("a SECRET b", ["SECRET"], f"a {REDACTED} b"),
    ("url?t=a%2Fb%2B", ["a/b+"], f"url?t={REDACTED}"),
    ("plus a+b", ["a b"], f"plus {REDACTED}"),
    ("nothing", ["", "zzz"], "nothing"),
    ("x" * 10, ["xx"], REDACTED * 5),
])
def test_scrub(text, secrets, expected):
    assert scrub(text, secrets) == expected


def test_scrub_covers_reversed_and_base64_forms():
    import base64

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    leaked = f"{secret[::-1]} {base64.b64encode(secret.encode()).decode()}"
    assert secret[:12] not in scrub(leaked, [secret])
    assert secret[::-1][:12] not in scrub(leaked, [secret])


def test_run_with_scope_scrubs_every_cached_scopes_secrets(tmp_path):
    """A command that prints another cached scope's file does not hand its keys to the model."""
    from datetime import UTC, datetime, timedelta

    from broker.cli.mcp_server import BrokerTools
    from broker.sdk.client import IssuedCredentials
    from broker.sdk.credential_process import CredentialCache

    cache = CredentialCache(tmp_path / "cache")
    other = IssuedCredentials(access_key_id="ASIAOTHER", secret_access_key="other-secret-key-0123456789",
                              session_token="other-session-token-0123456789",
                              expiration=datetime.now(UTC) + timedelta(hours=1), request_id="r", template="prod",
                              environment="production")
    cache.store("other-scope", other)
    assert cache.all_secrets() == {"other-secret-key-0123456789", "other-session-token-0123456789"}
    tools = BrokerTools(client=None, cache=cache)
    mine = IssuedCredentials(access_key_id="ASIAMINE", secret_access_key="mine-secret-0123456789",
                             session_token="mine-token-0123456789", expiration=datetime.now(UTC) + timedelta(hours=1),
                             request_id="r2", template="dev", environment="dev")

    class _Scope:
        def obtain(self):
            return mine

    tools._scope = lambda *args, **kwargs: _Scope()  # the broker call is not what this test is about
    files = " ".join(str(p) for p in (tmp_path / "cache").glob("*.credentials.json"))
    result = tools.run_with_scope("dev", {}, "read", f"cat {files}")
    assert result["exit_code"] == 0
    for secret in ("other-secret-key-0123456789", "other-session-token-0123456789"):
        assert secret not in result["output"]
