"""Checkpoint anchors: every signed checkpoint also written to an S3 bucket with Object Lock.

The bucket must have Object Lock enabled (it can only be enabled when the bucket is created); each
checkpoint is one object, ``<prefix><seq, 12 digits>-<checkpoint hash>.json`` holding its export line,
put with ``ObjectLockMode=COMPLIANCE`` and a retain-until date ``retention_days`` ahead: until then no one,
the account's root user included, can delete or overwrite that version.  So whoever later holds the
database and the signing key can sign a new history, but not make the anchored checkpoints disappear:
``broker audit verify --anchors s3://bucket/prefix`` checks an export against all of them.

Errors never carry AWS's own message text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broker.domain import log as issuance_log
from broker.errors import BrokerError, InvalidInput

log = logging.getLogger("broker.aws.anchors")


class AnchorUnavailable(BrokerError):
    code = "anchor_unavailable"
    status = 503


def parse_anchor_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise InvalidInput(f"{url!r} is not an s3://bucket/prefix URL.", code="anchor_url_invalid")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix


class S3CheckpointAnchors:
    """Writes and reads anchored checkpoints in one bucket and prefix."""

    def __init__(self, *, bucket: str, prefix: str = "checkpoints/", retention_days: int = 400,
                 endpoint_url: str | None = None, region: str | None = None, client=None) -> None:
        if retention_days < 1:
            raise InvalidInput("anchor retention must be at least one day", code="config_invalid",
                               field="anchor_retention_days")
        self.bucket, self.prefix, self.retention = bucket, prefix, timedelta(days=retention_days)
        # NOTE: standard retries (throttling and 5xx), short timeouts: anchoring runs off the request path.
        self._s3 = client or boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=Config(
            retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10))

    def key_of(self, checkpoint: issuance_log.Checkpoint) -> str:
        return f"{self.prefix}{checkpoint.seq:012d}-{checkpoint.hash()}.json"

    def put(self, checkpoint: issuance_log.Checkpoint, *, now: datetime) -> str:
        """Anchor one checkpoint (compliance mode, retained ``retention_days``); its key."""
        body = issuance_log.checkpoint_line(checkpoint)
        key = self.key_of(checkpoint)
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                # NOTE: Object Lock puts need an integrity checksum; COMPLIANCE cannot be shortened or lifted.
                ContentMD5=_md5(body), ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=now + self.retention)
        except (BotoCoreError, ClientError) as exc:
            raise AnchorUnavailable(f"the checkpoint for seq {checkpoint.seq} could not be anchored in "
                                    f"s3://{self.bucket}/{self.prefix}") from exc
        return key

    def latest(self) -> issuance_log.Checkpoint | None:
        """The anchored checkpoint with the highest seq (keys sort by seq), or None."""
        last = None
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys = [item["Key"] for item in page.get("Contents", [])]
                last = max([*keys, *([last] if last else [])]) if keys else last
            if last is None:
                return None
            return _checkpoint_of(self._s3.get_object(Bucket=self.bucket, Key=last)["Body"].read(), last)
        except (BotoCoreError, ClientError) as exc:
            raise AnchorUnavailable(f"the anchors in s3://{self.bucket}/{self.prefix} cannot be read") from exc

    def checkpoints(self) -> list[issuance_log.Checkpoint]:
        """Every anchored checkpoint, by seq; an object that is not a checkpoint line is an error."""
        found: list[issuance_log.Checkpoint] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    raw = self._s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                    found.append(_checkpoint_of(raw, item["Key"]))
        except (BotoCoreError, ClientError) as exc:
            raise AnchorUnavailable(f"the anchors in s3://{self.bucket}/{self.prefix} cannot be read") from exc
        return sorted(found, key=lambda checkpoint: checkpoint.seq)


def _checkpoint_of(raw: bytes, key: str) -> issuance_log.Checkpoint:
    try:
        return issuance_log.Checkpoint.from_dict(json.loads(raw)[issuance_log.CHECKPOINT_KEY])
    except (ValueError, KeyError, TypeError, InvalidInput) as exc:
        raise InvalidInput(f"the anchor {key} is not a checkpoint line", code="anchor_invalid") from exc


def _md5(body: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
