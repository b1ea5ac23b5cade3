"""Format 2: checkpoints that name their predecessor, the signed export statement, trusted
checkpoints, and the rule the broker signs by (the chain extends the last checkpoint)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache

import pytest

from broker.domain import log
from tests.domain.test_log import NOW, make_entries, other_signer, signer

TIME = log.log_time(NOW)
SIZE = 12
EVERY = 4  # a checkpoint after seq 4, 8 and 12


def signed_chain(entries: list[dict], *, every: int = EVERY, by: log.CheckpointSigner | None = None,
                 previous: log.Checkpoint | None = None) -> list[log.Checkpoint]:
    """The checkpoints a broker signing every ``every`` entries (and at the end) would hold."""
    by = by or signer()
    checkpoints: list[log.Checkpoint] = []
    for entry in entries:
        if entry["seq"] % every == 0 or entry is entries[-1]:
            prev = (checkpoints[-1] if checkpoints else previous)
            checkpoints.append(by.sign(entry["seq"], entry["hash"], TIME,
                                       prev_checkpoint=prev.hash() if prev else log.GENESIS_HASH))
    return checkpoints


def chained_export(entries: list[dict], checkpoints: list[log.Checkpoint], *, since: str | None = None,
                   by: log.CheckpointSigner | None = None) -> list[bytes]:
    by = by or signer()
    statement = by.sign_export(checkpoints[-1], first_seq=entries[0]["seq"], since=since, time=TIME)
    return list(log.chained_export_lines(entries, checkpoints, statement))


@cache
def standard() -> tuple[tuple[dict, ...], tuple[log.Checkpoint, ...], tuple[bytes, ...]]:
    entries = make_entries(SIZE)
    checkpoints = signed_chain(entries)
    return tuple(entries), tuple(checkpoints), tuple(chained_export(entries, checkpoints))


def lines_of() -> list[bytes]:
    return list(standard()[2])


def verify(lines, **kwargs) -> log.VerificationReport:
    return log.verify_export(lines, signer().public_key, **kwargs)


def kinds(lines: list[bytes]) -> list[str]:
    return ["checkpoint" if b'"checkpoint"' in line[:16] else "export" if line.startswith(b'{"export"')
            else str(json.loads(line)["seq"]) for line in lines]


def test_layout_puts_each_checkpoint_after_its_entry_and_the_statement_before_the_last():
    assert kinds(lines_of()) == ["1", "2", "3", "4", "checkpoint", "5", "6", "7", "8", "checkpoint",
                                 "9", "10", "11", "12", "export", "checkpoint"]


def test_intact_chained_export_verifies():
    report = verify(lines_of())
    assert report.ok, report.message
    assert (report.entries, report.checkpoints, report.full, report.checkpoint_seq) == (SIZE, 3, True, SIZE)


def test_checkpoint_hash_is_domain_separated_sha256_of_its_canonical_form():
    checkpoint = standard()[1][0]
    import hashlib
    assert checkpoint.hash() == hashlib.sha256(b"\x02" + log.canonical_json(checkpoint.to_dict())).hexdigest()
    assert checkpoint.message() == b"\x01" + log.canonical_json(
        {k: v for k, v in checkpoint.to_dict().items() if k != "signature"})


def line_index(lines: list[bytes], kind: str, nth: int = 0) -> int:
    return [i for i, k in enumerate(kinds(lines)) if k == kind][nth]


def drop(kind: str, nth: int = 0) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        del lines[line_index(lines, kind, nth)]
    return apply


def cut_oldest(count: int) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        del lines[:count]
    return apply


def resign_checkpoint(nth: int) -> Callable[[list[bytes]], None]:
    """The key holder signs the same head again (another time): the next no longer names it."""
    def apply(lines: list[bytes]) -> None:
        index = line_index(lines, "checkpoint", nth)
        old = log.Checkpoint.from_dict(json.loads(lines[index])["checkpoint"])
        again = signer().sign(old.seq, old.head_hash, "2030-01-01T00:00:00.000000Z",
                              prev_checkpoint=old.prev_checkpoint)
        lines[index] = log.checkpoint_line(again)
    return apply


def downgrade_checkpoint(nth: int) -> Callable[[list[bytes]], None]:
    """A format-1 checkpoint (no predecessor), validly signed, after chained ones."""
    def apply(lines: list[bytes]) -> None:
        index = line_index(lines, "checkpoint", nth)
        old = log.Checkpoint.from_dict(json.loads(lines[index])["checkpoint"])
        lines[index] = log.checkpoint_line(signer().sign(old.seq, old.head_hash, old.time))
    return apply


def statement_edit(**change) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        index = line_index(lines, "export")
        data = json.loads(lines[index])["export"]
        data.update(change)
        lines[index] = log.canonical_json({"export": data}) + b"\n"
    return apply


def resign_statement(**change) -> Callable[[list[bytes]], None]:
    def apply(lines: list[bytes]) -> None:
        index = line_index(lines, "export")
        data = log.ExportStatement.from_dict(json.loads(lines[index])["export"])
        final = log.Checkpoint.from_dict(json.loads(lines[-1])["checkpoint"])
        fields = {"first_seq": data.first_seq, "since": data.since, **change}
        lines[index] = log.statement_line(signer().sign_export(final, time=TIME, **fields))
    return apply


def move_checkpoint_back(lines: list[bytes]) -> None:
    index = line_index(lines, "checkpoint", 0)
    lines.insert(index - 1, lines.pop(index))


def entry_after_statement(lines: list[bytes]) -> None:
    lines.insert(len(lines) - 1, lines[line_index(lines, "12")])


# name -> (tampering, problem)
TAMPERING = {
    "cut the oldest entries of a full export": (cut_oldest(2), "removed"),
    "cut the oldest entries and their checkpoint": (cut_oldest(5), "removed"),
    "drop the export statement": (drop("export"), "no_statement"),
    "drop an intermediate checkpoint": (drop("checkpoint", 1), "checkpoint_chain"),
    "drop the first checkpoint": (drop("checkpoint", 0), "checkpoint_chain"),
    "re-sign an intermediate checkpoint": (resign_checkpoint(1), "checkpoint_chain"),
    "re-sign the final checkpoint": (resign_checkpoint(2), "statement_mismatch"),
    "downgrade a checkpoint to format 1": (downgrade_checkpoint(1), "checkpoint_chain"),
    "edit the statement": (statement_edit(full=False), "bad_signature"),
    "statement re-signed for a later start": (resign_statement(first_seq=3, since=TIME), "statement_mismatch"),
    "statement claims an earlier start": (resign_statement(first_seq=2, since=TIME), "statement_mismatch"),
    "checkpoint before its entry": (move_checkpoint_back, "reordered"),
    "entry after the statement": (entry_after_statement, "appended"),
    "line after the final checkpoint": (lambda lines: lines.append(lines[0]), "malformed"),
    "drop the final checkpoint": (drop("checkpoint", 2), "appended"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_with_chained_checkpoints_is_detected(name):
    tamper, problem = TAMPERING[name]
    lines = lines_of()
    tamper(lines)
    report = verify(lines)
    assert (report.ok, report.problem) == (False, problem), report.message
    assert problem in log.PROBLEMS


def test_since_export_takes_its_first_checkpoint_predecessor_as_given():
    entries, checkpoints, _ = standard()
    lines = chained_export(list(entries[6:]), list(checkpoints[1:]), since=TIME)
    report = verify(lines)
    assert report.ok and report.starts_mid_log and report.full is False, report.message
    del lines[0]
    assert verify(lines).problem == "removed"


def test_a_log_upgraded_from_format_1_checkpoints_verifies():
    entries = make_entries(SIZE)
    old = [signer().sign(4, entries[3]["hash"], TIME)]  # signed before the upgrade
    checkpoints = old + signed_chain(entries[4:], previous=old[0])
    assert verify(chained_export(entries, checkpoints)).ok


def test_a_rotated_key_verifies_with_both_public_keys():
    entries = make_entries(SIZE)
    first = signed_chain(entries[:8])
    later = signed_chain(entries[8:], by=other_signer(), previous=first[-1])
    lines = chained_export(entries, first + later, by=other_signer())
    assert verify(lines).problem == "wrong_key"
    report = log.verify_export(lines, [signer().public_key, other_signer().public_key])
    assert report.ok and report.checkpoints == 3, report.message


@pytest.mark.parametrize("nth", [0, 1, 2])
def test_trusted_checkpoint_extended(nth):
    _, checkpoints, lines = standard()
    report = verify(lines, trusted=[checkpoints[nth]])
    assert report.ok and report.trusted == 1, report.message


def forked_log() -> list[bytes]:
    """The key holder rewrites entry 3 and re-signs everything: self-consistent, but a fork."""
    entries = make_entries(SIZE)
    prev_hash = entries[1]["hash"]
    forged = entries[:2]
    for entry in entries[2:]:
        body = dict(entry, type="denied") if entry["seq"] == 3 else entry
        forged.append(log.seal_entry(body, seq=entry["seq"], prev_hash=prev_hash))
        prev_hash = forged[-1]["hash"]
    return chained_export(forged, signed_chain(forged))


def test_a_re_signed_rewrite_verifies_alone_but_not_against_a_trusted_checkpoint():
    _, checkpoints, _ = standard()
    forged = forked_log()
    assert verify(forged).ok  # whoever holds the key can sign anything: hence trusted checkpoints
    report = verify(forged, trusted=[checkpoints[0]])
    assert (report.problem, report.first_bad_seq) == ("fork", 4), report.message


def test_trusted_checkpoint_beyond_the_export_is_a_missing_tail():
    entries, checkpoints, _ = standard()
    shorter = chained_export(list(entries[:8]), list(checkpoints[:2]))
    report = verify(shorter, trusted=[checkpoints[2]])
    assert (report.problem, report.first_bad_seq) == ("behind_trusted", 9), report.message


def test_trusted_checkpoint_before_a_since_export_is_not_covered():
    entries, checkpoints, _ = standard()
    lines = chained_export(list(entries[6:]), list(checkpoints[1:]), since=TIME)
    assert verify(lines, trusted=[checkpoints[0]]).problem == "trusted_not_covered"
    assert verify(lines, trusted=[checkpoints[1]]).ok


# --- the broker's signing rule -----------------------------------------------------------------

def stored(entries) -> list[bytes]:
    return [log.entry_line(entry) for entry in entries]


def test_check_extends_accepts_a_chain_that_extends_the_checkpoint():
    entries = make_entries(SIZE)
    latest = signer().sign(4, entries[3]["hash"], TIME, prev_checkpoint=log.GENESIS_HASH)
    assert log.check_extends(latest, stored(entries[3:]), head_seq=SIZE, head_hash=entries[-1]["hash"]) is None
    genesis = signer().sign(0, log.GENESIS_HASH, TIME, prev_checkpoint=log.GENESIS_HASH)
    assert log.check_extends(genesis, stored(entries), head_seq=SIZE, head_hash=entries[-1]["hash"]) is None
    assert log.check_extends(genesis, [], head_seq=0, head_hash=log.GENESIS_HASH) is None


def test_check_extends_refuses_a_head_moved_back():
    entries = make_entries(SIZE)
    latest = signer().sign(8, entries[7]["hash"], TIME)
    refusal = log.check_extends(latest, stored(entries[7:6]), head_seq=6, head_hash=entries[5]["hash"])
    assert refusal is not None and refusal.reason == "head_behind_checkpoint"


def test_check_extends_refuses_a_rewritten_and_re_chained_log():
    entries = make_entries(SIZE)
    latest = signer().sign(8, entries[7]["hash"], TIME)
    prev_hash, forged = entries[1]["hash"], []
    for entry in entries[2:]:
        forged.append(log.seal_entry(dict(entry, type="denied"), seq=entry["seq"], prev_hash=prev_hash))
        prev_hash = forged[-1]["hash"]
    refusal = log.check_extends(latest, stored(forged[5:]), head_seq=SIZE, head_hash=forged[-1]["hash"])
    assert refusal is not None and refusal.reason == "checkpoint_fork"


@pytest.mark.parametrize("damage, reason", [
    (lambda rows: rows.__setitem__(2, rows[2].replace(b"agent:demo", b"agent:demx")), "chain_broken"),
    (lambda rows: rows.pop(2), "chain_broken"),
    (lambda rows: rows.pop(), "head_mismatch"),
])
def test_check_extends_refuses_damage_after_the_checkpoint(damage, reason):
    entries = make_entries(SIZE)
    latest = signer().sign(4, entries[3]["hash"], TIME)
    rows = stored(entries[3:])
    damage(rows)
    refusal = log.check_extends(latest, rows, head_seq=SIZE, head_hash=entries[-1]["hash"])
    assert refusal is not None and refusal.reason == reason



def test_a_checkpoint_of_the_empty_log_comes_first():
    entries = make_entries(SIZE)
    empty = signer().sign(0, log.GENESIS_HASH, TIME, prev_checkpoint=log.GENESIS_HASH)
    lines = chained_export(entries, [empty, *signed_chain(entries, previous=empty)])
    assert kinds(lines)[0] == "checkpoint"
    report = verify(lines)
    assert report.ok and report.first_seq == 1 and report.checkpoints == 4, report.message
    del lines[1]
    assert verify(lines).problem == "removed"


class _IdentityKeySigner:
    """A degenerate "key": the identity point, for which (R = the base point, S = 1) passes OpenSSL's Ed25519 check
    for every message, and which libsodium refuses (a small-order point)."""

    def public_key(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(bytes([1]) + bytes(31))

    def sign(self, data: bytes) -> bytes:
        return bytes.fromhex("58" + "66" * 31) + bytes([1]) + bytes(31)


def test_the_verdict_on_a_checkpoint_signature_is_openssls_where_libsodium_refuses_it():
    # The verifier checks checkpoint signatures with libsodium first (faster), which refuses more than OpenSSL does:
    # a signature it refuses is judged again by OpenSSL, so the report is what it was before libsodium was used.
    degenerate = log.CheckpointSigner(_IdentityKeySigner())
    entries = make_entries(SIZE)
    lines = chained_export(entries, signed_chain(entries, by=degenerate), by=degenerate)
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    with pytest.raises(BadSignatureError):
        VerifyKey(bytes([1]) + bytes(31)).verify(b"message", degenerate._key.sign(b"message"))
    report = log.verify_export(lines, degenerate.public_key)
    assert report.ok and report.checkpoints == 3, report.message
    # And a signature both refuse stays refused.
    forged = lines_of()
    assert log.verify_export(forged, degenerate.public_key).problem == "wrong_key"
    honest = signer()
    first = next(i for i, line in enumerate(lines_of()) if line.startswith(b'{"checkpoint":'))
    tampered = list(lines_of())
    signature = json.loads(tampered[first])["checkpoint"]["signature"]
    other = ("B" if signature[0] == "A" else "A") + signature[1:]
    tampered[first] = tampered[first].replace(signature.encode(), other.encode())
    assert log.verify_export(tampered, honest.public_key).problem == "bad_signature"
