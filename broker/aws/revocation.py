"""IamRevoker: writes the broker-managed revocation deny policy onto target roles.

Implements :class:`broker.ports.SessionRevoker` with IAM ``PutRolePolicy`` /
``DeleteRolePolicy``.  AWS error text never reaches the caller: every failure is a
:class:`~broker.errors.Unavailable` with the stable code ``revocation_unavailable``.
The broker's own IAM permissions for this are ``iam:PutRolePolicy``,
``iam:DeleteRolePolicy``, ``iam:ListRolePolicies`` and ``iam:GetRolePolicy`` on the
target roles (see deploy/).
"""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote

from botocore.exceptions import BotoCoreError, ClientError

from broker.aws.sts import aws_client
from broker.domain.revocation import POLICY_NAME, ROLE_INLINE_POLICY_LIMIT, policy_json
from broker.errors import InvalidInput, Unavailable

log = logging.getLogger("broker.aws.revocation")


def role_name(role_arn: str) -> str:
    """``arn:aws:iam::123:role/path/name`` -> ``name`` (IAM's role APIs take the bare name)."""
    prefix, _, resource = role_arn.partition(":role/")
    if not prefix.startswith("arn:") or not resource:
        raise InvalidInput("not an IAM role ARN", code="invalid_role_arn", field="role_arn")
    return resource.rsplit("/", 1)[-1]


class IamRevoker:
    def __init__(self, *, endpoint_url: str | None, region: str, client=None) -> None:
        self._client = client or aws_client("iam", endpoint_url=endpoint_url, region=region)

    def write_deny_policy(self, *, role_arn: str, policy_json: str | None) -> None:
        """Put (or, with ``None``, delete) the role's ``broker-revocations`` inline policy."""
        name = role_name(role_arn)
        try:
            if policy_json is None:
                try:
                    self._client.delete_role_policy(RoleName=name, PolicyName=POLICY_NAME)
                except ClientError as exc:
                    if _code(exc) != "NoSuchEntity":
                        raise
                return
            self._client.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=policy_json)
        except (ClientError, BotoCoreError) as exc:
            log.warning("revocation policy write failed: role=%s code=%s", name, _code(exc))
            raise Unavailable("AWS IAM did not accept the revocation policy; the revocation was not recorded",
                              code="revocation_unavailable") from exc

    def deny_policy_room(self, *, role_arn: str) -> int:
        """Characters left for our policy under IAM's aggregate inline-policy limit of the role."""
        name = role_name(role_arn)
        used = 0
        try:
            paginator = self._client.get_paginator("list_role_policies")
            for page in paginator.paginate(RoleName=name):
                for other in page.get("PolicyNames", []):
                    if other == POLICY_NAME:
                        continue
                    document = self._client.get_role_policy(RoleName=name, PolicyName=other)["PolicyDocument"]
                    used += len(policy_json(_document(document)))
        except (ClientError, BotoCoreError) as exc:
            log.warning("role inline policies could not be read: role=%s code=%s", name, _code(exc))
            raise Unavailable("AWS IAM could not be read; nothing was revoked", code="revocation_unavailable") from exc
        return ROLE_INLINE_POLICY_LIMIT - used

    def read_deny_policy(self, *, role_arn: str) -> dict | None:
        """The role's current ``broker-revocations`` document, or None."""
        try:
            response = self._client.get_role_policy(RoleName=role_name(role_arn), PolicyName=POLICY_NAME)
        except ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return None
            raise Unavailable("AWS IAM could not be read", code="revocation_unavailable") from exc
        except BotoCoreError as exc:
            raise Unavailable("AWS IAM could not be read", code="revocation_unavailable") from exc
        return _document(response["PolicyDocument"])


def _document(raw) -> dict:
    """boto3 decodes policy documents to dicts; some endpoints return URL-encoded JSON text."""
    if isinstance(raw, dict):
        return raw
    return json.loads(unquote(raw))


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return exc.__class__.__name__
