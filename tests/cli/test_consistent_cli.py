"""One CLI: --version, help and an example everywhere, the same connection options, contexts, id prefixes,
lifecycle commands (requests mine/cancel, grants list, revoke --access-key-id), completion, clear URL errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from broker.cli.main import build_parser, main
from tests.cli.test_requests_cli import PROD, pending_id
from tests.live_server import serve

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "bug 42"}


@pytest.fixture
def live(sqlite_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("BROKER_CLI_CONFIG", str(tmp_path / "cli" / "config.json"))
    for name in ("BROKER_URL", "BROKER_TOKEN", "BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND", "BROKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    with serve(sqlite_broker.client.app) as server:
        yield sqlite_broker, server


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _as(harness, server, who: str) -> list[str]:
    return ["--url", server.url, "--token", harness.keys[who]]


def _leaves(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*path, name))
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        yield path, parser


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("broker 0.")


def test_every_command_has_help_an_example_and_help_on_every_option():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) > 30
    for path, parser in leaves:
        assert "example: broker" in (parser.epilog or "").replace("example: BROKER", "example: broker") \
            or "example: " in (parser.epilog or ""), path
        for action in parser._actions:
            assert action.help, (path, action.option_strings or action.dest)


def test_every_command_that_calls_the_broker_takes_the_same_connection_options():
    checked = []
    for path, parser in _leaves(build_parser()):
        options = {o for a in parser._actions for o in a.option_strings}
        if "--url" in options and path[0] not in ("demo", "mcp", "login"):
            # `scopes simulate --context KEY=VALUE` is the request's IAM context (BROKER_CONTEXT still applies).
            wanted = {"--token", "--token-file", "--token-command"} | (
                set() if path == ("scopes", "simulate") else {"--context"})
            assert wanted <= options, path
            checked.append(path)
    assert {("audit", "reconcile"), ("scopes", "usage"), ("scopes", "simulate"), ("whoami",)} <= set(checked)


@pytest.mark.parametrize(("url", "words"), [
    ("127.0.0.1:8080", "did you mean http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/v1", "without /v1"),
    ("ftp://broker", "needs http:// or https://"),
])
def test_url_mistakes_are_named(capsys, url, words):
    code, _, err = _run(capsys, "whoami", "--url", url, "--token", "x")
    assert code == 1 and "[invalid_broker_url]" in err and words in err


def test_https_to_a_plain_http_broker_says_so(live, capsys):
    harness, server = live
    code, _, err = _run(capsys, "whoami", "--url", server.url.replace("http://", "https://"),
                        "--token", harness.keys["agent:demo"])
    assert code == 1 and "does not speak TLS: use http://" in err


@pytest.mark.parametrize(("token", "words"), [
    ("garbage", "neither a broker API key"),
    ("brk_0123456789ab_" + "A" * 43, "not known to this broker"),
])
def test_a_garbage_token_and_an_unknown_key_are_told_apart(live, capsys, token, words):
    _harness, server = live
    code, _, err = _run(capsys, "whoami", "--url", server.url, "--token", token)
    assert code == 1 and "[invalid_credentials]" in err and words in err


def test_login_saves_a_context_and_whoami_and_context_use_follow_it(live, capsys, tmp_path, monkeypatch):
    harness, server = live
    token_file = tmp_path / "bob.token"
    token_file.write_text(harness.keys["human:bob"] + "\n")
    code, out, _ = _run(capsys, "login", server.url, "--name", "dev", "--token-file", str(token_file))
    assert code == 0 and "as human:bob" in out
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(harness.keys["agent:demo"] + "\n"))
    assert _run(capsys, "login", server.url + "/", "--name", "agent", "--token-stdin")[0] == 0
    code, out, _ = _run(capsys, "whoami", "--format", "json")
    assert json.loads(out)["id"] == "agent:demo" and json.loads(out)["context"] == "agent"
    assert _run(capsys, "context", "use", "dev")[0] == 0
    code, out, _ = _run(capsys, "whoami")
    assert out.startswith("human:bob on http://127.0.0.1:") and "roles approver" in out
    listed = json.loads(_run(capsys, "context", "list", "--format", "json")[1])
    assert [(c["name"], c["current"]) for c in listed["contexts"]] == [("agent", False), ("dev", True)]
    # The stored token is private and the configuration holds no token.
    config = tmp_path / "cli" / "config.json"
    assert harness.keys["agent:demo"] not in config.read_text()
    assert (tmp_path / "cli" / "tokens" / "agent").stat().st_mode & 0o077 == 0
    # A bad login saves nothing.
    assert _run(capsys, "login", server.url, "--name", "bad", "--token-stdin")[0] == 1
    assert "bad" not in json.loads(config.read_text())["contexts"]
    code, _, err = _run(capsys, "context", "use", "nope")
    assert code == 1 and "[unknown_context]" in err


def test_requests_mine_cancel_by_prefix_and_approve_by_prefix(live, capsys):
    harness, server = live
    first, second = pending_id(harness), pending_id(harness)
    code, out, _ = _run(capsys, "requests", "mine", "--format", "json", *_as(harness, server, "agent:demo"))
    assert {r["id"] for r in json.loads(out)["requests"]} >= {first, second}
    code, out, _ = _run(capsys, "requests", "cancel", first[:8], *_as(harness, server, "agent:demo"))
    assert code == 0 and "cancelled" in out
    code, out, _ = _run(capsys, "approve", second[:8], "--reason", "CHG-1", *_as(harness, server, "human:bob"))
    assert code == 0 and second in out
    code, _, err = _run(capsys, "requests", "show", "zzzz", *_as(harness, server, "human:bob"))
    assert code == 1 and "[request_not_found]" in err
    code, _, err = _run(capsys, "requests", "show", "ab", *_as(harness, server, "human:bob"))
    assert code == 1 and "[invalid_request_id]" in err
    assert PROD["template"] in _run(capsys, "requests", "mine", *_as(harness, server, "agent:demo"))[1]


def test_grants_list_and_revoke_by_access_key_id(live, capsys):
    harness, server = live
    issued = harness.post("/v1/requests", "agent:demo", json=S3).json()
    key = issued["credentials"]["access_key_id"]
    code, out, _ = _run(capsys, "grants", "list", "--format", "json", *_as(harness, server, "human:root"))
    [grant] = json.loads(out)["grants"]
    assert (grant["access_key_id"], grant["agent"], grant["template"], grant["status"]) == (
        key, "agent:demo", "test-s3-read", "live")
    assert grant["expiration"] == issued["grant"]["expiration"]
    table = _run(capsys, "grants", "list", *_as(harness, server, "agent:demo"))[1]
    assert key in table and "ACCESS KEY ID" in table
    assert "No live grants." in _run(capsys, "grants", "list", *_as(harness, server, "agent:other"))[1]
    code, out, _ = _run(capsys, "revoke", "--access-key-id", key, "--reason", "in a log",
                        *_as(harness, server, "human:root"))
    assert code == 0, out
    assert "No live grants." in _run(capsys, "grants", "list", *_as(harness, server, "human:root"))[1]
    revoked = json.loads(_run(capsys, "grants", "list", "--all", "--format", "json",
                              *_as(harness, server, "human:root"))[1])["grants"]
    assert [g["status"] for g in revoked] == ["revoked"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_name_the_commands(shell):
    done = subprocess.run([sys.executable, "-m", "broker.cli.main", "completion", shell], capture_output=True,
                          text=True, timeout=60, check=True)
    for word in ("requests", "grants", "keys", "whoami", "--token-file"):
        assert word in done.stdout
    if shell == "bash":
        check = subprocess.run(["bash", "-c", done.stdout + "\nCOMP_WORDS=(broker gra); COMP_CWORD=1; _shtab_broker;"
                                " echo ${COMPREPLY[@]}"], capture_output=True, text=True, timeout=30, check=False)
        assert check.stdout.split() == ["grants"], check.stderr
