"""The CloudTrail reader, on AWS's documented AssumeRole examples and on hostile files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from broker.domain.cloudtrail import CloudTrailUnusable, action_of, read_records, records_of, session_name_of

# Records copied from AWS's IAM User Guide, "Logging IAM and AWS STS API calls with AWS CloudTrail"
# (the cross-account AssumeRole, the role-chaining AssumeRole with session tags, a DeleteBucket call).
DOCUMENTED = Path(__file__).parent.parent / "fixtures" / "cloudtrail" / "aws-doc-assumerole.json"


def test_documented_assume_role_records_are_read_field_by_field():
    trail = read_records([("doc.json", DOCUMENTED.read_bytes())])
    assert (trail.files, trail.records, len(trail.assume_role), len(trail.calls)) == (1, 3, 2, 1)
    cross, chained = trail.assume_role
    assert cross.role_arn == "arn:aws:iam::111122223333:role/EC2-dev"
    assert (cross.session_name, cross.source_identity) == ("JohnDoe-EC2-dev", "JohnDoe")
    assert cross.access_key_id == "AKIAQRSTUVWXYZEXAMPLE" and cross.succeeded
    assert chained.tags == {"Email": "johndoe@example.com", "CostCenter": "12345"}
    assert chained.access_key_id == "ASIAWHOJDLGPOEXAMPLE"
    assert chained.caller == "arn:aws:sts::111111111111:assumed-role/JohnDoe/JohnRole1"
    (call,) = trail.calls
    assert (call.action, call.session_name, call.access_key_id) == ("s3:DeleteBucket", "devdsk",
                                                                     "AKIAQRSTUVWXYZEXAMPLE")
    assert trail.first.year == 2014 and trail.last.year == 2019


def test_the_session_token_of_an_assume_role_record_is_never_kept():
    trail = read_records([("doc.json", DOCUMENTED.read_bytes())])
    kept = json.dumps([c.to_dict() for c in trail.assume_role]) + repr(trail)
    assert "EXAMPLETOKEN" not in kept and "session token blob" not in kept


def test_gzipped_and_plain_files_read_the_same():
    data = DOCUMENTED.read_bytes()
    plain = read_records([("a.json", data)])
    zipped = read_records([("a.json.gz", gzip.compress(data))])
    assert [c.to_dict() | {"source": ""} for c in plain.assume_role] == \
        [c.to_dict() | {"source": ""} for c in zipped.assume_role]


@pytest.mark.parametrize("data, why", [
    (b"", "not JSON"),
    (b"\x1f\x8b\x08garbage", "gzip"),
    (b"[]", "Records"),
    (b'{"records": []}', "Records"),
    (b'{"Records": [1, 2]}', "Records"),
    (b'{"Records": "x"}', "Records"),
    (gzip.compress(b"{not json", mtime=0), "not JSON"),
    (b'{"Records": [{"eventSource": "sts.amazonaws.com", "eventName": "AssumeRole"}]}', "eventTime"),
    (b'{"Records": [{"eventTime": "yesterday"}]}', "eventTime"),
])
def test_unusable_files_are_refused_naming_the_file(data, why):
    with pytest.raises(CloudTrailUnusable) as exc:
        read_records([("trail/bad.json", data)])
    assert "trail/bad.json" in str(exc.value) and why in str(exc.value)
    assert exc.value.code == "cloudtrail_unusable"


def test_an_assume_role_without_a_role_or_answer_is_not_a_session():
    record = {"eventTime": "2026-01-01T00:00:00Z", "eventSource": "sts.amazonaws.com", "eventName": "AssumeRole",
              "errorCode": "AccessDenied", "requestParameters": {"roleArn": "arn:aws:iam::1:role/r",
                                                                  "roleSessionName": "s"},
              "responseElements": None}
    (call,) = read_records([("f", json.dumps({"Records": [record]}).encode())]).assume_role
    assert not call.succeeded and call.error_code == "AccessDenied" and call.access_key_id is None
    assert records_of(b'{"Records": []}', source="empty") == []


@pytest.mark.parametrize("source, name, action", [
    ("s3.amazonaws.com", "GetObject", "s3:GetObject"),
    ("s3.amazonaws.com", "ListObjectsV2", "s3:ListBucket"),
    ("s3.amazonaws.com", "HeadObject", "s3:GetObject"),
    ("monitoring.amazonaws.com", "GetMetricData", "cloudwatch:GetMetricData"),
    ("logs.amazonaws.com", "GetLogEvents", "logs:GetLogEvents"),
])
def test_event_names_map_to_iam_actions(source, name, action):
    assert action_of(source, name) == action


@pytest.mark.parametrize("arn, name", [
    ("arn:aws:sts::1:assumed-role/Role/Session", "Session"),
    ("arn:aws:sts::1:assumed-role/path/Role/Session", "Session"),
    ("arn:aws:iam::1:user/Alice", None),
    (None, None),
    ("arn:aws:sts::1:assumed-role/OnlyRole", None),
])
def test_session_names_come_from_assumed_role_arns(arn, name):
    assert session_name_of(arn) == name
