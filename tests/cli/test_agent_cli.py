"""``broker credential-process`` / ``exec`` / ``profile`` against a broker served over HTTP.

The credential_process protocol is checked with botocore's OWN loader: a real AWS config file
whose profile runs ``python -m broker.cli.main credential-process ...``.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from broker.cli.agent import write_profile
from broker.cli.main import main
from tests.conftest import moto_sts_sessions
from tests.sdk.conftest import live_broker  # noqa: F401 - fixture

CLI = [sys.executable, "-m", "broker.cli.main"]
REASON = "read the cost reports for bug 42"


@pytest.fixture
def agent_env(live_broker, tmp_path, monkeypatch):  # noqa: F811
    """The agent's environment: broker URL and token, a private cache dir, no ambient AWS identity."""
    monkeypatch.setenv("BROKER_URL", live_broker.url)
    monkeypatch.setenv("BROKER_TOKEN", live_broker.keys["agent:demo"])
    for name in ("BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BROKER_CACHE_DIR", str(cache))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return live_broker, cache


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """For commands that never call the broker (profile): no live broker needed."""
    monkeypatch.setenv("BROKER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def test_credential_process_profile_works_with_botocores_own_loader(agent_env, tmp_path):
    live, cache = agent_env
    config = tmp_path / "aws-config"
    line = shlex.join(CLI + ["credential-process", "test-s3-read", "-p", "prefix=reports", "--reason", REASON])
    config.write_text(f"[profile broker-s3]\nregion = us-east-1\ncredential_process = {line}\n")
    session = boto3.Session(profile_name="broker-s3")
    identity = session.client("sts", endpoint_url=live.aws_endpoint).get_caller_identity()
    assert ":assumed-role/broker-target-s3-read/" in identity["Arn"]
    keys = session.client("s3", endpoint_url=live.aws_endpoint).list_objects_v2(
        Bucket="broker-demo-bucket", Prefix="reports/")["Contents"]
    assert {k["Key"] for k in keys} == {"reports/2026-10-costs.csv", "reports/2026-11-costs.csv"}
    # A second profile load (a new AWS CLI call) reads the cache: no new issuance.
    again = boto3.Session(profile_name="broker-s3").client("sts", endpoint_url=live.aws_endpoint)
    assert again.get_caller_identity()["Arn"] == identity["Arn"]
    assert live.harness.request_count() == 1
    # The cache is private.
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = list(cache.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_credential_process_prints_the_version_1_json(agent_env):
    live, _cache = agent_env
    done = _run(["credential-process", "test-s3-read", "--reason", REASON])
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert set(body) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert body["Version"] == 1 and body["Expiration"].endswith("Z")
    session = next(s for s in moto_sts_sessions(live.aws_endpoint) if s["access_key_id"] == body["AccessKeyId"])
    assert json.loads(session["policy"])["Statement"][0]["Resource"] == ["arn:aws:s3:::broker-demo-bucket/reports/*"]


def test_cache_is_keyed_by_scope_and_principal(agent_env, monkeypatch):
    live, _cache = agent_env
    outputs = []
    for args, token_of in [(["-p", "prefix=reports"], "agent:demo"), (["-p", "prefix=reports"], "agent:demo"),
                           (["-p", "prefix=other"], "agent:demo"), (["-p", "prefix=reports"], "agent:other")]:
        monkeypatch.setenv("BROKER_TOKEN", live.keys[token_of])
        done = _run(["credential-process", "test-s3-read", *args, "--reason", REASON])
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout)["AccessKeyId"])
    assert outputs[0] == outputs[1] and len(set(outputs)) == 3
    assert live.harness.request_count() == 3


def test_pending_production_request_exits_nonzero_with_who_and_where_then_redeems(agent_env):
    live, _cache = agent_env
    args = ["credential-process", "test-prod-ecs", "-p", "service=checkout", "--reason", "deploy fix for bug 42"]
    done = _run(args)
    assert done.returncode == 3 and done.stdout == ""
    assert "group:sre" in done.stderr and f"{live.url}/ui/requests/" in done.stderr
    request_id = done.stderr.split("/ui/requests/")[1].split()[0].rstrip(";")
    # Running again does not file a second request: it reports the same one.
    again = _run(args)
    assert again.returncode == 3 and request_id in again.stderr
    assert live.harness.request_count() == 1
    for approver in ("human:bob", "human:carol"):
        assert live.harness.post(f"/v1/requests/{request_id}/approvals", approver,
                                 json={"decision": "approve", "reason": "ok"}).status_code == 200
    approved = _run(args)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["AccessKeyId"].startswith("ASIA")
    assert live.harness.request_count() == 1


@pytest.mark.parametrize(("args", "code"), [
    (["credential-process", "no-such-scope", "--reason", REASON], "template_not_found"),
    (["credential-process", "test-s3-read", "-p", "prefix=../../etc", "--reason", REASON], None),
    (["credential-process", "test-s3-read"], "missing_reason"),
])
def test_refusals_exit_1_with_the_code_on_stderr(agent_env, args, code):
    done = _run(args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error [")
    if code:
        assert f"[{code}]" in done.stderr


def test_exec_puts_credentials_only_in_the_childs_environment(agent_env, monkeypatch):
    live, _cache = agent_env
    monkeypatch.setenv("AWS_ENDPOINT_URL", live.aws_endpoint)
    monkeypatch.setenv("AWS_PROFILE", "something-else")
    probe = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ['AWS_ACCESS_KEY_ID', "
             "'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'BROKER_TOKEN']}))")
    done = _run(["exec", "test-s3-read", "--reason", REASON, "--", sys.executable, "-c", probe])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["AWS_ACCESS_KEY_ID"].startswith("ASIA") and seen["AWS_SECRET_ACCESS_KEY"] and seen["AWS_SESSION_TOKEN"]
    assert seen["AWS_ENDPOINT_URL"] == live.aws_endpoint
    assert seen["AWS_PROFILE"] is None and seen["BROKER_TOKEN"] is None
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ


def test_exec_runs_a_real_aws_call_and_passes_the_exit_code(agent_env, monkeypatch):
    live, _cache = agent_env
    monkeypatch.setenv("AWS_ENDPOINT_URL", live.aws_endpoint)
    script = ("import boto3, sys; s3 = boto3.client('s3', region_name='us-east-1'); "
              "keys = s3.list_objects_v2(Bucket='broker-demo-bucket', Prefix='reports/')['KeyCount']; "
              "print(keys); sys.exit(7)")
    done = _run(["exec", "test-s3-read", "--reason", REASON, "--", sys.executable, "-c", script])
    assert done.returncode == 7, done.stderr
    assert done.stdout.strip() == "2"


def test_exec_without_a_command_is_a_usage_error(agent_env, capsys):
    assert main(["exec", "test-s3-read", "--reason", REASON, "--"]) == 2
    assert "--" in capsys.readouterr().err


def test_exec_of_a_pending_scope_does_not_run_the_command(agent_env, tmp_path):
    marker = tmp_path / "ran"
    done = _run(["exec", "test-prod-ecs", "-p", "service=billing", "--reason", "deploy", "--",
                 sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert done.returncode == 3 and not marker.exists() and "group:sre" in done.stderr


# ----------------------------------------------------------------------------- profile
HOSTILE_REASONS = ["plain", "it's a \"quoted\" reason", "$(touch /tmp/pwned) `id` ; rm -rf ~", "semi;colon # hash",
                   "tab\there", "üñíçødé"]


@pytest.mark.parametrize("reason", HOSTILE_REASONS)
def test_profile_quotes_every_word_so_botocore_splits_it_back(offline_env, tmp_path, reason):
    config = tmp_path / "aws-config"
    assert main(["profile", "test-s3-read", "-p", "prefix=reports", "--name", "broker-s3", "--reason", reason,
                 "--config-file", str(config)]) == 0
    from botocore.compat import compat_shell_split
    from botocore.configloader import raw_config_parse

    parsed = raw_config_parse(str(config))
    words = compat_shell_split(parsed["profile broker-s3"]["credential_process"])
    assert words[:5] == [sys.executable, "-m", "broker.cli.main", "credential-process", "test-s3-read"]
    assert words[words.index("--reason") + 1] == reason
    assert words[words.index("-p") + 1] == "prefix=reports"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_profile_replaces_its_stanza_and_keeps_the_others(agent_env, tmp_path):
    live, _cache = agent_env
    config = tmp_path / "aws-config"
    config.write_text("# my config\n[default]\nregion = eu-west-1\n\n[profile broker-s3]\ncredential_process = old\n"
                      "\n[profile other]\nregion = us-west-2\n")
    assert main(["profile", "test-s3-read", "--name", "broker-s3", "--reason", REASON,
                 "--config-file", str(config)]) == 0
    text = config.read_text()
    assert "# my config" in text and "region = eu-west-1" in text and "[profile other]\nregion = us-west-2" in text
    assert text.count("[profile broker-s3]") == 1 and "credential_process = old" not in text
    # The written profile works through botocore's loader.
    session = boto3.Session(profile_name="broker-s3", region_name="us-east-1")
    assert ":assumed-role/broker-target-s3-read/" in session.client(
        "sts", endpoint_url=live.aws_endpoint).get_caller_identity()["Arn"]


@pytest.mark.parametrize("name", ["", "a b", "x]\n[default", "../etc", "-flag"])
def test_profile_refuses_hostile_names(offline_env, tmp_path, name):
    config = tmp_path / "aws-config"
    assert main(["profile", "test-s3-read", f"--name={name}", "--reason", REASON, "--config-file", str(config)]) == 2
    assert not config.exists()


def test_profile_refuses_line_breaks_in_values(offline_env, tmp_path):
    config = tmp_path / "aws-config"
    assert main(["profile", "test-s3-read", "--name", "p", "--reason", "two\nlines", "--config-file",
                 str(config)]) == 1
    assert not config.exists()


def test_write_profile_creates_missing_file_privately(tmp_path: Path):
    config = tmp_path / "new" / "config"
    write_profile(config, "default", "echo")
    assert config.read_text() == "[default]\ncredential_process = echo\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
