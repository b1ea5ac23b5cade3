"""CloudTrail log files, read as AWS documents them, keeping only what the broker compares.

A CloudTrail log file is one JSON object ``{"Records": [...]}`` (the file a trail delivers to its S3
bucket is gzipped; the same JSON unzipped is accepted too).  Each record is one API call; the
fields read here are the documented ones ("CloudTrail record contents", "CloudTrail userIdentity
element", and the AssumeRole examples of "Logging IAM and AWS STS API calls with AWS CloudTrail"):

* ``eventTime`` (ISO 8601, UTC), ``eventSource`` (``sts.amazonaws.com``), ``eventName``
  (``AssumeRole``), ``eventID``, ``errorCode`` (absent when the call succeeded);
* ``userIdentity.accessKeyId`` (the key that signed the call), ``userIdentity.arn``
  (``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`` for a role session) and
  ``userIdentity.sessionContext.sourceIdentity``;
* for AssumeRole: ``requestParameters.roleArn``, ``.roleSessionName``, ``.sourceIdentity``,
  ``.tags`` (a list of ``{"key", "value"}``) and ``responseElements.credentials.accessKeyId``;
* ``resources`` (a list of ``{"ARN", "type"}``: S3 data events name the bucket and the object).

A record's secrets are never kept: ``responseElements.credentials.sessionToken`` (present in
AssumeRole records) is not copied into anything this module returns.  Pure: bytes in, values out.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.domain.times import iso_seconds, parse_utc
from broker.errors import InvalidInput

GZIP_MAGIC = b"\x1f\x8b"
STS_SOURCE = "sts.amazonaws.com"
ASSUME_ROLE = "AssumeRole"
# errorCode values that mean "not authorized" (services spell it differently).
DENIED_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Client.UnauthorizedOperation",
    "UnauthorizedAccess", "AuthorizationError", "Forbidden", "NotAuthorized",
})
# eventSource host -> IAM service prefix, where the two differ (most are "<prefix>.amazonaws.com").
SERVICE_PREFIXES: dict[str, str] = {
    "monitoring": "cloudwatch",
    "email": "ses",
    "elasticloadbalancing": "elasticloadbalancing",
    "es": "es",
    "execute-api": "execute-api",
}
# (service prefix, eventName) -> the IAM action that authorizes it, where the two differ.
EVENT_ACTIONS: dict[tuple[str, str], str] = {
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "CopyObject"): "s3:PutObject",
    ("logs", "FilterLogEvents"): "logs:FilterLogEvents",
}


class CloudTrailUnusable(InvalidInput):
    """A file that is not a CloudTrail log file (``{"Records": [...]}``, gzipped or not)."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message, code="cloudtrail_unusable", details={"source": source})


@dataclass(frozen=True)
class AssumeRoleCall:
    """One ``AssumeRole`` record: who got which session of which role (no secret)."""

    event_id: str
    time: datetime
    role_arn: str
    session_name: str | None
    source_identity: str | None
    tags: Mapping[str, str]
    access_key_id: str | None          # of the minted session (absent when the call failed)
    caller: str | None                 # userIdentity.arn, or the account for a cross-account record
    error_code: str | None
    source: str                        # file it came from

    @property
    def succeeded(self) -> bool:
        return self.error_code is None and self.access_key_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "time": iso(self.time), "role_arn": self.role_arn,
                "session_name": self.session_name, "source_identity": self.source_identity,
                "tags": dict(self.tags), "access_key_id": self.access_key_id, "caller": self.caller,
                "error_code": self.error_code, "source": self.source}


@dataclass(frozen=True)
class ApiCall:
    """One API call made with some credentials (the usage side)."""

    event_id: str
    time: datetime
    action: str                        # IAM action, ``service:Name``
    event_name: str
    event_source: str
    access_key_id: str | None
    session_name: str | None           # from an assumed-role ARN
    source_identity: str | None
    resources: tuple[str, ...]         # ARNs CloudTrail names (data events); may be empty
    error_code: str | None
    source: str

    @property
    def denied(self) -> bool:
        return self.error_code in DENIED_CODES


@dataclass
class TrailRecords:
    """What a set of log files held, split by what the broker compares."""

    assume_role: list[AssumeRoleCall] = field(default_factory=list)
    calls: list[ApiCall] = field(default_factory=list)
    files: int = 0
    records: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def add_time(self, moment: datetime) -> None:
        self.first = moment if self.first is None or moment < self.first else self.first
        self.last = moment if self.last is None or moment > self.last else self.last


def iso(moment: datetime | None) -> str | None:
    """CloudTrail's time form (seconds, ``Z``), or None."""
    return None if moment is None else iso_seconds(moment)


def parse_event_time(text: Any, *, source: str) -> datetime:
    if not isinstance(text, str):
        raise CloudTrailUnusable(f"{source}: a record has no eventTime", source=source)
    try:
        return parse_utc(text)
    except ValueError as exc:
        raise CloudTrailUnusable(f"{source}: eventTime {text[:40]!r} is not an ISO 8601 time",
                                 source=source) from exc


def records_of(data: bytes, *, source: str) -> list[Mapping[str, Any]]:
    """The records of one log file's bytes (gzipped or not); unusable input raises, naming the file."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CloudTrailUnusable(f"{source}: not a readable gzip file", source=source) from exc
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CloudTrailUnusable(f"{source}: not JSON", source=source) from exc
    records = document.get("Records") if isinstance(document, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise CloudTrailUnusable(f'{source}: not a CloudTrail log file (expected {{"Records": [...]}})',
                                 source=source)
    return records


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _tags(raw: Any) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, dict):
            # NOTE: the documented spelling is lower-case (key/value); the API's is Key/Value.
            key, value = item.get("key", item.get("Key")), item.get("value", item.get("Value"))
            if isinstance(key, str) and isinstance(value, str):
                tags[key] = value
    return tags


def session_name_of(arn: str | None) -> str | None:
    """``arn:aws:sts::1:assumed-role/ROLE/SESSION`` -> ``SESSION``."""
    if not arn or ":assumed-role/" not in arn:
        return None
    parts = arn.split(":assumed-role/", 1)[1].split("/")
    return parts[-1] if len(parts) >= 2 else None


def action_of(event_source: str, event_name: str) -> str:
    host = event_source.removesuffix(".amazonaws.com")
    prefix = SERVICE_PREFIXES.get(host, host)
    return EVENT_ACTIONS.get((prefix, event_name), f"{prefix}:{event_name}")


def _assume_role(record: Mapping[str, Any], moment: datetime, source: str) -> AssumeRoleCall | None:
    request = record.get("requestParameters") if isinstance(record.get("requestParameters"), dict) else {}
    role_arn = _text(request.get("roleArn"))
    if role_arn is None:
        return None
    response = record.get("responseElements") if isinstance(record.get("responseElements"), dict) else {}
    credentials = response.get("credentials") if isinstance(response.get("credentials"), dict) else {}
    identity = record.get("userIdentity") if isinstance(record.get("userIdentity"), dict) else {}
    return AssumeRoleCall(
        event_id=str(record.get("eventID") or ""), time=moment, role_arn=role_arn,
        session_name=_text(request.get("roleSessionName")),
        source_identity=_text(request.get("sourceIdentity")) or _text(response.get("sourceIdentity")),
        tags=_tags(request.get("tags")),
        # NOTE: only the access key id; the session token in the same object is never copied.
        access_key_id=_text(credentials.get("accessKeyId")),
        caller=_text(identity.get("arn")) or _text(identity.get("accountId")),
        error_code=_text(record.get("errorCode")), source=source)


def _api_call(record: Mapping[str, Any], moment: datetime, source: str) -> ApiCall | None:
    event_source, event_name = _text(record.get("eventSource")), _text(record.get("eventName"))
    if event_source is None or event_name is None:
        return None
    identity = record.get("userIdentity") if isinstance(record.get("userIdentity"), dict) else {}
    context = identity.get("sessionContext") if isinstance(identity.get("sessionContext"), dict) else {}
    resources = tuple(r["ARN"] for r in record.get("resources") or ()
                      if isinstance(r, dict) and isinstance(r.get("ARN"), str)
                      and r.get("type") != "AWS::IAM::AccessKey")
    return ApiCall(event_id=str(record.get("eventID") or ""), time=moment,
                   action=action_of(event_source, event_name), event_name=event_name, event_source=event_source,
                   access_key_id=_text(identity.get("accessKeyId")), session_name=session_name_of(identity.get("arn")),
                   source_identity=_text(context.get("sourceIdentity")), resources=resources,
                   error_code=_text(record.get("errorCode")), source=source)


def read_records(files: Iterable[tuple[str, bytes]]) -> TrailRecords:
    """AssumeRole calls and API calls from ``(source, bytes)`` log files; any unusable file raises."""
    trail = TrailRecords()
    for source, data in files:
        trail.files += 1
        for record in records_of(data, source=source):
            trail.records += 1
            moment = parse_event_time(record.get("eventTime"), source=source)
            trail.add_time(moment)
            if record.get("eventSource") == STS_SOURCE and record.get("eventName") == ASSUME_ROLE:
                call = _assume_role(record, moment, source)
                if call is not None:
                    trail.assume_role.append(call)
                    continue
            api_call = _api_call(record, moment, source)
            if api_call is not None:
                trail.calls.append(api_call)
    return trail
