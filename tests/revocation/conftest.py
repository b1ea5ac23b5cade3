"""Helpers for revocation tests: a second admin, IAM read-back from moto, issuing a grant."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker.aws.revocation import IamRevoker, role_name
from broker.aws.sts import aws_client
from broker.runtime.devmode import seed_principals
from broker.domain.revocation import POLICY_NAME

S3_ROLE = "arn:aws:iam::123456789012:role/broker-target-s3-read"
S3_REQUEST = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "investigate bug 42"}
# A second admin, for co-signed lockdown lifts (dev mode has only human:root).
SECOND_ADMIN = {"human:ada": (("admin",), (), None)}


def read_deny_policy(endpoint: str, role_arn: str = S3_ROLE) -> dict | None:
    """The role's broker-revocations policy, read back from moto over HTTP (None if absent)."""
    return IamRevoker(endpoint_url=endpoint, region="us-east-1").read_deny_policy(role_arn=role_arn)


def clear_deny_policy(endpoint: str, role_arn: str = S3_ROLE) -> None:
    iam = aws_client("iam", endpoint_url=endpoint, region="us-east-1")
    try:
        iam.delete_role_policy(RoleName=role_name(role_arn), PolicyName=POLICY_NAME)
    except iam.exceptions.NoSuchEntityException:
        pass


@dataclass
class Issued:
    request_id: str
    grant_id: str
    access_key_id: str
    session_name: str


def issue(broker, principal: str = "agent:demo", **overrides) -> Issued:
    response = broker.post("/v1/requests", principal, json={**S3_REQUEST, **overrides})
    assert response.status_code == 201, response.text
    body = response.json()
    return Issued(request_id=body["id"], grant_id=body["grant"]["id"],
                  access_key_id=body["credentials"]["access_key_id"], session_name=body["grant"]["session_name"])


@pytest.fixture
def admins(broker):
    """The harness plus a second admin's key (human:ada)."""
    keys = seed_principals(broker.container.database, broker.state_dir / "more-keys.json", SECOND_ADMIN)
    broker.keys.update(keys)
    return broker


@pytest.fixture(autouse=True)
def _fresh_role_policy(moto_server):
    """moto is shared by the whole session: start every test with no revocation policy on the role."""
    clear_deny_policy(moto_server.endpoint_url)
    yield
