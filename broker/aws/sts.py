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
    """Drop botocore's DEBUG records that carry AWS secrets (see ``SECRET_BEARING_RECORDS``).

    An AssumeRole response body carries the minted secret access key and session token; the
    prepared request and the SigV4 canonical request carry the broker's *own* session token
    (``X-Amz-Security-Token``, when the broker runs on an instance or task role).  With DEBUG
    logging on (an operator chasing a bug), botocore would write them to the log.
    """

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._prefixes)


# Logger -> message prefixes of the DEBUG records it makes that carry a secret.
SECRET_BEARING_RECORDS: dict[str, tuple[str, ...]] = {
    "botocore.parsers": ("Response body",),                     # minted credentials
    "botocore.endpoint": ("Sending http request",),             # headers: the broker's own session token
    "botocore.auth": ("CanonicalRequest", "StringToSign", "Signature"),  # signed headers: the same token
}

# NOTE: filters, not levels: they hold even when every logger is set to DEBUG.  Logger
# filters apply to records made at that logger, so each sits on the one that makes them.
for _logger_name, _prefixes in SECRET_BEARING_RECORDS.items():
    logging.getLogger(_logger_name).addFilter(DropResponseBodies(_prefixes))

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
