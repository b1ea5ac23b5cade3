"""Exports: their layout and the verifier (``broker audit verify``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.errors import InvalidInput, LogIntegrityError

from broker.domain.log.chain import (CHECKPOINT_KEY, ENTRY_PREFIX, GENESIS_HASH, HASH_FIELD, PREV_HASH_FIELD, SEQ_FIELD, canonical_json,
                    entry_line, is_hex64, is_seq)
from broker.domain.log.checkpoints import Checkpoint, key_id_of, verify_checkpoint


# --- Export --------------------------------------------------------------------------------

def export_lines(entries: Iterable[Mapping[str, Any]], checkpoint: Checkpoint) -> Iterator[bytes]:
    """The lines of an export (each ending with a newline): entries, then the checkpoint."""
    for entry in entries:
        yield entry_line(entry) + b"\n"
    yield canonical_json({CHECKPOINT_KEY: checkpoint.to_dict()}) + b"\n"


def write_export(entries: Iterable[Mapping[str, Any]], checkpoint: Checkpoint,
                 out: IO[bytes]) -> None:
    """Write an export to a binary stream."""
    for line in export_lines(entries, checkpoint):
        out.write(line)


# Problem codes of a failed verification: code -> what it means.  Stable (API/CLI contract).
PROBLEMS = {
    "modified": "an entry's content does not match its own hash",
    "broken_chain": "an entry's hash is not the prev_hash of the entry after it "
                    "(altered with its hash recomputed, or entries removed and renumbered)",
    "removed": "a seq is missing",
    "reordered": "an entry is out of seq order",
    "duplicated": "a seq appears twice",
    "truncated": "the export ends before the checkpoint's seq",
    "head_mismatch": "the last entry's hash is not the checkpoint's head hash "
                     "(the chain was rewritten)",
    "appended": "entries appear beyond the signed checkpoint",
    "bad_signature": "the checkpoint's signature is not valid for the given key",
    "wrong_key": "the checkpoint was signed by another key",
    "no_checkpoint": "the export has no checkpoint line at its end",
    "no_entries": "the export holds no entries, so it proves nothing",
    "malformed": "a line is not a well-formed entry or checkpoint",
}


@dataclass(frozen=True)
class VerificationReport:
    """The outcome of verifying an export.  ``ok`` is False unless every check passed."""

    ok: bool
    entries: int
    checkpoint_seq: int | None
    first_bad_seq: int | None
    line: int | None  # 1-based line number in the export
    problem: str  # "" when ok, otherwise a key of PROBLEMS
    message: str
    first_seq: int | None = None
    # True when the export starts after seq 1: the first prev_hash was taken as given.
    starts_mid_log: bool = False


class _Failure(Exception):
    """Internal: stops verification at the first problem."""

    def __init__(self, problem: str, message: str, *, seq: int | None, line: int | None) -> None:
        super().__init__(message)
        self.problem, self.message, self.seq, self.line = problem, message, seq, line


_HASH_MEMBER = b'"hash":"'


def _body_bytes(raw: bytes, stated_hash: str, line_no: int, seq: int) -> bytes:
    """The line without its top-level ``"hash":"<hex>"`` member (the hashed bytes)."""
    member = _HASH_MEMBER + stated_hash.encode("ascii") + b'"'
    start = raw.find(member)
    end = start + len(member)
    if start < 0 or raw.find(member, end) >= 0:  # not canonical (or a forged nested copy)
        raise _Failure("modified", f"entry seq {seq} at line {line_no} was modified: it is not "
                       "in the canonical form its hash was computed over.", seq=seq, line=line_no)
    if raw[end:end + 1] == b",":
        return raw[:start] + raw[end + 1:]
    if raw[start - 1:start] == b",":
        return raw[:start - 1] + raw[end:]
    return raw[:start] + raw[end:]


def _parse_line(raw: bytes, line_no: int) -> dict[str, Any]:
    # Parsing only reads seq/prev_hash/hash; the hash covers the raw bytes, so the parser's
    # choice (orjson, ~2x faster than json here) cannot change what is verified.
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Failure("malformed", f"line {line_no} is not valid JSON.", seq=None,
                       line=line_no) from exc
    if not isinstance(obj, dict):
        raise _Failure("malformed", f"line {line_no} is not a JSON object.", seq=None, line=line_no)
    return obj


def _check_entry(obj: dict[str, Any], raw: bytes, line_no: int) -> tuple[int, str, str]:
    """Shape and self-hash of one entry line -> (seq, prev_hash, hash)."""
    seq, prev_hash, stated = obj.get(SEQ_FIELD), obj.get(PREV_HASH_FIELD), obj.get(HASH_FIELD)
    if not (is_seq(seq) and is_hex64(prev_hash) and is_hex64(stated)):
        named = f"line {line_no} (entry seq {seq})" if is_seq(seq) else f"line {line_no}"
        raise _Failure("malformed", f"{named} lacks a valid seq, prev_hash or hash.",
                       seq=seq if is_seq(seq) else None, line=line_no)
    actual = hashlib.sha256(ENTRY_PREFIX + _body_bytes(raw, stated, line_no, seq)).hexdigest()
    if actual != stated:
        raise _Failure("modified", f"entry seq {seq} at line {line_no} was modified: its content "
                       "does not match its hash.", seq=seq, line=line_no)
    return seq, prev_hash, stated


def _classify_gap(expected: int, seq: int, line_no: int,
                  rest: Iterator[tuple[int, bytes]]) -> _Failure:
    """Entry ``seq`` sits where ``expected`` should: removed, or reordered (found later)?"""
    for later_no, raw in rest:
        try:
            later = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        later_seq = later.get(SEQ_FIELD) if isinstance(later, dict) else None
        if is_seq(later_seq) and expected <= later_seq < seq:
            return _Failure("reordered", f"entry seq {seq} at line {line_no} is out of order: seq "
                            f"{expected} belongs there and appears later, at line {later_no}.",
                            seq=seq, line=line_no)
    missing = (f"entry seq {expected}" if seq == expected + 1
               else f"entries seq {expected} to seq {seq - 1}")
    return _Failure("removed", f"{missing} removed: line {line_no} jumps to seq {seq}.",
                    seq=expected, line=line_no)


class _ExportVerifier:
    """Walks an export line by line; raises _Failure at the first problem."""

    def __init__(self, public_key: Ed25519PublicKey, *, require_genesis: bool) -> None:
        self.public_key = public_key
        self.require_genesis = require_genesis
        self.count = 0
        self.first_seq: int | None = None
        self.last_seq, self.last_hash, self.last_line = 0, GENESIS_HASH, 0
        self.checkpoint: Checkpoint | None = None
        self.checkpoint_line = 0

    def run(self, lines: Iterable[bytes | str]) -> VerificationReport:
        numbered = ((no, (raw.encode("utf-8") if isinstance(raw, str) else raw).removesuffix(b"\n"))
                    for no, raw in enumerate(lines, start=1))
        for line_no, raw in numbered:
            if not raw:
                raise _Failure("malformed", f"line {line_no} is empty.", seq=None, line=line_no)
            obj = _parse_line(raw, line_no)
            if CHECKPOINT_KEY in obj:
                self._take_checkpoint(obj, raw, line_no)
            elif self.checkpoint is not None:
                seq = obj.get(SEQ_FIELD) if is_seq(obj.get(SEQ_FIELD)) else None
                named = f"entry seq {seq} at line {line_no}" if seq else f"line {line_no}"
                raise _Failure("appended", f"{named} follows the checkpoint (line "
                               f"{self.checkpoint_line}); entries after it are not signed.",
                               seq=seq, line=line_no)
            else:
                self._take_entry(obj, raw, line_no, numbered)
        return self._finish()

    def _take_checkpoint(self, obj: dict[str, Any], raw: bytes, line_no: int) -> None:
        if self.checkpoint is not None or len(obj) != 1:
            raise _Failure("malformed", f"line {line_no} is a second or malformed checkpoint.",
                           seq=None, line=line_no)
        self.checkpoint, self.checkpoint_line = _read_checkpoint(obj, raw, line_no), line_no

    def _take_entry(self, obj: dict[str, Any], raw: bytes, line_no: int,
                    rest: Iterator[tuple[int, bytes]]) -> None:
        seq, prev_hash, this_hash = _check_entry(obj, raw, line_no)
        last_seq = self.last_seq
        if self.first_seq is None:
            self.first_seq = seq
            if seq > 1 and self.require_genesis:
                raise _Failure("removed", f"entries seq 1 to seq {seq - 1} removed: the export "
                               f"starts at seq {seq} (line {line_no}).", seq=1, line=line_no)
            if seq == 1 and prev_hash != GENESIS_HASH:
                raise _Failure("broken_chain", f"entry seq 1 at line {line_no} does not start "
                               "from the genesis hash.", seq=1, line=line_no)
        elif seq > last_seq + 1:
            raise _classify_gap(last_seq + 1, seq, line_no, rest)
        elif seq <= last_seq:
            kind = "duplicated" if seq == last_seq else "reordered"
            raise _Failure(kind, f"entry seq {seq} at line {line_no} comes after seq {last_seq} "
                           f"(line {self.last_line}).", seq=seq, line=line_no)
        elif prev_hash != self.last_hash:
            raise _Failure("broken_chain", f"entry seq {last_seq} at line {self.last_line} is not "
                           f"the entry that seq {seq} (line {line_no}) was chained to: it was "
                           "altered with its hash recomputed, or entries were removed and "
                           "renumbered.", seq=last_seq, line=self.last_line)
        self.count += 1
        self.last_seq, self.last_hash, self.last_line = seq, this_hash, line_no

    def _finish(self) -> VerificationReport:
        checkpoint, last_seq, last_line = self.checkpoint, self.last_seq, self.last_line
        if checkpoint is None:
            raise _Failure("no_checkpoint", "the export does not end with a checkpoint line, so "
                           "its end cannot be checked.", seq=None, line=None)
        _check_signature(checkpoint, self.public_key, self.checkpoint_line)
        if self.first_seq is None:
            raise _Failure("no_entries", "the export holds no entries.", seq=None, line=None)
        if last_seq < checkpoint.seq:
            raise _Failure("truncated", f"the export ends at seq {last_seq} (line {last_line}) but "
                           f"the checkpoint covers seq {checkpoint.seq}: seq {last_seq + 1} "
                           "onwards is missing.", seq=last_seq + 1, line=self.checkpoint_line)
        if last_seq > checkpoint.seq:
            seq = max(checkpoint.seq + 1, self.first_seq)
            raise _Failure("appended", f"entry seq {seq} at line "
                           f"{last_line - (last_seq - seq)} is beyond the checkpoint (seq "
                           f"{checkpoint.seq}), so it is not signed.",
                           seq=seq, line=last_line - (last_seq - seq))
        if self.last_hash != checkpoint.head_hash:
            raise _Failure("head_mismatch", f"entry seq {last_seq} at line {last_line} is not the "
                           "head the checkpoint signed: the chain up to it was rewritten.",
                           seq=last_seq, line=last_line)
        starts_mid = self.first_seq > 1
        message = (f"{self.count} entries (seq {self.first_seq} to {last_seq}) verified against "
                   f"checkpoint seq {checkpoint.seq} signed by key {checkpoint.key_id}.")
        if starts_mid:
            message += (f" The export starts at seq {self.first_seq}: its prev_hash was taken "
                        "as given.")
        return VerificationReport(ok=True, entries=self.count, checkpoint_seq=checkpoint.seq,
                                  first_bad_seq=None, line=None, problem="", message=message,
                                  first_seq=self.first_seq, starts_mid_log=starts_mid)


def _read_checkpoint(obj: dict[str, Any], raw: bytes, line_no: int) -> Checkpoint:
    try:
        checkpoint = Checkpoint.from_dict(obj[CHECKPOINT_KEY])
    except InvalidInput as exc:
        raise _Failure("malformed", f"line {line_no}: {exc.message}", seq=None,
                       line=line_no) from exc
    if canonical_json(obj) != raw:
        raise _Failure("malformed", f"line {line_no}: the checkpoint line is not canonical JSON.",
                       seq=None, line=line_no)
    return checkpoint


def _check_signature(checkpoint: Checkpoint, public_key: Ed25519PublicKey, line_no: int) -> None:
    expected_key = key_id_of(public_key)
    if checkpoint.key_id != expected_key:
        raise _Failure("wrong_key", f"the checkpoint for seq {checkpoint.seq} (line {line_no}) "
                       "names key "
                       f"{checkpoint.key_id}, not the given key {expected_key}.",
                       seq=checkpoint.seq, line=line_no)
    if not verify_checkpoint(checkpoint, public_key):
        raise _Failure("bad_signature", f"the checkpoint for seq {checkpoint.seq} (line {line_no}) "
                       "has a forged or damaged signature.", seq=checkpoint.seq, line=line_no)


def verify_export(lines: Iterable[bytes | str], public_key: Ed25519PublicKey, *,
                  require_genesis: bool = False) -> VerificationReport:
    """Verify an export (an iterable of its lines, e.g. an open binary file).

    Stops at the first problem and names the first bad entry (``first_bad_seq``, ``line``).
    An export starting after seq 1 is accepted (its first prev_hash taken as given, and
    ``starts_mid_log`` set) unless ``require_genesis``: then it must start at seq 1.
    """
    verifier = _ExportVerifier(public_key, require_genesis=require_genesis)
    try:
        return verifier.run(lines)
    except _Failure as failure:
        checkpoint = verifier.checkpoint
        return VerificationReport(
            ok=False, entries=verifier.count,
            checkpoint_seq=checkpoint.seq if checkpoint is not None else None,
            first_bad_seq=failure.seq, line=failure.line, problem=failure.problem,
            message=failure.message, first_seq=verifier.first_seq,
            starts_mid_log=verifier.first_seq is not None and verifier.first_seq > 1)


def verify_chain(entries: Iterable[Mapping[str, Any]], checkpoint: Checkpoint,
                 public_key: Ed25519PublicKey, *, require_genesis: bool = True,
                 ) -> VerificationReport:
    """Verify stored entries (e.g. read back from the database) against a checkpoint."""
    return verify_export(export_lines(entries, checkpoint), public_key,
                         require_genesis=require_genesis)


def require_intact(report: VerificationReport) -> VerificationReport:
    """Raise LogIntegrityError unless ``report.ok``."""
    if not report.ok:
        raise LogIntegrityError(report.message, details={
            "problem": report.problem, "first_bad_seq": report.first_bad_seq, "line": report.line})
    return report
