"""The broker's own AWS session token (it runs on an instance/task role) never reaches the log.

botocore at DEBUG prints each prepared request (headers included) and the SigV4 canonical request;
both carry ``X-Amz-Security-Token``.  An operator turning DEBUG on must not leak the broker's
own credentials (which can mint for every scope).
"""

import json
import logging

from broker.aws.revocation import IamRevoker
from broker.aws.sts import StsMinter
from broker.ports import MintOrder

BROKER_TOKEN = "BROKERSELFSESSIONTOKEN" + "Q" * 40


def test_broker_session_token_absent_from_debug_log(moto_server, monkeypatch, caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIABROKERSELF0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "brokerselfsecret" + "S" * 24)
    monkeypatch.setenv("AWS_SESSION_TOKEN", BROKER_TOKEN)
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    minter = StsMinter(endpoint_url=moto_server.endpoint_url, region="us-east-1")
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]})
    minted = minter.mint(MintOrder(role_arn="arn:aws:iam::123456789012:role/broker-test-s3-read",
                                   session_name="agent.demo-review", policy_json=policy, duration_seconds=900,
                                   source_identity="agent.demo", tags=[]))
    IamRevoker(endpoint_url=moto_server.endpoint_url, region="us-east-1").read_deny_policy(
        role_arn="arn:aws:iam::123456789012:role/broker-test-s3-read")
    text = "\n".join([caplog.text, *(repr(r.__dict__) for r in caplog.records)])
    assert "Making request for OperationModel(name=AssumeRole)" in text, "botocore DEBUG capture is not working"
    for secret in (BROKER_TOKEN, minted.secret_access_key, minted.session_token):
        assert secret not in text
