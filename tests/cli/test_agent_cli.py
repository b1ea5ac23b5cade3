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

CLI = [sys.executable, "-m", "broker.cli.main"]
REASON = "read the cost reports for bug 42"


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


@pytest.fixture
def token_file(agent_env, tmp_path, monkeypatch):
    """The agent's key in a private file (what a profile names; it never embeds the key)."""
    live, _cache = agent_env
    path = tmp_path / "agent.token"
    path.write_text(live.keys["agent:demo"] + "\n")
    path.chmod(0o600)
    monkeypatch.delenv("BROKER_TOKEN")
    monkeypatch.setenv("BROKER_TOKEN_FILE", str(path))
    return path


@pytest.mark.parametrize("reason", HOSTILE_REASONS)
def test_profile_quotes_every_word_so_botocore_splits_it_back(token_file, tmp_path, reason):
    config = tmp_path / "aws-config"
    assert main(["profile", "test-s3-read", "-p", "prefix=reports", "--name", "broker-s3", "--reason", reason,
                 "--token-file", str(token_file), "--config-file", str(config)]) == 0
    from botocore.compat import compat_shell_split
    from botocore.configloader import raw_config_parse

    parsed = raw_config_parse(str(config))
    words = compat_shell_split(parsed["profile broker-s3"]["credential_process"])
    assert words[:5] == [sys.executable, "-m", "broker.cli.main", "credential-process", "test-s3-read"]
    assert words[words.index("--reason") + 1] == reason
    assert words[words.index("-p") + 1] == "prefix=reports"
    assert words[words.index("--token-file") + 1] == str(token_file.resolve())
    assert words[words.index("--url") + 1] == os.environ["BROKER_URL"]
    assert parsed["profile broker-s3"]["region"] == "us-east-1"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_profile_replaces_a_stanza_only_with_force_and_keeps_the_others(token_file, agent_env, tmp_path):
    live, _cache = agent_env
    config = tmp_path / "aws-config"
    before = ("# my config\n[default]\nregion = eu-west-1\n\n[profile broker-s3]\ncredential_process = old\n"
              "\n[profile other]\nregion = us-west-2\n")
    config.write_text(before)
    argv = ["profile", "test-s3-read", "--name", "broker-s3", "--reason", REASON, "--config-file", str(config)]
    assert main(argv) == 1
    assert config.read_text() == before
    assert main(argv + ["--force"]) == 0
    text = config.read_text()
    assert "# my config" in text and "region = eu-west-1" in text and "[profile other]\nregion = us-west-2" in text
    assert text.count("[profile broker-s3]") == 1 and "credential_process = old" not in text
    # The written profile works through botocore's loader, with no region given to it.
    session = boto3.Session(profile_name="broker-s3")
    assert ":assumed-role/broker-target-s3-read/" in session.client(
        "sts", endpoint_url=live.aws_endpoint).get_caller_identity()["Arn"]


def test_the_written_profile_works_in_the_aws_cli_as_printed(token_file, agent_env, tmp_path, monkeypatch,
                                                             capsys):
    live, _cache = agent_env
    monkeypatch.setenv("AWS_ENDPOINT_URL", live.aws_endpoint)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert main(["profile", "test-s3-read", "-p", "prefix=reports", "--name", "reports", "--reason", REASON]) == 0
    printed = capsys.readouterr().out
    suggested = printed.split("use it: ", 1)[1].splitlines()[0]
    assert suggested == "AWS_PROFILE=reports aws sts get-caller-identity"
    # A new shell: only the profile knows the broker, the token file, the region and the endpoint.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env.update(AWS_CONFIG_FILE=os.environ["AWS_CONFIG_FILE"], BROKER_CACHE_DIR=os.environ["BROKER_CACHE_DIR"],
               AWS_SHARED_CREDENTIALS_FILE=os.environ["AWS_SHARED_CREDENTIALS_FILE"], AWS_PROFILE="reports")
    done = subprocess.run([str(Path(sys.executable).parent / "aws"), "sts", "get-caller-identity"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert ":assumed-role/broker-target-s3-read/" in json.loads(done.stdout)["Arn"]


@pytest.mark.parametrize(("argv", "code"), [
    (["test-s3-raed"], "template_not_found"),
    (["test-s3-read", "-p", "prefx=reports"], "unknown_parameter"),
])
def test_profile_refuses_what_the_broker_would_refuse_and_writes_nothing(token_file, tmp_path, argv, code, capsys):
    config = tmp_path / "aws-config"
    assert main(["profile", *argv, "--name", "p", "--reason", REASON, "--config-file", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"[{code}]" in err
    if code == "template_not_found":
        assert "did you mean 'test-s3-read'?" in err
    assert not config.exists()


def test_profile_needs_a_reason_and_a_token_source(agent_env, tmp_path, capsys):
    config = tmp_path / "aws-config"
    with pytest.raises(SystemExit):
        main(["profile", "test-s3-read", "--name", "p", "--config-file", str(config)])
    assert main(["profile", "test-s3-read", "--name", "p", "--reason", REASON, "--config-file", str(config)]) == 1
    err = capsys.readouterr().err
    assert "[no_token_source]" in err and "--token-file" in err
    assert not config.exists()


@pytest.mark.parametrize("name", ["", "a b", "x]\n[default", "../etc", "-flag"])
def test_profile_refuses_hostile_names(offline_env, tmp_path, name):
    config = tmp_path / "aws-config"
    assert main(["profile", "test-s3-read", f"--name={name}", "--reason", REASON, "--config-file", str(config)]) == 2
    assert not config.exists()


def test_profile_refuses_line_breaks_in_values(offline_env, tmp_path):
    config = tmp_path / "aws-config"
    assert main(["profile", "test-s3-read", "--name", "p", "--reason", "two\nlines", "--token-file", "t",
                 "--config-file", str(config)]) == 1
    assert not config.exists()


def test_write_profile_creates_missing_file_privately(tmp_path: Path):
    config = tmp_path / "new" / "config"
    write_profile(config, "default", "echo")
    assert config.read_text() == "[default]\ncredential_process = echo\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
