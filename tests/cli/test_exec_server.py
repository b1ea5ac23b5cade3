"""``broker exec``: region and expiry for the child; ``--server``: botocore's container provider, and the AWS CLI."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from botocore.credentials import ContainerProvider

from broker.sdk.client import IssuedCredentials, PendingRequest, parse_time
from broker.sdk.credential_server import CredentialServer
from tests.cli.test_agent_cli import REASON, _run
from tests.conftest import moto_sts_sessions

AWS = str(Path(sys.executable).parent / "aws")
PROBE = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ['AWS_ACCESS_KEY_ID', 'AWS_REGION', "
         "'AWS_DEFAULT_REGION', 'AWS_CREDENTIAL_EXPIRATION', 'AWS_CONTAINER_CREDENTIALS_FULL_URI', "
         "'AWS_CONTAINER_AUTHORIZATION_TOKEN', 'BROKER_TOKEN']}))")


def _no_region(monkeypatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


def test_exec_gives_the_child_a_region_and_the_credentials_expiry(agent_env, monkeypatch):
    _no_region(monkeypatch)
    done = _run(["exec", "test-s3-read", "--reason", REASON, "--", sys.executable, "-c", PROBE])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["AWS_REGION"] == seen["AWS_DEFAULT_REGION"] == "us-east-1"
    expiry = parse_time(seen["AWS_CREDENTIAL_EXPIRATION"])
    assert timedelta(minutes=5) < expiry - datetime.now(UTC) <= timedelta(hours=1)
    done = _run(["exec", "test-s3-read", "--reason", REASON, "--region", "eu-west-1", "--", sys.executable, "-c",
                 PROBE])
    assert json.loads(done.stdout)["AWS_REGION"] == "eu-west-1"


def test_the_aws_cli_runs_under_exec_with_no_region_configured(agent_env, monkeypatch):
    live, _cache = agent_env
    _no_region(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", live.aws_endpoint)
    done = _run(["exec", "test-s3-read", "-p", "prefix=reports", "--reason", REASON, "--",
                 AWS, "s3api", "list-objects-v2", "--bucket", "broker-demo-bucket", "--prefix", "reports/"])
    assert done.returncode == 0, done.stderr
    assert {o["Key"] for o in json.loads(done.stdout)["Contents"]} == {"reports/2026-10-costs.csv",
                                                                       "reports/2026-11-costs.csv"}


def test_exec_server_serves_the_child_through_botocores_container_provider(agent_env, monkeypatch):
    live, _cache = agent_env
    monkeypatch.setenv("AWS_ENDPOINT_URL", live.aws_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTATICPARENTKEY")  # must not reach the child
    script = ("import json, boto3, botocore.session, os; s = botocore.session.get_session(); "
              "c = s.get_credentials(); "
              "arn = boto3.Session(botocore_session=s).client('sts').get_caller_identity()['Arn']; "
              "print(json.dumps({'method': c.method, 'arn': arn, 'static': os.environ.get('AWS_ACCESS_KEY_ID'), "
              "'uri': os.environ['AWS_CONTAINER_CREDENTIALS_FULL_URI']}))")
    done = _run(["exec", "test-s3-read", "--reason", REASON, "--server", "--", sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["method"] == "container-role" and seen["static"] is None
    assert ":assumed-role/broker-target-s3-read/" in seen["arn"]
    assert seen["uri"].startswith("http://127.0.0.1:")
    # The endpoint ended with the command.
    with pytest.raises(httpx.ConnectError):
        httpx.get(seen["uri"], timeout=2)


def test_exec_server_runs_the_aws_cli(agent_env, monkeypatch):
    live, _cache = agent_env
    _no_region(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", live.aws_endpoint)
    before = len(moto_sts_sessions(live.aws_endpoint))
    done = _run(["exec", "test-s3-read", "--reason", REASON, "--server", "--", AWS, "sts", "get-caller-identity"])
    assert done.returncode == 0, done.stderr
    assert ":assumed-role/broker-target-s3-read/" in json.loads(done.stdout)["Arn"]
    assert len(moto_sts_sessions(live.aws_endpoint)) == before + 1


def test_exec_server_of_a_pending_scope_does_not_run_the_command(agent_env, tmp_path):
    marker = tmp_path / "ran"
    done = _run(["exec", "test-prod-ecs", "-p", "service=billing", "--reason", "deploy", "--server", "--",
                 sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert done.returncode == 3 and not marker.exists()


# ----------------------------------------------------------------------------- the endpoint itself
def _issued(n: int, minutes: float) -> IssuedCredentials:
    return IssuedCredentials(access_key_id=f"ASIAEXAMPLE{n:04d}", secret_access_key=f"secret-{n}",
                             session_token=f"token-{n}", expiration=datetime.now(UTC) + timedelta(minutes=minutes),
                             request_id=f"r{n}", template="t", environment="dev")


def test_botocore_refreshes_through_the_endpoint(monkeypatch):
    calls: list[int] = []

    def fetch() -> IssuedCredentials:
        calls.append(1)
        return _issued(len(calls), minutes=12)   # inside botocore's 15-minute advisory window: it refreshes

    with CredentialServer(fetch) as server:
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        credentials = ContainerProvider().load()
        assert len(calls) == 1
        first = credentials.get_frozen_credentials()
        second = credentials.get_frozen_credentials()
    assert credentials.method == "container-role"
    # Each use inside the advisory window fetched anew from the endpoint (which asks the broker).
    assert len(calls) == 3
    assert (first.access_key, first.secret_key, first.token) == ("ASIAEXAMPLE0002", "secret-2", "token-2")
    assert (second.access_key, second.secret_key, second.token) == ("ASIAEXAMPLE0003", "secret-3", "token-3")


@pytest.mark.parametrize("authorization", [None, "", "Bearer x", "wrong-token"])
def test_the_endpoint_answers_only_its_own_token(authorization):
    with CredentialServer(lambda: _issued(1, 30)) as server:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = httpx.get(server.url, headers=headers, timeout=5)
        assert response.status_code == 401 and "Secret" not in response.text
        ok = httpx.get(server.url, headers={"Authorization": server.token}, timeout=5)
        assert ok.status_code == 200 and ok.json()["AccessKeyId"] == "ASIAEXAMPLE0001"
        assert ok.headers["cache-control"] == "no-store"
    assert len(server.token) >= 43 and server.url.startswith("http://127.0.0.1:")


def test_a_scope_that_needs_approval_again_is_a_clear_503():
    pending = PendingRequest(id="r1", status="pending", template="prod", environment="production",
                             approvals_required=2, approvals_counted=0, approvers=("group:sre",), page_url=None)
    with CredentialServer(lambda: pending) as server:
        response = httpx.get(server.url, headers={"Authorization": server.token}, timeout=5)
    assert response.status_code == 503 and response.json()["code"] == "approval_required"
    assert "group:sre" in response.json()["message"]


def test_two_runs_get_different_tokens():
    with CredentialServer(lambda: _issued(1, 30)) as one, CredentialServer(lambda: _issued(2, 30)) as two:
        assert one.token != two.token and one.url != two.url


def test_wait_shows_the_time_waited_and_the_time_left():
    import io

    from broker.cli.agent import wait_progress

    now = [100.0]
    out = io.StringIO()
    show = wait_progress(300, clock=lambda: now[0], out=out)
    pending = PendingRequest(id="r1", status="pending", template="prod", environment="production",
                             approvals_required=2, approvals_counted=1, approvers=("group:sre",), page_url=None)
    now[0] = 172.0
    show(pending)
    now[0] = 500.0
    show(pending)
    first, second = out.getvalue().splitlines()
    assert first.startswith("waiting (1m12s elapsed, 3m48s left): request r1") and "1 so far" in first
    assert second.startswith("waiting (6m40s elapsed, 0s left)")
