"""BrokerClient against a broker served over real HTTP: requests, typed errors, waiting, token sources."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from broker.sdk import (ApprovalDenied, ApprovalPending, ApprovalTimeout, BrokerAPIError, BrokerClient,
                        BrokerUnreachable, ConfigurationError, Forbidden, InvalidRequest, IssuedCredentials,
                        NotFound, PendingRequest, Unauthenticated)
from broker.sdk.errors import error_from_response

REASON = "investigate bug 42"


def test_dev_scope_is_issued_at_once(live_broker):
    with live_broker.client() as client:
        issued = client.request("test-s3-read", {"prefix": "reports"}, reason=REASON, ttl=1200)
    assert isinstance(issued, IssuedCredentials)
    assert issued.access_key_id.startswith("ASIA") and issued.template == "test-s3-read"
    assert issued.environment == "dev" and not issued.is_production
    assert issued.grant["ttl_seconds"] == 1200
    assert 900 < issued.seconds_left() <= 1300
    # The secret parts never print.
    assert issued.secret_access_key not in repr(issued) and issued.session_token not in repr(issued)


def test_production_scope_is_pending_with_who_and_where(live_broker):
    with live_broker.client() as client:
        pending = client.request("test-prod-ecs", {"service": "checkout"}, reason=REASON)
    assert isinstance(pending, PendingRequest)
    assert pending.status == "pending" and pending.approvals_required == 2 and pending.approvals_counted == 0
    assert pending.approvers == ("group:sre",)
    assert pending.page_url == f"{live_broker.url}/ui/requests/{pending.id}"
    assert "group:sre" in pending.message() and pending.page_url in pending.message()


@pytest.mark.parametrize(("principal", "call", "error", "code"), [
    ("agent:demo", lambda c: c.request("no-such-scope", {}, reason=REASON), NotFound, "template_not_found"),
    ("agent:demo", lambda c: c.request("test-s3-read", {"prefix": "../etc"}, reason=REASON), InvalidRequest, None),
    ("agent:demo", lambda c: c.request("test-s3-read", {"bogus": "x"}, reason=REASON), InvalidRequest, None),
    ("agent:demo", lambda c: c.request("test-s3-read", {}, reason=REASON, ttl=60), InvalidRequest, "ttl_too_short"),
    ("agent:other", lambda c: c.request("test-logs", {"log_group": "/aws/lambda/x"}, reason=REASON), Forbidden,
     "requester_not_allowed"),
    ("human:bob", lambda c: c.request("test-s3-read", {}, reason=REASON), Forbidden, "requester_not_allowed"),
    ("agent:demo", lambda c: c.get_request("00000000-0000-0000-0000-000000000000"), NotFound, "request_not_found"),
    ("agent:demo", lambda c: c.pending_requests(), Forbidden, "not_an_approver"),
])
def test_api_errors_become_typed_exceptions(live_broker, principal, call, error, code):
    with live_broker.client(principal) as client, pytest.raises(error) as caught:
        call(client)
    assert caught.value.status in {403, 404, 422}
    assert caught.value.code and caught.value.message
    if code:
        assert caught.value.code == code


def test_wrong_token_is_unauthenticated(live_broker):
    with BrokerClient(live_broker.url, token="brk_not-a-real-key") as client, pytest.raises(Unauthenticated) as caught:
        client.request("test-s3-read", {}, reason=REASON)
    assert caught.value.status == 401


def test_redeem_before_approval_is_approval_pending_and_own_human_is_forbidden(live_broker):
    with live_broker.client() as agent, live_broker.client("human:alice") as alice:
        pending = agent.request("test-prod-ecs", {"service": "billing"}, reason=REASON)
        with pytest.raises(ApprovalPending) as early:
            agent.redeem(pending.id)
        assert early.value.code == "approval_pending" and early.value.status == 409
        with pytest.raises(Forbidden) as own:
            alice.decide(pending.id, "approve", "my own agent")
        assert own.value.status == 403


def test_wait_returns_when_two_approvers_cosign_then_redeem(live_broker):
    with live_broker.client() as agent:
        pending = agent.request("test-prod-ecs", {"service": "checkout"}, reason=REASON)
        seen: list[PendingRequest] = []

        def cosign() -> None:
            for approver in ("human:bob", "human:carol"):
                with live_broker.client(approver) as human:
                    human.decide(pending.id, "approve", "looked at the blast radius")

        worker = threading.Thread(target=cosign)
        worker.start()
        told: list[str] = []
        approved = agent.wait(pending.id, timeout=30, initial_delay=0.05, max_delay=0.2, on_wait=seen.append,
                              on_progress=told.append)
        worker.join()
        assert approved.status == "approved" and approved.approvals_counted == 2
        issued = agent.redeem(pending.id)
    assert issued.is_production and issued.request_id == pending.id
    assert seen and all(s.status == "pending" for s in seen)
    # Each co-signature once, in order, then the outcome.
    cosigned = [line for line in told if " approved (" in line and "human:" in line]
    assert [line.split(": ", 1)[1].split(" approved")[0] for line in cosigned] == ["human:bob", "human:carol"]
    assert "(1 of 2)" in cosigned[0] and "(2 of 2)" in cosigned[1] and "after the request" in cosigned[0]
    assert told[-1].startswith(f"request {pending.id}: approved (2 of 2)")


def test_wait_on_a_denied_request_raises_approval_denied(live_broker):
    with live_broker.client() as agent, live_broker.client("human:bob") as bob:
        pending = agent.request("test-prod-ecs", {"service": "checkout"}, reason=REASON)
        bob.decide(pending.id, "deny", "absolutely not")
        told: list[str] = []
        with pytest.raises(ApprovalDenied) as caught:
            agent.wait(pending.id, timeout=5, initial_delay=0.05, on_progress=told.append)
    assert "absolutely not" in caught.value.message
    assert told == [f"request {pending.id}: denied by human:bob 0s after the request: absolutely not"]


class FakeTime:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_wait_backs_off_and_times_out_saying_who_and_where(live_broker):
    fake = FakeTime()
    with live_broker.client(sleep=fake.sleep, monotonic=fake.monotonic) as agent:
        pending = agent.request("test-prod-ecs", {"service": "checkout"}, reason=REASON)
        with pytest.raises(ApprovalTimeout) as caught:
            agent.wait(pending.id, timeout=60, initial_delay=1, max_delay=8)
    assert "group:sre" in str(caught.value) and pending.page_url in str(caught.value)
    assert sum(fake.sleeps) == pytest.approx(60)
    # Exponential backoff (with jitter in [0.5, 1] of the step), capped.
    assert all(s <= 8 for s in fake.sleeps) and max(fake.sleeps) > 2 and fake.sleeps[0] <= 1
    assert len(fake.sleeps) < 20


# ----------------------------------------------------------------------------- configuration
def test_configuration_from_environment_file_and_command(live_broker, tmp_path, monkeypatch):
    token = live_broker.keys["agent:demo"]
    monkeypatch.setenv("BROKER_URL", live_broker.url)
    monkeypatch.delenv("BROKER_TOKEN", raising=False)
    monkeypatch.delenv("BROKER_TOKEN_FILE", raising=False)
    monkeypatch.delenv("BROKER_TOKEN_COMMAND", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    script = tmp_path / "print_token.py"
    script.write_text(f"print({token!r})\n")
    sources = [{"BROKER_TOKEN": token}, {"BROKER_TOKEN_FILE": str(token_file)},
               {"BROKER_TOKEN_COMMAND": f"{sys.executable} {script}"}]
    for env in sources:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with BrokerClient() as client:
            assert isinstance(client.request("test-s3-read", {}, reason=REASON), IssuedCredentials)
        for name in env:
            monkeypatch.delenv(name)


@pytest.mark.parametrize("command", ["false", f"{sys.executable} -c 'import sys; sys.exit(3)'",
                                     "/nonexistent/token-printer", f"{sys.executable} -c 'pass'", "'unbalanced"])
def test_failing_token_command_is_a_configuration_error_without_its_output(live_broker, command):
    with BrokerClient(live_broker.url, token_command=command) as client, pytest.raises(ConfigurationError) as caught:
        client.request("test-s3-read", {}, reason=REASON)
    assert caught.value.code == "sdk_not_configured"


def test_token_command_output_never_reaches_the_error(live_broker, tmp_path):
    script = tmp_path / "leak.py"
    script.write_text("import sys\nprint('SECRET-TOKEN-VALUE')\nsys.exit(1)\n")
    with BrokerClient(live_broker.url, token_command=f"{sys.executable} {script}") as client:
        with pytest.raises(ConfigurationError) as caught:
            client.request("test-s3-read", {}, reason=REASON)
    assert "SECRET-TOKEN-VALUE" not in str(caught.value)


@pytest.mark.parametrize("env", [{}, {"BROKER_URL": "http://127.0.0.1:9"}, {"BROKER_TOKEN": "x"}])
def test_missing_configuration_is_refused_up_front(monkeypatch, env):
    for name in ("BROKER_URL", "BROKER_TOKEN", "BROKER_TOKEN_FILE", "BROKER_TOKEN_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError):
        BrokerClient()


def test_several_token_sources_at_once_are_refused(tmp_path: Path):
    with pytest.raises(ConfigurationError):
        BrokerClient("http://127.0.0.1:9", token="a", token_file=tmp_path / "t")


def test_unreachable_broker_is_a_typed_error():
    with BrokerClient("http://127.0.0.1:9", token="x", timeout=2) as client, pytest.raises(BrokerUnreachable) as caught:
        client.request("test-s3-read", {}, reason=REASON)
    assert caught.value.status == 0 and "127.0.0.1:9" in caught.value.message


@pytest.mark.parametrize(("status", "body", "cls", "code"), [
    (409, {"error": {"code": "approval_pending", "message": "m"}}, ApprovalPending, "approval_pending"),
    (403, {"error": {"code": "not_requester", "message": "m"}}, Forbidden, "not_requester"),
    (500, "not json", BrokerAPIError, "unavailable"),
    (502, None, BrokerAPIError, "unavailable"),
    (418, {"error": "weird"}, BrokerAPIError, "broker_error"),
    (422, {"error": {"message": "no code"}}, InvalidRequest, "invalid_input"),
])
def test_error_mapping_is_total_over_malformed_answers(status, body, cls, code):
    error = error_from_response(status, body)
    assert isinstance(error, cls) and error.code == code and error.status == status and error.message


def test_the_export_streams_line_by_line_and_its_errors_decode_like_every_call(live_broker):
    with live_broker.client("agent:demo") as agent:
        agent.request("test-s3-read", {}, reason=REASON)
        # Not a reviewer: the streamed GET's error is the API's, typed like any call's.
        with pytest.raises(Forbidden) as caught, agent.stream("/v1/events/export"):
            pass
        assert caught.value.status == 403 and caught.value.code
    with live_broker.client("human:rita") as reviewer:
        lines = list(reviewer.export_events())
    entries = [line for line in lines if '"seq"' in line]
    assert lines and all(line.startswith("{") for line in lines)
    assert any('"type":"requested"' in line for line in entries)
