"""boto3 sessions from the SDK: real S3 calls to moto, refresh across expiry, one refresh under threads."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from broker.domain.evaluator import AccessRequest, PolicyKind, PolicySet, evaluate
from broker.sdk import ApprovalRequired
from broker.sdk.boto import MANDATORY_REFRESH_SECONDS
from tests.conftest import moto_sts_sessions

REASON = "read the cost reports for bug 42"
BUCKET = "broker-demo-bucket"


class FastClock:
    """Wall-clock time plus an offset the test moves (what botocore asks to decide on refresh)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def rewind(self) -> None:
        self.offset = timedelta()


def rewind_on_issuance(client, clock: FastClock) -> None:
    """moto stamps new credentials with real time: when the broker issues, the fast clock rejoins real time
    (as if the test's jump forward had been a real wait and moto's clock had moved with it)."""
    request = client.request

    def request_then_rewind(*args, **kwargs):
        answer = request(*args, **kwargs)
        clock.rewind()
        return answer

    client.request = request_then_rewind


def _keys(s3) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="reports/").get("Contents", [])]


def _sts_session(live, access_key_id: str) -> dict:
    return next(s for s in moto_sts_sessions(live.aws_endpoint) if s["access_key_id"] == access_key_id)


def test_session_lists_the_demo_bucket_with_only_the_templates_policy(live_repo_broker):
    live = live_repo_broker
    with live.client() as client:
        session = client.boto3_session("s3-read-prefix", {"prefix": "reports"}, reason=REASON,
                                       endpoint_url=live.aws_endpoint)
        s3 = session.client("s3")
        assert sorted(_keys(s3)) == ["reports/2026-10-costs.csv", "reports/2026-11-costs.csv"]
        body = s3.get_object(Bucket=BUCKET, Key="reports/2026-10-costs.csv")["Body"].read()
        assert body.startswith(b"service,cost")
        frozen = session.get_credentials().get_frozen_credentials()
    # What reached STS: the template's session policy, on the template's role.
    sts = _sts_session(live, frozen.access_key)
    assert sts["role_arn"] == "arn:aws:iam::123456789012:role/broker-target-s3-read-prefix"
    policy = json.loads(sts["policy"])
    session_policy = [PolicySet.of(PolicyKind.SESSION, policy, name="session")]
    refused = [("s3:GetObject", f"arn:aws:s3:::{BUCKET}/private/payroll.csv"),
               ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/reports/x.csv"),
               ("s3:DeleteBucket", f"arn:aws:s3:::{BUCKET}"),
               ("cloudformation:DeleteStack", "arn:aws:cloudformation:us-east-1:123456789012:stack/cost-explorer-api/1")]
    for action, resource in refused:
        assert not evaluate(session_policy, AccessRequest(action=action, resource=resource)).allowed, action
    allowed = evaluate(session_policy, AccessRequest(action="s3:GetObject",
                                                     resource=f"arn:aws:s3:::{BUCKET}/reports/2026-10-costs.csv"))
    assert allowed.allowed
    assert {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])} \
        == {"s3:GetObject", "s3:ListBucket"}


def test_session_keeps_working_across_a_refresh(live_broker):
    live, clock = live_broker, FastClock()
    with live.client() as client:
        rewind_on_issuance(client, clock)
        session = client.boto3_session("test-s3-read", {"prefix": "reports"}, reason=REASON,
                                       endpoint_url=live.aws_endpoint, clock=clock)
        s3 = session.client("s3")
        first = session.get_credentials().get_frozen_credentials().access_key
        assert _keys(s3)
        clock.advance(60)                           # still fresh: no new request
        assert _keys(s3)
        assert live.harness.request_count() == 1
        # Into the mandatory window: the next call must refresh before signing.
        left = session.refresher.current.seconds_left(clock())
        clock.advance(left - MANDATORY_REFRESH_SECONDS / 2)
        assert sorted(_keys(s3)) == ["reports/2026-10-costs.csv", "reports/2026-11-costs.csv"]
        second = session.get_credentials().get_frozen_credentials().access_key
    assert second != first
    assert live.harness.request_count() == 2 and session.refresher.issued_count == 2
    # Both sessions reached STS with the same (template) session policy.
    assert _sts_session(live, first)["policy"] == _sts_session(live, second)["policy"]


def test_concurrent_refreshes_make_one_request(live_broker):
    live, clock = live_broker, FastClock()
    with live.client() as client:
        rewind_on_issuance(client, clock)
        session = client.boto3_session("test-s3-read", {}, reason=REASON, endpoint_url=live.aws_endpoint, clock=clock)
        clients = [session.client("s3") for _ in range(8)]
        clock.advance(session.refresher.current.seconds_left(clock()) - 30)   # deep in the mandatory window
        barrier, results, errors = threading.Barrier(len(clients)), [], []

        def call(s3) -> None:
            try:
                barrier.wait()
                results.append(_keys(s3))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(results) == len(clients) and all(results)
    assert live.harness.request_count() == 2      # the first issuance and exactly one refresh


def test_refresher_lock_dedupes_direct_concurrent_calls(live_broker):
    live, clock = live_broker, FastClock()
    with live.client() as client:
        rewind_on_issuance(client, clock)
        session = client.boto3_session("test-s3-read", {}, reason=REASON, endpoint_url=live.aws_endpoint, clock=clock)
        clock.advance(session.refresher.current.seconds_left(clock()) - 30)
        barrier = threading.Barrier(6)
        keys: list[str] = []

        def refresh() -> None:
            barrier.wait()
            keys.append(session.refresher()["access_key"])

        threads = [threading.Thread(target=refresh) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(set(keys)) == 1 and live.harness.request_count() == 2


def test_production_scope_raises_approval_required_with_the_link(live_broker):
    with live_broker.client() as client, pytest.raises(ApprovalRequired) as caught:
        client.boto3_session("test-prod-ecs", {"service": "checkout"}, reason=REASON,
                             endpoint_url=live_broker.aws_endpoint)
    error = caught.value
    assert error.request_id and error.page_url == f"{live_broker.url}/ui/requests/{error.request_id}"
    assert error.approvers == ["group:sre"] and "group:sre" in str(error)


def test_production_session_asks_for_new_approval_instead_of_failing_mid_task(live_broker):
    live, clock = live_broker, FastClock()

    def cosign_when_pending() -> None:
        with live.client("human:bob") as bob, live.client("human:carol") as carol:
            for _ in range(200):
                pending = bob.pending_requests()
                if pending:
                    bob.decide(pending[0]["id"], "approve", "ok")
                    carol.decide(pending[0]["id"], "approve", "ok")
                    return
                threading.Event().wait(0.05)

    worker = threading.Thread(target=cosign_when_pending)
    worker.start()
    with live.client() as client:
        session = client.boto3_session("test-prod-ecs", {"service": "checkout"}, reason=REASON,
                                       endpoint_url=live.aws_endpoint, clock=clock, approval_timeout=30)
        worker.join()
        sts = session.client("sts")
        assert "broker-target-ecs-deploy" in sts.get_caller_identity()["Arn"]
        # In the advisory window the current (still valid) keys keep working.
        clock.advance(session.refresher.current.seconds_left(clock()) - MANDATORY_REFRESH_SECONDS - 30)
        assert sts.get_caller_identity()["Arn"]
        # In the mandatory window: a clear error, not an AWS failure; no silent new request.
        clock.advance(60)
        with pytest.raises(ApprovalRequired) as caught:
            sts.get_caller_identity()
    assert "new request" in str(caught.value) and "test-prod-ecs" in str(caught.value)
    assert live.harness.request_count() == 1
