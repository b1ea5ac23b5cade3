"""CloudTrail records for calls made against moto (which keeps no trail): a botocore hook writes, for each
call a client makes, the record CloudTrail documents for it (eventTime, eventSource, eventName,
userIdentity with the signing access key id, requestParameters, responseElements, errorCode, and for S3
object calls the data event's resources).  AssumeRole records carry the request's roleArn,
roleSessionName, sourceIdentity and tags and the minted accessKeyId, as the documented example does."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


class CloudTrailRecorder:
    def __init__(self, account: str = "123456789012") -> None:
        self.account = account
        self.records: list[dict[str, Any]] = []

    def attach(self, client, *, access_key_id: str, arn: str, source_identity: str | None = None) -> Any:
        """Record every call ``client`` makes as if signed by ``access_key_id`` (the caller's identity ``arn``)."""
        pending: dict[int, dict[str, Any]] = {}

        def before(params, model, context, **_kwargs):
            pending[id(context)] = dict(params)

        def after(http_response, parsed, model, context, **_kwargs):
            params = pending.pop(id(context), {})
            self.records.append(self._record(model, params, parsed, http_response.status_code, access_key_id,
                                             arn, source_identity))

        client.meta.events.register("before-parameter-build", before)
        client.meta.events.register("after-call", after)
        return client

    def _record(self, model, params, parsed, status, access_key_id, arn, source_identity) -> dict[str, Any]:
        service = model.service_model.endpoint_prefix
        identity: dict[str, Any] = {"type": "AssumedRole" if ":assumed-role/" in arn else "IAMUser",
                                    "arn": arn, "accountId": self.account, "accessKeyId": access_key_id}
        if source_identity:
            identity["sessionContext"] = {"sourceIdentity": source_identity,
                                          "attributes": {"mfaAuthenticated": "false"}}
        record: dict[str, Any] = {
            "eventVersion": "1.08", "userIdentity": identity,
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": f"{service}.amazonaws.com", "eventName": model.name, "awsRegion": "us-east-1",
            "sourceIPAddress": "192.0.2.10", "userAgent": "botocore (recorded in tests)",
            "requestParameters": {_lower_first(k): v for k, v in params.items()
                                  if isinstance(v, str | int | bool)},
            "responseElements": None, "eventID": str(uuid.uuid4()), "eventType": "AwsApiCall",
            "recipientAccountId": self.account,
        }
        if status >= 300:
            error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
            record["errorCode"] = error.get("Code") or "AccessDenied"
            record["errorMessage"] = "recorded in tests"
        if model.name == "AssumeRole":
            request = record["requestParameters"]
            request["tags"] = [{"key": t["Key"], "value": t["Value"]} for t in params.get("Tags", [])]
            if status < 300:
                credentials = parsed["Credentials"]
                record["responseElements"] = {
                    "credentials": {"accessKeyId": credentials["AccessKeyId"],
                                    "expiration": credentials["Expiration"].strftime("%b %d, %Y %I:%M:%S %p"),
                                    "sessionToken": credentials["SessionToken"]},
                    "assumedRoleUser": {"assumedRoleId": parsed["AssumedRoleUser"]["AssumedRoleId"],
                                        "arn": parsed["AssumedRoleUser"]["Arn"]},
                    "sourceIdentity": params.get("SourceIdentity")}
        if service == "s3" and "Bucket" in params:
            resources = [{"type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{params['Bucket']}"}]
            if "Key" in params:
                resources.insert(0, {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"})
            record["resources"] = resources
        return record

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def write(self, folder: Path, *, gzipped: bool = True) -> Path:
        """One log file as a trail delivers it (``AWSLogs/<account>/CloudTrail/us-east-1/...json.gz``)."""
        target = folder / "AWSLogs" / self.account / "CloudTrail" / "us-east-1" / datetime.now(UTC).strftime("%Y/%m/%d")
        target.mkdir(parents=True, exist_ok=True)
        name = f"{self.account}_CloudTrail_us-east-1_{uuid.uuid4().hex[:8]}.json"
        data = json.dumps({"Records": self.records}, default=str).encode()
        path = target / (name + ".gz" if gzipped else name)
        path.write_bytes(gzip.compress(data) if gzipped else data)
        return path
