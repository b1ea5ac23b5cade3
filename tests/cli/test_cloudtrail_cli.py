"""`broker audit reconcile` and `broker scopes usage` on sessions the broker minted on moto, with the CloudTrail
records those calls would make (tests.cloudtrail_recorder), and on AWS's documented AssumeRole records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest

from broker.aws.sts import StsMinter, aws_client
from broker.cli.main import main
from tests.cloudtrail_recorder import CloudTrailRecorder
from tests.conftest import TEST_SCOPES, build_harness

BROKER_KEY, BROKER_ARN = "AKIABROKERSELFEXAMPLE", "arn:aws:sts::123456789012:assumed-role/broker-service/i-0abc"
DOCUMENTED = Path(__file__).parent.parent / "fixtures" / "cloudtrail" / "aws-doc-assumerole.json"
WIDE = """
name: test-s3-wide
description: Read the whole demo bucket (wider than any task needs).
environment: dev
role: "arn:aws:iam::123456789012:role/broker-target-s3-wide"
statements:
  - sid: ReadObjects
    actions: ["s3:GetObject", "s3:GetObjectTagging", "s3:GetObjectVersion"]
    resources: ["arn:aws:s3:::broker-demo-bucket/*"]
  - sid: Tags
    actions: ["s3:GetBucketTagging"]
    resources: ["arn:aws:s3:::broker-demo-bucket"]
ttl: {default: 900, max: 1800}
requesters: ["agent:*"]
"""


@pytest.fixture
def recorded(moto_server, tmp_path):
    """A broker whose STS calls are recorded as CloudTrail AssumeRole records, and that recorder."""
    scopes = tmp_path / "scopes"
    shutil.copytree(TEST_SCOPES, scopes)
    (scopes / "wide.yaml").write_text(WIDE)
    trail = CloudTrailRecorder()
    client = trail.attach(aws_client("sts", endpoint_url=moto_server.endpoint_url, region="us-east-1"),
                          access_key_id=BROKER_KEY, arn=BROKER_ARN)
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=scopes,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state",
                            minter=StsMinter(endpoint_url=None, region="us-east-1", client=client))
    harness.scopes = scopes
    yield harness, trail
    harness.container.database.engine.dispose()


def issue(harness, template="test-s3-read", parameters=None) -> dict:
    response = harness.post("/v1/requests", "agent:demo", json={"template": template, "reason": "bug 42",
                                                                "parameters": parameters or {}})
    assert response.status_code == 201, response.text
    return response.json()


def export(harness, tmp_path: Path) -> Path:
    response = harness.get("/v1/events/export", "human:rita")
    assert response.status_code == 200
    path = tmp_path / "log.jsonl"
    path.write_bytes(response.content)
    return path


def run_json(capsys, argv) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def reconcile_json(harness, tmp_path, capsys, trail_dir, *extra):
    log = export(harness, tmp_path)
    return run_json(capsys, ["audit", "reconcile", "--cloudtrail", str(trail_dir), "--log", str(log),
                             "--public-key", str(harness.state_dir / "log-public-key.pem"),
                             "--scopes", str(harness.scopes), "--since", "2h", "--format", "json", *extra])


def test_every_minted_session_is_matched_both_ways(recorded, tmp_path, capsys):
    harness, trail = recorded
    issue(harness)
    issue(harness, parameters={"prefix": "logs"})
    assert [r["eventName"] for r in trail.records] == ["AssumeRole", "AssumeRole"]
    trail.write(tmp_path / "trail")
    code, report = reconcile_json(harness, tmp_path, capsys, tmp_path / "trail")
    assert code == 0 and report["complete"] and report["matched"] == 2, report
    assert report["unlogged_sessions"] == [] and report["missing_from_cloudtrail"] == []
    assert main(["audit", "reconcile", "--cloudtrail", str(tmp_path / "trail"), "--log", str(tmp_path / "log.jsonl"),
                 "--scopes", str(harness.scopes)]) == 0
    assert "COMPLETE: 2 matched, 0 unlogged" in capsys.readouterr().out


def test_a_session_minted_around_the_broker_is_a_gap(recorded, moto_server, tmp_path, capsys):
    harness, trail = recorded
    issue(harness)
    # Someone with the broker's own AWS credentials assumes a target role directly.
    sts = trail.attach(boto3.client("sts", endpoint_url=moto_server.endpoint_url, region_name="us-east-1"),
                       access_key_id=BROKER_KEY, arn=BROKER_ARN)
    sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/broker-target-s3-read", RoleSessionName="side-door")
    trail.write(tmp_path / "trail", gzipped=False)
    code, report = reconcile_json(harness, tmp_path, capsys, tmp_path / "trail")
    assert code == 1 and not report["complete"]
    (gap,) = report["unlogged_sessions"]
    assert gap["session_name"] == "side-door" and gap["why"] == "not made through the broker"
    assert report["matched"] == 1


def test_an_issued_entry_cloudtrail_never_saw_is_a_gap(recorded, tmp_path, capsys):
    harness, trail = recorded
    first, _second = issue(harness), issue(harness)
    trail.records.pop()                               # the second AssumeRole never reached the trail
    trail.write(tmp_path / "trail")
    code, report = reconcile_json(harness, tmp_path, capsys, tmp_path / "trail")
    assert code == 1
    (missing,) = report["missing_from_cloudtrail"]
    assert missing["access_key_id"] != first["credentials"]["access_key_id"]


def test_a_record_whose_identity_disagrees_with_the_log_is_a_mismatch(recorded, tmp_path, capsys):
    harness, trail = recorded
    issue(harness)
    trail.records[0]["requestParameters"]["sourceIdentity"] = "agent.mallory"
    trail.write(tmp_path / "trail")
    code, report = reconcile_json(harness, tmp_path, capsys, tmp_path / "trail")
    assert code == 1 and "SourceIdentity" in report["mismatches"][0]["problem"]


def test_unusable_input_is_exit_2(recorded, tmp_path, capsys):
    harness, trail = recorded
    issue(harness)
    (tmp_path / "trail").mkdir()
    (tmp_path / "trail" / "broken.json.gz").write_bytes(b"\x1f\x8bnot gzip")
    log = export(harness, tmp_path)
    base = ["audit", "reconcile", "--log", str(log), "--scopes", str(harness.scopes)]
    assert main([*base, "--cloudtrail", str(tmp_path / "trail")]) == 2
    assert main([*base, "--cloudtrail", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([*base, "--cloudtrail", str(tmp_path / "empty")]) == 2
    # A tampered export does not verify: unusable, not "complete".
    trail.write(tmp_path / "ok")
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:1] + lines[2:]))
    assert main([*base, "--cloudtrail", str(tmp_path / "ok"), "--public-key",
                 str(harness.state_dir / "log-public-key.pem")]) == 2
    assert "does not verify" in capsys.readouterr().err
    # A public key that cannot be read is unusable input too (not a traceback).
    assert main([*base, "--cloudtrail", str(tmp_path / "ok"), "--public-key", str(tmp_path / "no-such.pem")]) == 2
    assert "[public_key_invalid]" in capsys.readouterr().err


def test_the_documented_aws_records_are_sessions_nobody_logged(recorded, tmp_path, capsys):
    harness, _trail = recorded
    log = export(harness, tmp_path)
    code, report = run_json(capsys, ["audit", "reconcile", "--cloudtrail", str(DOCUMENTED), "--log", str(log),
                                     "--role", "arn:aws:iam::*:role/EC2-dev", "--since", "2014-07-18T00:00:00",
                                     "--until", "2014-07-19T00:00:00", "--format", "json"])
    assert code == 1
    assert [g["session_name"] for g in report["unlogged_sessions"]] == ["JohnDoe-EC2-dev"]


def test_usage_per_statement_and_a_tightened_template(recorded, moto_server, tmp_path, capsys):
    harness, trail = recorded
    body = issue(harness, template="test-s3-wide")
    creds = body["credentials"]
    s3 = trail.attach(boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1",
                                   aws_access_key_id=creds["access_key_id"],
                                   aws_secret_access_key=creds["secret_access_key"],
                                   aws_session_token=creds["session_token"]),
                      access_key_id=creds["access_key_id"],
                      arn=f"arn:aws:sts::123456789012:assumed-role/broker-target-s3-wide/{body['grant']['session_name']}",
                      source_identity=body["grant"]["source_identity"])
    s3.get_object(Bucket="broker-demo-bucket", Key="reports/2026-10-costs.csv")
    s3.get_object(Bucket="broker-demo-bucket", Key="reports/2026-11-costs.csv")
    # moto enforces no policy: AWS's answer to a call outside the scope is written as CloudTrail records it.
    denied = dict(trail.records[-1], eventName="DeleteObject", errorCode="AccessDenied", eventID="denied-1")
    trail.add(denied)
    # A call by some other session is not this template's.
    trail.add(dict(trail.records[-2], eventID="other-1", userIdentity={"accessKeyId": "ASIAOTHEREXAMPLE"}))
    trail.write(tmp_path / "trail")
    log = export(harness, tmp_path)
    suggestion = tmp_path / "tight.yaml"
    code, usage = run_json(capsys, ["scopes", "usage", "test-s3-wide", "--scopes", str(harness.scopes),
                                    "--cloudtrail", str(tmp_path / "trail"), "--log", str(log), "--format", "json",
                                    "--suggest", str(suggestion)])
    assert code == 0
    assert (usage["sessions"], usage["sessions_with_calls"], usage["calls"]) == (1, 1, 3)
    read, tags = usage["statements"]
    assert read["used"] == {"s3:GetObject": 2}
    assert set(read["never_used"]) == {"s3:GetObjectTagging", "s3:GetObjectVersion"}
    assert read["resources"][0]["used"] == ["arn:aws:s3:::broker-demo-bucket/reports/2026-10-costs.csv",
                                             "arn:aws:s3:::broker-demo-bucket/reports/2026-11-costs.csv"]
    assert tags["used"] == {} and tags["never_used"] == ["s3:GetBucketTagging"]
    assert usage["denied_not_granted"] == [{"action": "s3:DeleteObject", "resource":
                                            "arn:aws:s3:::broker-demo-bucket/reports/2026-11-costs.csv", "calls": 1}]
    # The suggestion keeps what was used, lints clean, and the diff says it narrows.
    text = suggestion.read_text()
    assert "s3:GetObjectTagging" not in text and "GetBucketTagging" not in text
    assert main(["scopes", "usage", "test-s3-wide", "--scopes", str(harness.scopes), "--cloudtrail",
                 str(tmp_path / "trail"), "--log", str(log)]) == 0
    text = capsys.readouterr().out
    assert "used      s3:GetObject (2 call(s))" in text and "DENIED, not granted: s3:DeleteObject" in text
    text = suggestion.read_text()
    assert main(["scopes", "lint", str(suggestion), "--strict"]) == 0
    assert main(["scopes", "diff", str(harness.scopes / "wide.yaml"), str(suggestion)]) == 0
    assert main(["scopes", "diff", str(suggestion), str(harness.scopes / "wide.yaml")]) == 1


def test_without_log_the_export_comes_from_the_api(recorded, tmp_path, capsys):
    from broker.api.app import create_app
    from tests.live_server import serve

    harness, trail = recorded
    issue(harness)
    trail.write(tmp_path / "trail")
    with serve(create_app(harness.container)) as server:
        base = ["audit", "reconcile", "--cloudtrail", str(tmp_path / "trail"), "--scopes", str(harness.scopes),
                "--url", server.url, "--format", "json"]
        code, report = run_json(capsys, [*base, "--token", harness.keys["human:rita"]])
        assert code == 0 and report["matched"] == 1
        assert main([*base, "--token", "not-a-key"]) == 2          # refused by the broker: unusable, not complete
        token_file = tmp_path / "rita.token"                        # the same token options as every command
        token_file.write_text(harness.keys["human:rita"] + "\n")
        code, report = run_json(capsys, [*base, "--token-file", str(token_file)])
        assert code == 0 and report["matched"] == 1
