"""docs/log-format.md is the format: its test vectors are what the broker writes, and a verifier written from
the document alone (tests/conformance/verifier.py, which imports nothing of broker) agrees with
``broker audit verify`` on intact and tampered exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.domain import log
from tests.conformance import verifier
from tests.domain import test_log, test_log_checkpoint_chain as chained

DOC = Path(__file__).resolve().parents[2] / "docs" / "log-format.md"
# The test key of the vectors: never use it for anything else.
VECTOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
T1, T2, T3 = "2026-01-02T03:04:05.000000Z", "2026-01-02T03:04:06.000000Z", "2026-01-02T03:04:07.000000Z"


def vector_export() -> bytes:
    """Three entries, a checkpoint after seq 2 and the export's final one after seq 3, a full export."""
    signer = log.CheckpointSigner(VECTOR_KEY)
    bodies = [
        {"event_id": "00000000-0000-4000-8000-000000000001", "time": T1, "type": "requested",
         "actor": "agent:demo", "acts_for": "human:alice", "template": "s3-read", "parameters": {"prefix": "café"},
         "reason_code": None, "details": {"ttl_seconds": 900}},
        {"event_id": "00000000-0000-4000-8000-000000000002", "time": T2, "type": "issued",
         "actor": "agent:demo", "access_key_id": "ASIAEXAMPLE0000001", "approvals": [], "details": {}},
        {"event_id": "00000000-0000-4000-8000-000000000003", "time": T3, "type": "revoked",
         "actor": "human:alice", "reason_code": "done", "details": {"note": "line\nbreak \"quoted\" \u00e9\u4e2d"}},
    ]
    entries, prev_hash = [], log.GENESIS_HASH
    for seq, body in enumerate(bodies, start=1):
        entries.append(log.seal_entry(body, seq=seq, prev_hash=prev_hash))
        prev_hash = entries[-1]["hash"]
    first = signer.sign(2, entries[1]["hash"], T2, prev_checkpoint=log.GENESIS_HASH)
    final = signer.sign(3, entries[2]["hash"], T3, prev_checkpoint=first.hash())
    statement = signer.sign_export(final, first_seq=1, since=None, time=T3)
    return b"".join(log.chained_export_lines(entries, [first, final], statement))


def doc_block(name: str) -> str:
    """The fenced block after ``<!-- vector:NAME -->`` in the document."""
    match = re.search(rf"<!-- vector:{name} -->\s*```[a-z]*\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"docs/log-format.md has no vector:{name} block"
    return match.group(1)


def test_the_documents_vectors_are_what_the_broker_writes():
    assert doc_block("export").encode("utf-8") == vector_export()
    assert doc_block("public-key") == log.public_key_pem(VECTOR_KEY).decode()
    assert doc_block("genesis").strip() == log.GENESIS_HASH
    assert doc_block("key-id").strip() == log.key_id_of(VECTOR_KEY.public_key())


def test_the_vectors_verify_both_ways():
    lines = vector_export().splitlines(keepends=True)
    assert log.verify_export(lines, VECTOR_KEY.public_key()).ok
    assert verifier.verify(lines, [VECTOR_KEY.public_key()]) == (True, "3 entries verified")


def cases():
    """(lines, public key) of intact and tampered exports: both formats' tampering tables."""
    yield "vector", vector_export().splitlines(keepends=True), VECTOR_KEY.public_key()
    for name, (tamper, *_) in test_log.TAMPERING.items():
        lines = list(test_log.standard_export())
        tamper(lines)
        yield f"format 1: {name}", lines, test_log.signer().public_key
    yield "format 2: intact", chained.lines_of(), chained.signer().public_key
    for name, (tamper, _) in chained.TAMPERING.items():
        lines = chained.lines_of()
        tamper(lines)
        yield f"format 2: {name}", lines, chained.signer().public_key


CASES = {name: (lines, key) for name, lines, key in cases()}


@pytest.mark.parametrize("name", CASES)
def test_the_independent_verifier_agrees_with_broker_audit_verify(name):
    lines, key = CASES[name]
    ours = log.verify_export(lines, key)
    theirs, why = verifier.verify(lines, [key])
    assert theirs == ours.ok, f"broker: {ours.problem} {ours.message}; independent: {why}"


def test_the_independent_verifier_runs_on_files(tmp_path):
    export = tmp_path / "log.jsonl"
    export.write_bytes(vector_export())
    pem = tmp_path / "key.pem"
    pem.write_bytes(log.public_key_pem(VECTOR_KEY))
    assert verifier.main([str(export), str(pem)]) == 0
    export.write_bytes(vector_export().replace(b"caf\xc3\xa9", b"cafe"))
    assert verifier.main([str(export), str(pem)]) == 1


def test_the_spec_is_what_a_reviewer_reads_first_in_the_readme():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Security reviewers\n", 1)[1]
    first_paragraph = section.strip().split("\n\n", 1)[0]
    assert "(docs/log-format.md)" in first_paragraph


# An export written by the broker of 2026-11-25 (commit b66c301: format 1, entries then one checkpoint), from a
# `broker dev` of that version: an issued dev scope, a production scope co-signed by two and redeemed, a refusal.
OLD = DOC.parents[1] / "tests" / "fixtures" / "log"


def test_an_export_written_by_the_format_1_broker_still_verifies(tmp_path, capsys):
    from broker.cli.main import main

    export, pem = OLD / "format1-export.jsonl", OLD / "format1-public-key.pem"
    lines = export.read_bytes().splitlines(keepends=True)
    assert not any(b'"prev_checkpoint"' in line or line.startswith(b'{"export"') for line in lines)
    assert main(["audit", "verify", str(export), "--public-key", str(pem), "--complete"]) == 0
    assert "OK" in capsys.readouterr().out
    key = log.load_public_key(pem.read_bytes())
    assert verifier.verify(lines, [key]) == (True, f"{len(lines) - 1} entries verified")
    # ... and a one-byte change of it does not.
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(export.read_bytes().replace(b'"reviewed CHG-118"', b'"reviewed CHG-119"', 1))
    assert tampered.read_bytes() != export.read_bytes()
    assert main(["audit", "verify", str(tampered), "--public-key", str(pem)]) == 1
    assert verifier.verify(tampered.read_bytes().splitlines(keepends=True), [key])[0] is False
