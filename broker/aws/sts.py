"""STS minting: ``AssumeRole`` with the rendered session policy.

Retries happen on throttling only, bounded, with full jitter; everything else fails
at once with :class:`StsUnavailable` (503) and a message that never carries AWS's
own error text (it can echo request details).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionClosedError, ReadTimeoutError

from broker.errors import StsUnavailable
from broker.ports import MintedCredentials, MintOrder

log = logging.getLogger("broker.aws.sts")


class DropResponseBodies(logging.Filter):
    """Drop botocore's DEBUG dump of raw HTTP response bodies.

    An AssumeRole response body carries the secret access key and the session token; with
    DEBUG logging on (an operator chasing a bug), botocore would write them to the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Response body")


# NOTE: a filter, not a level: it holds even when every logger is set to DEBUG.  Logger
# filters apply to records made at that logger, so it sits on the one that dumps bodies.
logging.getLogger("botocore.parsers").addFilter(DropResponseBodies())

THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"})
# The request reached STS but no answer came back: STS may have issued credentials we never saw.
OUTCOME_UNKNOWN = (ReadTimeoutError, ConnectionClosedError)


def aws_client(service: str, *, endpoint_url: str | None, region: str, connect_timeout: float = 2.0,
               read_timeout: float = 5.0):
    config = Config(
        region_name=region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # NOTE: botocore's own retries are off; we retry throttling only, ourselves.
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    core = botocore.session.get_session()
    # One data loader for the process: service models are parsed once, not for every client.
    core.register_component("data_loader", _SHARED_LOADER)
    return boto3.session.Session(botocore_session=core).client(service, endpoint_url=endpoint_url, config=config)


_SHARED_LOADER = botocore.loaders.create_loader()


class StsMinter:
    def __init__(self, *, endpoint_url: str | None, region: str, max_attempts: int = 3, base_delay: float = 0.1,
                 sleep: Callable[[float], None] = time.sleep, client=None) -> None:
        self._client = client or aws_client("sts", endpoint_url=endpoint_url, region=region)
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._sleep = sleep

    def mint(self, order: MintOrder) -> MintedCredentials:
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._client.assume_role(
                    RoleArn=order.role_arn,                  # the template's role, rendered
                    RoleSessionName=order.session_name,      # agent + request id: visible in CloudTrail
                    Policy=order.policy_json,                # the least-privilege session policy
                    DurationSeconds=order.duration_seconds,  # checked against template and STS bounds
                    SourceIdentity=order.source_identity,    # the agent; sticks through role chaining
                    Tags=list(order.tags),                   # request, grant, template, agent, human
                    TransitiveTagKeys=list(order.transitive_tag_keys),
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in THROTTLING_CODES and attempt < self._max_attempts:
                    # Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
                    self._sleep(random.uniform(0, self._base_delay * 2 ** (attempt - 1)))
                    continue
                log.warning("sts assume_role refused: code=%s attempt=%d", code, attempt)
                kind = "throttled" if code in THROTTLING_CODES else "refused the request"
                raise StsUnavailable(f"AWS STS {kind}; no credentials were issued",
                                     code="sts_throttled" if code in THROTTLING_CODES else "sts_error") from exc
            except OUTCOME_UNKNOWN as exc:
                # NOTE: not retried (a retry could mint twice) and not "resolved": the service keeps the
                # mint intent open so reconciliation logs the possible session as an orphan and revokes it.
                log.warning("sts answer lost: %s attempt=%d", exc.__class__.__name__, attempt)
                raise StsUnavailable("AWS STS did not answer in time; no credentials were issued",
                                     code="sts_timeout", details={"outcome_unknown": True}) from exc
            except BotoCoreError as exc:
                log.warning("sts unreachable: %s attempt=%d", exc.__class__.__name__, attempt)
                raise StsUnavailable("AWS STS could not be reached; no credentials were issued") from exc
            creds = response["Credentials"]
            expiration = creds["Expiration"]
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=UTC)
            return MintedCredentials(
                access_key_id=creds["AccessKeyId"],
                secret_access_key=creds["SecretAccessKey"],
                session_token=creds["SessionToken"],
                expiration=expiration.astimezone(UTC),
                assumed_role_arn=response["AssumedRoleUser"]["Arn"],
                assumed_role_id=response["AssumedRoleUser"]["AssumedRoleId"],
            )
        raise StsUnavailable("AWS STS throttled; no credentials were issued", code="sts_throttled")
