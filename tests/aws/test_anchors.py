"""Checkpoint anchors in S3 with Object Lock (compliance mode), against moto's server over HTTP: the broker
puts every checkpoint it signs there, no one can overwrite or delete them, and
``broker audit verify --anchors`` checks an export against them (a fork, a missing tail)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import boto3
import pytest
from botocore.exceptions import ClientError

from broker.aws.anchors import S3CheckpointAnchors, parse_anchor_url
from broker.cli.main import main
from broker.domain import log as issuance_log
from tests.api.test_events_api import export, issue
from tests.conftest import TEST_SCOPES, build_harness
from tests.security.test_log_forgery import Attacker, checkpoint, forged_export


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_server


@pytest.fixture
def bucket(aws_env) -> str:
    name = f"anchors-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_an_anchor_is_locked_in_compliance_mode(bucket):
    anchors = S3CheckpointAnchors(bucket=bucket, retention_days=1)
    signer = issuance_log.CheckpointSigner(issuance_log.generate_signing_key())
    checkpoint = signer.sign(3, "a" * 64, "2026-01-01T00:00:00.000000Z", prev_checkpoint=issuance_log.GENESIS_HASH)
    key = anchors.put(checkpoint, now=datetime.now(UTC))
    assert anchors.checkpoints() == [checkpoint]
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    version = head["VersionId"]
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    assert anchors.checkpoints() == [checkpoint]


def test_anchor_urls():
    assert parse_anchor_url("s3://b/checkpoints/") == ("b", "checkpoints/")
    assert parse_anchor_url("s3://b") == ("b", "")
    for bad in ("b/prefix", "s3:///prefix", "https://b/x"):
        with pytest.raises(Exception, match="s3://bucket/prefix"):
            parse_anchor_url(bad)


@pytest.fixture
def anchored_broker(db_url, bucket, aws_env, tmp_path):
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=aws_env.endpoint_url,
                            state_dir=tmp_path / "state", anchor_bucket=bucket, anchor_retention_days=1)
    yield harness
    harness.container.database.engine.dispose()


def verify(tmp_path, broker, content: bytes, bucket: str) -> int:
    key = tmp_path / "key.pem"
    key.write_text(broker.client.get("/v1/events/public-key").text)
    exported = tmp_path / "log.jsonl"
    exported.write_bytes(content)
    return main(["audit", "verify", str(exported), "--public-key", str(key), "--anchors", f"s3://{bucket}/checkpoints/"])


def test_the_broker_anchors_what_it_signs_and_verify_checks_exports_against_them(anchored_broker, bucket, tmp_path,
                                                                                 capsys):
    issue(anchored_broker)
    first = checkpoint(anchored_broker).json()
    issue(anchored_broker)
    content = export(anchored_broker)  # signs (and anchors) the head
    anchored = S3CheckpointAnchors(bucket=bucket).checkpoints()
    assert [c.to_dict() for c in anchored][0] == first and len(anchored) == 2
    assert verify(tmp_path, anchored_broker, content, bucket) == 0
    assert "extends 2 trusted checkpoint(s)" in capsys.readouterr().out

    # The key holder signs a rewritten history: the anchors name the fork.
    attacker = Attacker(anchored_broker)
    attacker.drop_triggers()
    entries = attacker.entries()
    rewritten = issuance_log.seal_entry(dict(entries[1], actor="agent:mallory"), seq=2,
                                        prev_hash=entries[1]["prev_hash"])
    prev_hash = rewritten["hash"]
    attacker.write_entry(rewritten)
    for entry in entries[2:]:
        entry = issuance_log.seal_entry(entry, seq=entry["seq"], prev_hash=prev_hash)
        attacker.write_entry(entry)
        prev_hash = entry["hash"]
    assert verify(tmp_path, anchored_broker, forged_export(anchored_broker, attacker), bucket) == 1
    assert "[fork]" in capsys.readouterr().err

    # An export that stops early misses the anchored tail.
    lines = content.splitlines(keepends=True)
    first_cp = next(i for i, line in enumerate(lines) if line.startswith(b'{"checkpoint":'))
    early = lines[:first_cp + 1]
    final = issuance_log.Checkpoint.from_dict(json.loads(early[-1])["checkpoint"])
    statement = anchored_broker.container.signer.sign_export(final, first_seq=1, since=None, time=final.time)
    early.insert(len(early) - 1, issuance_log.statement_line(statement))
    assert verify(tmp_path, anchored_broker, b"".join(early), bucket) == 1
    assert "[behind_trusted]" in capsys.readouterr().err


def test_after_a_restart_the_anchors_stop_a_rolled_back_database(db_url, bucket, aws_env, tmp_path):
    """Entries and their checkpoint rows cut while the broker was down: the new process compares the stored
    checkpoints with the newest anchored one, and refuses to sign."""
    def start():
        return build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=aws_env.endpoint_url,
                             state_dir=tmp_path / "state", anchor_bucket=bucket, anchor_retention_days=1)

    first = start()
    issue(first)
    assert checkpoint(first).status_code == 200
    issue(first)
    assert checkpoint(first).status_code == 200
    attacker = Attacker(first)
    first.container.database.engine.dispose()
    attacker.drop_triggers()
    kept = attacker.entries()[:2]
    attacker.run("DELETE FROM events WHERE seq > 2")
    attacker.run("DELETE FROM checkpoints WHERE seq > 2")
    attacker.move_head(2, kept[-1]["hash"])
    again = start()
    try:
        response = checkpoint(again)
        assert response.status_code == 409 and response.json()["error"]["code"] == "checkpoint_refused", response.text
    finally:
        again.container.database.engine.dispose()
