"""The issuance log: canonical hashing, checkpoints, and detection of every kind of tampering."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain import log
from broker.errors import InvalidInput, LogIntegrityError

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SIZE = 10  # entries in the standard export; its checkpoint is line SIZE + 1


# --- factories -------------------------------------------------------------------------------

def make_body(seq: int, **overrides) -> dict:
    """A realistic entry body (no secret: access key ids only)."""
    body = {
        "event_id": str(uuid.UUID(int=seq)), "time": log.log_time(NOW + timedelta(seconds=seq)),
        "type": "issued", "request_id": str(uuid.UUID(int=10_000 + seq)),
        "grant_id": str(uuid.UUID(int=20_000 + seq)), "actor": "agent:demo",
        "acts_for": "human:alice", "template": "s3-read-bucket", "template_digest": "a" * 64,
        "parameters": {"bucket": "logs-é", "prefix": f"run/{seq}/"}, "policy_digest": "b" * 64,
        "access_key_id": f"ASIA{seq:016d}", "expiration": log.log_time(NOW + timedelta(hours=1)),
        "source_ip": "10.0.0.7", "approvals": [{"approver": "human:bob", "time": log.log_time(NOW)}],
        "reason_code": None, "details": {"ttl_seconds": 900, "hash": "nested keys are fine"},
    }
    body.update(overrides)
    return body


def make_entries(count: int, *, start: int = 1, prev_hash: str = log.GENESIS_HASH) -> list[dict]:
    entries = []
    for seq in range(start, start + count):
        entry = log.seal_entry(make_body(seq), seq=seq, prev_hash=prev_hash)
        prev_hash = entry["hash"]
        entries.append(entry)
    return entries


@cache
def signer() -> log.CheckpointSigner:
    return log.CheckpointSigner(log.generate_signing_key())


@cache
def other_signer() -> log.CheckpointSigner:
    return log.CheckpointSigner(log.generate_signing_key())


def export_of(entries: list[dict], *, by: log.CheckpointSigner | None = None) -> list[bytes]:
    by = by or signer()
    head_seq, head_hash = (entries[-1]["seq"], entries[-1]["hash"]) if entries else (0, log.GENESIS_HASH)
    buffer = io.BytesIO()
    log.write_export(entries, by.sign(head_seq, head_hash, log.log_time(NOW)), buffer)
    return buffer.getvalue().splitlines(keepends=True)


@cache
def standard_export() -> tuple[bytes, ...]:
    return tuple(export_of(make_entries(SIZE)))


def verify(lines) -> log.VerificationReport:
    return log.verify_export(lines, signer().public_key)


# --- tampering helpers (lines are 1-based, as in reports) -------------------------------------

def entry_at(lines: list[bytes], line_no: int) -> dict:
    return json.loads(lines[line_no - 1])


def put(lines: list[bytes], line_no: int, entry: dict) -> None:
    lines[line_no - 1] = log.entry_line(entry) + b"\n"


def edit(line_no: int, *, rehash: bool) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        entry = entry_at(lines, line_no)
        entry["access_key_id"] = "ASIAFORGEDFORGEDFORG"
        put(lines, line_no, log.seal_entry(entry, seq=entry["seq"], prev_hash=entry["prev_hash"])
            if rehash else entry)
    return apply


def delete(*line_nos: int) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        for line_no in sorted(line_nos, reverse=True):
            del lines[line_no - 1]
    return apply


def swap(a: int, b: int) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    return apply


def move_before_checkpoint(line_no: int) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        lines.insert(len(lines) - 1, lines.pop(line_no - 1))
    return apply


def duplicate(line_no: int) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        lines.insert(line_no, lines[line_no - 1])
    return apply


def checkpoint_edit(change: Callable[[dict], None]) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        checkpoint = json.loads(lines[-1])["checkpoint"]
        change(checkpoint)
        lines[-1] = log.canonical_json({"checkpoint": checkpoint}) + b"\n"
    return apply


def flip_signature(checkpoint: dict) -> None:
    raw = bytearray(base64.b64decode(checkpoint["signature"]))
    raw[5] ^= 0x01
    checkpoint["signature"] = base64.b64encode(bytes(raw)).decode()


def resign_with(by: log.CheckpointSigner, *, seq: int | None = None,
                claim_key_id: str | None = None) -> Callable[[list[bytes]], None]:
    """An attacker's own checkpoint (optionally claiming the real key id)."""
    def apply(lines: list[bytes]) -> None:
        old = log.Checkpoint.from_dict(json.loads(lines[-1])["checkpoint"])
        forged = by.sign(old.seq if seq is None else seq, old.head_hash, old.time)
        if claim_key_id is not None:
            forged = log.Checkpoint(seq=forged.seq, head_hash=forged.head_hash, time=forged.time,
                                    key_id=claim_key_id, signature=forged.signature)
        lines[-1] = log.canonical_json({"checkpoint": forged.to_dict()}) + b"\n"
    return apply


def append_chained_entry(*, after_checkpoint: bool) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        last = entry_at(lines, SIZE)
        fake = log.seal_entry(make_body(SIZE + 1), seq=SIZE + 1, prev_hash=last["hash"])
        lines.insert(len(lines) if after_checkpoint else len(lines) - 1,
                     log.entry_line(fake) + b"\n")
    return apply


def rewrite_chain_from(line_no: int) -> Callable[[list[bytes]], None]:
    """Edit one entry and recompute every later hash: only the checkpoint can catch it."""
    def apply(lines: list[bytes]) -> None:
        prev_hash = entry_at(lines, line_no)["prev_hash"]
        for number in range(line_no, SIZE + 1):
            entry = entry_at(lines, number)
            if number == line_no:
                entry["type"] = "denied"
            entry = log.seal_entry(entry, seq=entry["seq"], prev_hash=prev_hash)
            prev_hash = entry["hash"]
            put(lines, number, entry)
    return apply


def replace_line(line_no: int, raw: bytes) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        lines[line_no - 1] = raw
    return apply


def respace(line_no: int) -> Callable[[list[bytes]], None]:
    """Same JSON meaning, non-canonical bytes."""
    def apply(lines: list[bytes]) -> None:
        lines[line_no - 1] = json.dumps(entry_at(lines, line_no), ensure_ascii=False).encode() + b"\n"
    return apply


def chain_first_from_elsewhere(lines: list[bytes]) -> None:
    entry = entry_at(lines, 1)
    put(lines, 1, log.seal_entry(entry, seq=1, prev_hash="0" * 64))


def drop_checkpoint(lines: list[bytes]) -> None:
    del lines[-1]


def add_second_checkpoint(lines: list[bytes]) -> None:
    lines.append(lines[-1])


def respace_checkpoint(lines: list[bytes]) -> None:
    lines[-1] = json.dumps(json.loads(lines[-1])).encode() + b"\n"


CP = SIZE + 1  # line of the checkpoint
# name -> (tampering, problem, first_bad_seq, line)
TAMPERING = {
    "edit a field": (edit(4, rehash=False), "modified", 4, 4),
    "edit a field, recompute its hash": (edit(4, rehash=True), "broken_chain", 4, 4),
    "edit the last entry, recompute its hash": (edit(SIZE, rehash=True), "head_mismatch", SIZE, SIZE),
    "delete an entry": (delete(5), "removed", 5, 5),
    "delete three entries": (delete(5, 6, 7), "removed", 5, 5),
    "swap two entries": (swap(3, 4), "reordered", 4, 3),
    "move an entry to the end": (move_before_checkpoint(2), "reordered", 3, 2),
    "duplicate an entry": (duplicate(6), "duplicated", 6, 7),
    "truncate the tail": (delete(9, 10), "truncated", 9, 9),
    "forge the checkpoint signature": (checkpoint_edit(flip_signature), "bad_signature", SIZE, CP),
    "change the checkpoint seq": (checkpoint_edit(lambda c: c.update(seq=8)), "bad_signature", 8, CP),
    "change the checkpoint head": (checkpoint_edit(lambda c: c.update(head_hash="c" * 64)),
                                   "bad_signature", SIZE, CP),
    "re-sign with another key": (resign_with(other_signer()), "wrong_key", SIZE, CP),
    "re-sign claiming the real key id": (resign_with(other_signer(), seq=8,
                                                     claim_key_id=signer().key_id),
                                         "bad_signature", 8, CP),
    "append an entry after the checkpoint": (append_chained_entry(after_checkpoint=True),
                                             "appended", SIZE + 1, CP + 1),
    "append a chained entry before the checkpoint": (append_chained_entry(after_checkpoint=False),
                                                     "appended", SIZE + 1, SIZE + 1),
    "rewrite the chain from an entry on": (rewrite_chain_from(5), "head_mismatch", SIZE, SIZE),
    "first entry not from genesis": (chain_first_from_elsewhere, "broken_chain", 1, 1),
    "non-canonical spacing": (respace(3), "modified", 3, 3),
    "blank line": (replace_line(6, b"\n"), "malformed", None, 6),
    "garbage line": (replace_line(6, b"not json\n"), "malformed", None, 6),
    "array line": (replace_line(6, b"[1,2]\n"), "malformed", None, 6),
    "entry without hash": (replace_line(6, b'{"seq":6}\n'), "malformed", 6, 6),
    "no checkpoint": (drop_checkpoint, "no_checkpoint", None, None),
    "second checkpoint": (add_second_checkpoint, "malformed", None, CP + 1),
    "non-canonical checkpoint": (respace_checkpoint, "malformed", None, CP),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_detected_and_located(name):
    tamper, problem, first_bad_seq, line = TAMPERING[name]
    lines = list(standard_export())
    tamper(lines)
    report = verify(lines)
    assert not report.ok
    assert report.problem == problem, report.message
    assert report.problem in log.PROBLEMS
    assert (report.first_bad_seq, report.line) == (first_bad_seq, line), report.message
    if first_bad_seq is not None:
        assert f"seq {first_bad_seq}" in report.message


def test_deleting_the_first_entry_reads_as_a_partial_export():
    # The export then starts mid-log at seq 2, whose prev_hash is taken as given, so the cut is
    # invisible at the start (as for `export --since`); the report must say so.
    lines = list(standard_export())
    del lines[0]
    report = verify(lines)
    # Honest about what it checked: the chain starts at seq 2 and says so.
    assert report.ok and report.starts_mid_log and report.first_seq == 2
    assert "taken as given" in report.message


@pytest.mark.parametrize("cut", [1, 3])
def test_complete_export_must_start_at_genesis(cut):
    lines = list(standard_export())[cut:]
    report = log.verify_export(lines, signer().public_key, require_genesis=True)
    assert (report.ok, report.problem, report.first_bad_seq, report.line) == (False, "removed", 1, 1)
    assert log.verify_export(standard_export(), signer().public_key, require_genesis=True).ok


def test_intact_export_verifies():
    report = verify(standard_export())
    assert report == log.VerificationReport(
        ok=True, entries=SIZE, checkpoint_seq=SIZE, first_bad_seq=None, line=None, problem="",
        message=report.message, first_seq=1, starts_mid_log=False, checkpoints=1)
    assert "taken as given" not in report.message


def test_export_may_start_mid_log():
    entries = make_entries(SIZE)
    report = verify(export_of(entries[4:]))
    assert report.ok and report.first_seq == 5 and report.entries == SIZE - 4
    assert report.starts_mid_log and "taken as given" in report.message


def test_mid_log_export_still_chains_after_its_first_entry():
    lines = export_of(make_entries(SIZE)[4:])
    edit(3, rehash=True)(lines)  # seq 7
    report = verify(lines)
    assert (report.problem, report.first_bad_seq, report.line) == ("broken_chain", 7, 3)


def test_export_without_entries_proves_nothing():
    report = verify(export_of([]))
    assert not report.ok and report.problem == "no_entries"


def test_empty_input_has_no_checkpoint():
    assert verify([]).problem == "no_checkpoint"


def test_wrong_public_key_is_refused():
    report = log.verify_export(standard_export(), other_signer().public_key)
    assert (report.ok, report.problem) == (False, "wrong_key")


def test_str_lines_and_missing_final_newline_are_accepted():
    lines = [line.decode() for line in standard_export()]
    lines[-1] = lines[-1].rstrip("\n")
    assert verify(lines).ok


def test_carriage_return_is_not_ignored():
    lines = list(standard_export())
    lines[2] = lines[2].replace(b"\n", b"\r\n")
    assert verify(lines).problem == "modified"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_in_an_entry_line_is_detected(data):
    lines = list(standard_export())
    index = data.draw(st.integers(0, SIZE - 1), label="entry line")
    raw = bytearray(lines[index])
    position = data.draw(st.integers(0, len(raw) - 1), label="byte")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]), label="new byte")
    raw[position] = new
    lines[index] = bytes(raw)
    report = verify(lines)
    assert not report.ok
    # Naming the changed entry (or, if the change broke the line apart, its line).
    assert report.line in (index + 1, index + 2)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(st.dictionaries(st.sampled_from(log.ENTRY_FIELDS), json_values),
                       min_size=1, max_size=5))
def test_any_sealed_log_verifies_and_round_trips(bodies):
    entries, prev_hash = [], log.GENESIS_HASH
    for seq, body in enumerate(bodies, start=1):
        entry = log.seal_entry(body, seq=seq, prev_hash=prev_hash)
        assert log.entry_hash(entry) == entry["hash"]
        assert json.loads(log.entry_line(entry)) == entry
        prev_hash = entry["hash"]
        entries.append(entry)
    assert verify(export_of(entries)).ok


# --- hashing and sealing -------------------------------------------------------------------------

def test_entry_hash_is_domain_separated_sha256_of_canonical_body():
    entry = make_entries(1)[0]
    body = {key: value for key, value in entry.items() if key != "hash"}
    import hashlib
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert entry["hash"] == hashlib.sha256(log.ENTRY_PREFIX + canonical).hexdigest()
    assert entry["hash"] != hashlib.sha256(canonical).hexdigest()
    assert log.ENTRY_PREFIX != log.CHECKPOINT_PREFIX


def test_hash_ignores_key_order_and_changes_with_any_field():
    entry = make_entries(1)[0]
    assert log.entry_hash(dict(reversed(list(entry.items())))) == entry["hash"]
    for field in log.ENTRY_FIELDS + ("seq", "prev_hash"):
        changed = dict(entry, **{field: "other"})
        assert log.entry_hash(changed) != entry["hash"], field


def test_seal_overrides_chain_fields_from_the_body():
    body = dict(make_body(1), seq=99, prev_hash="f" * 64, hash="0" * 64)
    entry = log.seal_entry(body, seq=1, prev_hash=log.GENESIS_HASH)
    assert (entry["seq"], entry["prev_hash"]) == (1, log.GENESIS_HASH)
    assert entry["hash"] == log.entry_hash(entry)


def test_seal_normalises_to_what_is_hashed():
    entry = log.seal_entry({"approvals": ("a", "b")}, seq=1, prev_hash=log.GENESIS_HASH)
    assert entry["approvals"] == ["a", "b"]


@pytest.mark.parametrize("seq, prev_hash", [
    (0, log.GENESIS_HASH), (-1, log.GENESIS_HASH), (True, log.GENESIS_HASH), ("1", log.GENESIS_HASH),
    (1.0, log.GENESIS_HASH), (1, ""), (1, "A" * 64), (1, "a" * 63), (1, "g" * 64), (1, None),
])
def test_seal_refuses_bad_chain_fields(seq, prev_hash):
    with pytest.raises(InvalidInput):
        log.seal_entry({}, seq=seq, prev_hash=prev_hash)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), b"bytes", "\ud800",
                                   {1: "x", "a": "y"}])
def test_values_without_canonical_form_are_refused(value):
    with pytest.raises(InvalidInput):
        log.seal_entry({"details": value}, seq=1, prev_hash=log.GENESIS_HASH)


def test_genesis_hash_is_sha256_of_its_label():
    import hashlib
    assert log.GENESIS_HASH == hashlib.sha256(log.GENESIS_LABEL).hexdigest()


# --- checkpoints and keys ----------------------------------------------------------------------------

def test_checkpoint_sign_and_verify():
    checkpoint = signer().sign(3, "d" * 64, log.log_time(NOW))
    assert log.verify_checkpoint(checkpoint, signer().public_key)
    assert not log.verify_checkpoint(checkpoint, other_signer().public_key)
    assert log.Checkpoint.from_dict(checkpoint.to_dict()) == checkpoint
    assert len(checkpoint.key_id) == 16 and checkpoint.key_id == log.key_id_of(signer().public_key)


@pytest.mark.parametrize("change", [
    {"seq": 4}, {"head_hash": "e" * 64}, {"time": "2030-01-01T00:00:00.000000Z"},
    {"signature": "!!!!"}, {"signature": ""}, {"key_id": "0" * 16},
])
def test_checkpoint_with_any_field_changed_fails(change):
    checkpoint = signer().sign(3, "d" * 64, log.log_time(NOW))
    forged = log.Checkpoint(**dict(checkpoint.to_dict(), **change))
    assert not log.verify_checkpoint(forged, signer().public_key)


@pytest.mark.parametrize("data", [
    None, [], {}, {"seq": 1}, {"seq": -1, "head_hash": "a" * 64, "time": "t", "key_id": "a" * 16,
                               "signature": "x"},
    {"seq": True, "head_hash": "a" * 64, "time": "t", "key_id": "a" * 16, "signature": "x"},
    {"seq": 1, "head_hash": "A" * 64, "time": "t", "key_id": "a" * 16, "signature": "x"},
    {"seq": 1, "head_hash": "a" * 64, "time": "t", "key_id": "a" * 15, "signature": "x"},
    {"seq": 1, "head_hash": "a" * 64, "time": "t", "key_id": "a" * 16, "signature": "x", "x": 1},
])
def test_malformed_checkpoints_are_refused(data):
    with pytest.raises(InvalidInput):
        log.Checkpoint.from_dict(data)


def test_signing_key_pem_round_trip():
    key = log.generate_signing_key()
    again = log.load_signing_key(log.private_key_pem(key))
    assert log.public_key_pem(again) == log.public_key_pem(key) == log.public_key_pem(key.public_key())
    public = log.load_public_key(log.public_key_pem(key))
    assert log.key_id_of(public) == log.CheckpointSigner(key).key_id


@pytest.mark.parametrize("pem", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_unreadable_keys_are_refused(pem):
    with pytest.raises(InvalidInput):
        log.load_signing_key(pem)
    with pytest.raises(InvalidInput):
        log.load_public_key(pem)


def test_non_ed25519_keys_are_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(InvalidInput):
        log.load_signing_key(private)
    with pytest.raises(InvalidInput):
        log.load_public_key(public)
    with pytest.raises(InvalidInput):
        log.CheckpointSigner(key)


# --- stored chains, time -------------------------------------------------------------------------------

def test_verify_chain_of_stored_entries_and_require_intact():
    entries = make_entries(4)
    checkpoint = signer().sign(4, entries[-1]["hash"], log.log_time(NOW))
    assert log.require_intact(log.verify_chain(entries, checkpoint, signer().public_key)).ok
    entries[1] = dict(entries[1], actor="agent:mallory")
    report = log.verify_chain(entries, checkpoint, signer().public_key)
    assert (report.problem, report.first_bad_seq) == ("modified", 2)
    with pytest.raises(LogIntegrityError) as caught:
        log.require_intact(report)
    assert caught.value.details["first_bad_seq"] == 2


def test_log_time_format():
    assert log.log_time(NOW) == "2024-05-01T12:00:00.123456Z"
    assert log.log_time(NOW.astimezone(__import__("datetime").timezone(timedelta(hours=2)))) \
        == "2024-05-01T12:00:00.123456Z"
    with pytest.raises(InvalidInput):
        log.log_time(NOW.replace(tzinfo=None))


@pytest.mark.parametrize("text, expected", [
    ("7d", NOW - timedelta(days=7)), ("24h", NOW - timedelta(hours=24)),
    ("30m", NOW - timedelta(minutes=30)), (" 1d ", NOW - timedelta(days=1)),
    ("2024-04-01T00:00:00Z", datetime(2024, 4, 1, tzinfo=UTC)),
    ("2024-04-01T02:00:00+02:00", datetime(2024, 4, 1, tzinfo=UTC)),
    ("2024-04-01", datetime(2024, 4, 1, tzinfo=UTC)),
])
def test_parse_since(text, expected):
    assert log.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "0d", "-7d", "7w", "7 d", "1e3h", "yesterday",
                                  "2024-13-01", "9999999d"])
def test_parse_since_refuses(text):
    with pytest.raises(InvalidInput):
        log.parse_since(text, NOW)


@pytest.mark.parametrize(("body", "stored"), [
    ({"template": "x\x00y"}, {"template": "x\ufffdy"}),
    ({"details": {"message": "a\x00", "k\x00": ["\x00", 1, None]}},
     {"details": {"message": "a\ufffd", "k\ufffd": ["\ufffd", 1, None]}}),
    ({"details": {"message": "a backslash then u0000: \\u0000"}},
     {"details": {"message": "a backslash then u0000: \\u0000"}}),
])
def test_an_entry_never_holds_nul(body, stored):
    """PostgreSQL holds U+0000 neither as text nor as JSONB (the body indexes): a refusal carrying a caller's NUL
    must still be written, so sealing puts U+FFFD in its place (docs/log-format.md, section 3)."""
    entry = log.seal_entry({"type": "refused", "event_id": "e", "time": "2026-01-01T00:00:00.000000Z", **body},
                           seq=1, prev_hash=log.GENESIS_HASH)
    assert {key: entry[key] for key in stored} == stored
    line = log.entry_line(entry)
    assert b"\x00" not in line and (b"\\u0000" not in line or b"\\\\u0000" in line)
    # What is stored is what was hashed: sealing the stored form again gives the same hash.
    again = {key: value for key, value in json.loads(line).items() if key not in ("seq", "prev_hash", "hash")}
    assert log.seal_entry(again, seq=1, prev_hash=log.GENESIS_HASH)["hash"] == entry["hash"]
