"""Exports: their layout, and the one verifier (``broker audit verify`` and the broker itself).

An export is JSON lines (docs/log-format.md, section 8): the entries in seq order, each
checkpoint of the log right after the entry it signs, then the signed export statement and the
export's final checkpoint as the last two lines.  Format-1 exports (entries, then one checkpoint
line) still verify.  The verifier streams: it holds one entry and one checkpoint at a time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import msgspec
import orjson
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.errors import InvalidInput, LogIntegrityError
from broker.domain.log.chain import (CHECKPOINT_HASH_PREFIX, CHECKPOINT_KEY, CHECKPOINT_PREFIX, ENTRY_PREFIX, EXPORT_KEY, GENESIS_HASH, SEQ_FIELD, canonical_json, entry_line, is_hex64, is_seq)
from broker.domain.log.checkpoints import Checkpoint, ExportStatement, key_id_of, verify_signature


def checkpoint_line(checkpoint: Checkpoint) -> bytes:
    return canonical_json({CHECKPOINT_KEY: checkpoint.to_dict()}) + b"\n"


def statement_line(statement: ExportStatement) -> bytes:
    return canonical_json({EXPORT_KEY: statement.to_dict()}) + b"\n"


def export_lines(entries: Iterable[Mapping[str, Any]], checkpoint: Checkpoint) -> Iterator[bytes]:
    """Format 1 (entries, then one checkpoint line), each line ending with a newline."""
    for entry in entries:
        yield entry_line(entry) + b"\n"
    yield checkpoint_line(checkpoint)


def write_export(entries: Iterable[Mapping[str, Any]], checkpoint: Checkpoint,
                 out: IO[bytes]) -> None:
    """Write a format-1 export to a binary stream."""
    for line in export_lines(entries, checkpoint):
        out.write(line)


def chained_export_lines(entries: Iterable[Mapping[str, Any]], checkpoints: Iterable[Checkpoint],
                         statement: ExportStatement, *, final: Checkpoint | None = None) -> Iterator[bytes]:
    """Format 2: entries with every checkpoint right after the entry it signs (seq 0 ones
    first), then the statement, then the final checkpoint (``final``, else ``checkpoints[-1]``).

    ``checkpoints`` are in the order they were signed; each must sign a seq of ``entries``.  With ``final``
    they are the ones before it, taken as the entries pass (an iterator: none is held ahead of its place).
    """
    if final is None:
        checkpoints = list(checkpoints)  # without ``final`` the last one is it: a sequence, never long
        if checkpoints:
            *checkpoints, final = checkpoints
    if final is None or final.hash() != statement.checkpoint:
        raise InvalidInput("an export ends with the checkpoint its statement names",
                           code="export_invalid")
    pending = iter(checkpoints)
    waiting = next(pending, None)
    for entry in entries:
        while waiting is not None and waiting.seq < entry[SEQ_FIELD]:
            yield checkpoint_line(waiting)
            waiting = next(pending, None)
        yield entry_line(entry) + b"\n"
    while waiting is not None:
        yield checkpoint_line(waiting)
        waiting = next(pending, None)
    yield statement_line(statement)
    yield checkpoint_line(final)


# Problem codes of a failed verification: code -> what it means.  Stable (API/CLI contract).
PROBLEMS = {
    "modified": "an entry's content does not match its own hash",
    "broken_chain": "an entry's hash is not the prev_hash of the entry after it "
                    "(altered with its hash recomputed, or entries removed and renumbered)",
    "removed": "a seq is missing",
    "reordered": "an entry is out of seq order",
    "duplicated": "a seq appears twice",
    "truncated": "the export ends before the checkpoint's seq",
    "head_mismatch": "an entry's hash is not the head hash its checkpoint signed "
                     "(the chain was rewritten)",
    "appended": "entries appear beyond the last signed checkpoint",
    "bad_signature": "a checkpoint's or the export statement's signature is not valid for the given key",
    "wrong_key": "a checkpoint was signed by another key",
    "no_checkpoint": "the export has no checkpoint line at its end",
    "no_entries": "the export holds no entries, so it proves nothing",
    "malformed": "a line is not a well-formed entry, checkpoint or export statement",
    "checkpoint_chain": "a checkpoint does not name the checkpoint before it "
                        "(checkpoints removed or replaced, or a rewritten log signed again)",
    "no_statement": "the export has chained checkpoints but no signed export statement",
    "statement_mismatch": "the signed export statement does not describe this export",
    "fork": "the export does not extend a trusted checkpoint: another entry stands at its seq",
    "behind_trusted": "the export ends before a trusted checkpoint's seq (a missing tail)",
    "trusted_not_covered": "the export starts after a trusted checkpoint's seq, so it cannot "
                           "show that it extends it",
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
    checkpoints: int = 0  # checkpoint lines verified
    full: bool | None = None  # what the export statement says (None: no statement, format 1)
    trusted: int = 0  # trusted checkpoints the export was shown to extend


class _Failure(Exception):
    """Internal: stops verification at the first problem."""

    def __init__(self, problem: str, message: str, *, seq: int | None, line: int | None) -> None:
        super().__init__(message)
        self.problem, self.message, self.seq, self.line = problem, message, seq, line


class _Line(msgspec.Struct, gc=False):
    """What the verifier reads of a line: the chain fields, and whether it is something else."""

    seq: int | msgspec.UnsetType = msgspec.UNSET
    prev_hash: str | msgspec.UnsetType = msgspec.UNSET
    hash: str | msgspec.UnsetType = msgspec.UNSET
    checkpoint: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    export: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


# NOTE: the hash covers a line's raw bytes, so the parser only locates the chain fields; which
# parser reads them cannot change what is verified.  msgspec skips the other members without
# building them (~3x faster than a full parse); a line it refuses is parsed again in full so the
# report names the exact problem.
_DECODE_LINE = msgspec.json.Decoder(_Line).decode
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)
_HASH_MEMBER = b'"hash":"'


def _parse_line(raw: bytes, line_no: int) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Failure("malformed", f"line {line_no} is not valid JSON.", seq=None,
                       line=line_no) from exc
    if not isinstance(obj, dict):
        raise _Failure("malformed", f"line {line_no} is not a JSON object.", seq=None, line=line_no)
    return obj


def _malformed_entry(raw: bytes, line_no: int) -> _Failure:
    """Why an entry line failed the fast read (always a failure)."""
    obj = _parse_line(raw, line_no)
    seq = obj.get(SEQ_FIELD)
    named = f"line {line_no} (entry seq {seq})" if is_seq(seq) else f"line {line_no}"
    return _Failure("malformed", f"{named} lacks a valid seq, prev_hash or hash.",
                    seq=seq if is_seq(seq) else None, line=line_no)


def _body_bytes(raw: bytes, stated_hash: str, line_no: int, seq: int) -> bytes:
    """The line without its top-level ``"hash":"<hex>"`` member (the hashed bytes).

    The first occurrence is the member: a value nested before it holding the entry's own hash
    would need the hash of bytes that contain it.  A line whose member is elsewhere (not
    canonical) hashes to something else and is reported as modified.
    """
    member = _HASH_MEMBER + stated_hash.encode("ascii") + b'"'
    start = raw.find(member)
    if start < 0:
        raise _Failure("modified", f"entry seq {seq} at line {line_no} was modified: it is not "
                       "in the canonical form its hash was computed over.", seq=seq, line=line_no)
    end = start + len(member)
    if raw[end:end + 1] == b",":
        return raw[:start] + raw[end + 1:]
    if raw[start - 1:start] == b",":
        return raw[:start - 1] + raw[end:]
    return raw[:start] + raw[end:]


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


def _signed_by(signed: Checkpoint | ExportStatement, message: bytes, key: Ed25519PublicKey,
               fast: VerifyKey | None = None) -> bool:
    """verify_signature for a key already matched by its key id (the export's many checkpoints); ``message`` is
    ``signed.message()``.

    ``fast`` is the same key for libsodium, whose Ed25519 verify takes half the time of OpenSSL's (checking a
    checkpoint's signature was a third of the verifier's time).  It accepts a subset of what OpenSSL accepts (it
    also refuses small-order and non-canonical points), so a signature it refuses is judged by ``key``, and the
    verdict is always the one OpenSSL gives.
    """
    try:
        # NOTE: validate=True refuses non-alphabet characters instead of silently dropping them.
        signature = base64.b64decode(signed.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    if fast is not None:
        try:
            fast.verify(message, signature)
            return True
        except (CryptoError, ValueError, TypeError):
            pass  # judged by OpenSSL below
    try:
        key.verify(signature, message)
    except (ValueError, InvalidSignature):
        return False
    return True


# A checkpoint line as canonical JSON writes it when no value needs an escape (what the broker signs): the fields in
# sorted order, hex hashes, a 16-hex key id, a decimal seq (at most 18 digits, no leading zero), a signature of base64
# characters, a time of printable ASCII other than a quote or a backslash.  A line it matches whole is exactly
# canonical({"checkpoint": C}) of a well-formed C; any other line (not canonical, not well-formed, or merely unusual)
# is judged by the full parse.  tests/domain/test_log_verify_edges.py holds the two to the same verdict.
_CANONICAL_CHECKPOINT = re.compile(
    rb'\{"checkpoint":\{"head_hash":"([0-9a-f]{64})","key_id":"([0-9a-f]{16})",'
    rb'(?:"prev_checkpoint":"([0-9a-f]{64})",)?"seq":(0|[1-9][0-9]{0,17}),'
    rb'(?P<signature>"signature":"([A-Za-z0-9+/=]{1,200})",)"time":"([ !#-\[\]-~]{1,64})"\}\}')
_CHECKPOINT_OPEN = len(b'{"checkpoint":')


def _read_checkpoint(raw: bytes, line_no: int) -> tuple[Checkpoint, bytes]:
    """The checkpoint on a line that must be canonical JSON (no newline), and the message it signs; raises _Failure.

    What _parse_checkpoint decides, without its parse and two re-encodings for the lines the broker writes (those
    took ~30 µs a checkpoint line besides its signature's ~45, this ~4)."""
    match = _CANONICAL_CHECKPOINT.fullmatch(raw)
    if match is None:
        return _parse_checkpoint(raw, line_no)
    head_hash, key_id, prev_checkpoint, seq, _, signature, time = match.groups()
    checkpoint = Checkpoint(seq=int(seq), head_hash=head_hash.decode(), time=time.decode(), key_id=key_id.decode(),
                            signature=signature.decode(),
                            prev_checkpoint=None if prev_checkpoint is None else prev_checkpoint.decode())
    # The message is CHECKPOINT_PREFIX + canonical(C without "signature"): the inner object without that member.
    signed = raw[_CHECKPOINT_OPEN:match.start("signature")] + raw[match.end("signature"):-1]
    return checkpoint, CHECKPOINT_PREFIX + signed


def _parse_checkpoint(raw: bytes, line_no: int) -> tuple[Checkpoint, bytes]:
    """_read_checkpoint by the full parse: a JSON object of one member, a well-formed checkpoint, canonical."""
    obj = _parse_line(raw, line_no)
    if len(obj) != 1:
        raise _Failure("malformed", f"line {line_no} is a malformed checkpoint.", seq=None,
                       line=line_no)
    try:
        checkpoint = Checkpoint.from_dict(obj[CHECKPOINT_KEY])
    except InvalidInput as exc:
        raise _Failure("malformed", f"line {line_no}: {exc.message}", seq=None,
                       line=line_no) from exc
    if canonical_json(obj) != raw:
        raise _Failure("malformed", f"line {line_no}: the checkpoint line is not canonical JSON.",
                       seq=None, line=line_no)
    return checkpoint, checkpoint.message()


def _fast_keys(keys: Mapping[str, Ed25519PublicKey]) -> dict[str, VerifyKey]:
    return {key_id: VerifyKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
            for key_id, key in keys.items()}


def _keys_by_id(public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    if not keys:
        raise InvalidInput("verifying an export needs at least one public key", code="public_key_invalid")
    return {key_id_of(key): key for key in keys}


class _ExportVerifier:
    """Walks an export line by line; raises _Failure at the first problem."""

    def __init__(self, public_keys: dict[str, Ed25519PublicKey], *, require_genesis: bool,
                 trusted: Sequence[Checkpoint], anchored: Sequence[Checkpoint] = ()) -> None:
        self.keys = public_keys
        self.fast_keys = _fast_keys(public_keys)
        self.require_genesis = require_genesis
        self.trusted: dict[int, list[Checkpoint]] = {}
        for checkpoint in (*trusted, *anchored):
            self.trusted.setdefault(checkpoint.seq, []).append(checkpoint)
        # Anchors before an export's first entry are not its concern (an export --since): skipped, not refused.
        self.skippable = {checkpoint.seq for checkpoint in anchored} - {checkpoint.seq for checkpoint in trusted}
        self.trusted_met = 0
        self.count = 0
        self.first_seq: int | None = None
        self.last_seq, self.last_hash, self.last_line = 0, GENESIS_HASH, 0
        self.checkpoint: Checkpoint | None = None  # the latest checkpoint line seen
        self.checkpoint_hash = ""  # its hash
        self.checkpoint_line = 0
        self.checkpoints = 0
        self.chained = False  # a format-2 checkpoint (one naming its predecessor) was seen
        self.unsigned: tuple[int, int] | None = None  # (seq, line) of the first entry since it
        self.unplaced: Checkpoint | None = None  # a checkpoint ahead of the entries before it
        self.statement: ExportStatement | None = None
        self.statement_line = 0
        self.final_line = 0  # the line of the checkpoint after the statement
        self.lines = 0  # lines walked

    def run(self, lines: Iterable[bytes | str]) -> VerificationReport:
        self.walk(lines)
        return self._finish()

    def walk(self, lines: Iterable[bytes | str]) -> None:
        """Check every line in turn (raises _Failure at the first problem); the end is _finish's."""
        # NOTE: the entry path is the verifier's cost (one line per entry), so it keeps its state in locals,
        # reads a line's chain fields only, and leaves every rare case to a method: a position that is not
        # "the next seq, chained to the last hash" (the first entry, gaps, a checkpoint not yet placed, the
        # statement seen: those set last_hash to None so that the next entry takes the slow path).
        # NOTE: None, never a string: a decoded prev_hash is a str (or UNSET), so no entry can equal the marker and
        # slip past the slow path's checks ("" did: an entry stating "prev_hash":"" was taken as chained).
        it = iter(lines)
        decode, decode_errors, sha256, prefix, unset = _DECODE_LINE, _DECODE_ERRORS, hashlib.sha256, ENTRY_PREFIX, \
            msgspec.UNSET
        trusted = self.trusted
        last_seq, last_hash, last_line, count, unsigned, line_no, final = (self.last_seq, None, self.last_line,
                                                                            self.count, None, self.lines, False)
        head = self.last_hash  # the real hash of the last entry (last_hash may be None, to force the slow path)
        for raw in it:
            line_no += 1
            if type(raw) is str:
                raw = raw.encode("utf-8")
            try:
                fields = decode(raw)
            except decode_errors:
                raw = raw.removesuffix(b"\n")
                if not raw:
                    raise _Failure("malformed", f"line {line_no} is empty.", seq=None, line=line_no) from None
                raise _malformed_entry(raw, line_no) from None
            stated = fields.hash
            if fields.checkpoint is not unset or fields.export is not unset or final:
                self.last_seq, self.last_hash, self.last_line, self.count = last_seq, head, last_line, count
                self.unsigned = unsigned
                self._take_other(raw.removesuffix(b"\n"), line_no)
                # After the statement only the final checkpoint may come: an entry takes the slow path.
                last_hash = head if self.statement is None and self.unplaced is None and self.first_seq else None
                unsigned, final = self.unsigned, bool(self.final_line)
                continue
            seq, prev_hash = fields.seq, fields.prev_hash
            if type(stated) is not str:
                raise _malformed_entry(raw.removesuffix(b"\n"), line_no)
            member = b'"hash":"' + stated.encode() + b'"'
            start = raw.find(member)
            if start < 0:
                raise self._bad_entry(raw.removesuffix(b"\n"), line_no)
            # The hashed bytes, the line without its newline, its member and a comma, go to SHA-256 in two pieces
            # (one copy of each instead of a body built first).
            end = start + len(member)
            if raw[end] == 44:  # 44: "," after the member: cut it with the member
                digest = sha256(prefix + raw[:start])
                digest.update(raw[end + 1:-1] if raw[-1] == 10 else raw[end + 1:])
            else:  # the comma before it
                digest = sha256(prefix + raw[:start - 1])
                digest.update(raw[end:-1] if raw[-1] == 10 else raw[end:])
            if digest.hexdigest() != stated:
                raise self._bad_entry(raw.removesuffix(b"\n"), line_no)
            if seq != last_seq + 1 or prev_hash != last_hash:
                # (An entry that is the next seq, chained to the last hash, has a valid seq and prev_hash.)
                if not (is_seq(seq) and is_hex64(prev_hash)):
                    raise _malformed_entry(raw.removesuffix(b"\n"), line_no)
                self.last_seq, self.last_hash, self.last_line, self.count = last_seq, head, last_line, count
                self.unsigned = unsigned
                rest = ((number, later.removesuffix(b"\n") if isinstance(later, bytes) else later.encode("utf-8"))
                        for number, later in enumerate(it, start=line_no + 1))
                self._check_position(seq, prev_hash, line_no, rest)
            if unsigned is None:
                unsigned = (seq, line_no)
            if trusted and seq in trusted:
                self._check_trusted(seq, stated, line_no)
            count += 1
            last_seq, last_hash, last_line, head = seq, stated, line_no, stated
        self.last_seq, self.last_hash, self.last_line, self.count = last_seq, head, last_line, count
        self.unsigned, self.lines = unsigned, line_no

    # --- verifying in segments -----------------------------------------------------------------
    def resume_after(self, seam: bytes) -> None:
        """Start as the verifier stands right after the checkpoint line ``seam`` (no newline), placed and
        linked: the state every checkpoint line that passed leaves (see verify_segment)."""
        obj = _parse_line(seam, 0)
        try:
            if len(obj) != 1:
                raise InvalidInput("not a checkpoint line", code="malformed")
            checkpoint = Checkpoint.from_dict(obj[CHECKPOINT_KEY])
        except (InvalidInput, KeyError) as exc:
            raise _Failure("malformed", "the seam is not a checkpoint line", seq=None, line=None) from exc
        self.checkpoint = checkpoint
        self.checkpoint_hash = hashlib.sha256(CHECKPOINT_HASH_PREFIX + seam[_CHECKPOINT_OPEN:-1]).hexdigest()
        self.last_seq, self.last_hash = checkpoint.seq, checkpoint.head_hash
        # Only "some entry came before" matters inside a segment; the export's first seq is the first segment's.
        self.first_seq = checkpoint.seq + 1
        # A checkpoint naming its predecessor passed only if every one before it did, and one naming none only
        # if none before it did.
        self.chained = checkpoint.prev_checkpoint is not None

    def segment_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SEGMENT_STATE}

    def _take_other(self, raw: bytes, line_no: int) -> None:
        """A checkpoint or statement line, or any line after the final checkpoint."""
        if self.final_line:
            raise _Failure("malformed", f"line {line_no} follows the export's final checkpoint "
                           f"(line {self.final_line}).", seq=None, line=line_no)
        if raw.startswith(b'{"checkpoint":') or CHECKPOINT_KEY in _parse_line(raw, line_no):
            self._take_checkpoint(raw, line_no)
        else:
            self._take_statement(raw, line_no)

    @staticmethod
    def _bad_entry(raw: bytes, line_no: int) -> _Failure:
        """An entry line whose bytes do not hash to its stated hash: malformed or modified."""
        try:
            fields = _DECODE_LINE(raw)
        except _DECODE_ERRORS:
            return _malformed_entry(raw, line_no)
        seq = fields.seq
        if not (is_seq(seq) and is_hex64(fields.prev_hash) and is_hex64(fields.hash)):
            return _malformed_entry(raw, line_no)
        if raw.find(_HASH_MEMBER + fields.hash.encode("ascii") + b'"') < 0:
            return _Failure("modified", f"entry seq {seq} at line {line_no} was modified: it is not in the "
                            "canonical form its hash was computed over.", seq=seq, line=line_no)
        return _Failure("modified", f"entry seq {seq} at line {line_no} was modified: its content does not "
                        "match its hash.", seq=seq, line=line_no)

    # --- entries ---------------------------------------------------------------------------
    def _check_position(self, seq: int, prev_hash: str, line_no: int,
                        rest: Iterator[tuple[int, bytes]]) -> None:
        last_seq = self.last_seq
        if self.statement is not None:
            raise _Failure("appended", f"entry seq {seq} at line {line_no} follows the export statement (line "
                           f"{self.statement_line}).", seq=seq, line=line_no)
        if self.unplaced is not None:
            if seq > last_seq + 1:
                raise _classify_gap(last_seq + 1, seq, line_no, rest)
            raise _Failure("reordered", f"the checkpoint for seq {self.unplaced.seq} (line "
                           f"{self.checkpoint_line}) stands before entry seq {seq} (line {line_no}).",
                           seq=seq, line=line_no)
        if self.first_seq is None:
            if self.count:  # entries were counted before the "first" one: the walk's state is not what it says
                raise _Failure("malformed", f"entry seq {seq} at line {line_no} follows entries the verifier did "
                               "not place.", seq=seq, line=line_no)
            self.first_seq = seq
            if seq > 1 and self.require_genesis:
                raise _Failure("removed", f"entries seq 1 to seq {seq - 1} removed: the export "
                               f"starts at seq {seq} (line {line_no}).", seq=1, line=line_no)
            if seq == 1 and prev_hash != GENESIS_HASH:
                raise _Failure("broken_chain", f"entry seq 1 at line {line_no} does not start "
                               "from the genesis hash.", seq=1, line=line_no)
            if self.checkpoints and seq != 1:  # a seq-0 checkpoint: the export starts at genesis
                raise _Failure("removed", f"entries seq 1 to seq {seq - 1} removed: a checkpoint of the "
                               f"empty log precedes entry seq {seq} (line {line_no}).", seq=1, line=line_no)
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

    def _check_trusted(self, seq: int, this_hash: str, line_no: int) -> None:
        for trusted in self.trusted[seq]:
            if trusted.head_hash != this_hash:
                raise _Failure("fork", f"entry seq {seq} at line {line_no} is not the entry the "
                               f"trusted checkpoint for seq {seq} (signed {trusted.time}) signed: "
                               "the log was rewritten after it.", seq=seq, line=line_no)
            self.trusted_met += 1

    def _line_of(self, seq: int) -> int:
        """The line of entry ``seq``, one not followed by a checkpoint yet (contiguous lines)."""
        assert self.unsigned is not None
        return self.unsigned[1] + (seq - self.unsigned[0])

    # --- checkpoints -------------------------------------------------------------------------
    def _take_checkpoint(self, raw: bytes, line_no: int) -> None:
        checkpoint, message = _read_checkpoint(raw, line_no)
        previous = self.checkpoint
        if self.unplaced is not None or (previous is not None and previous.seq == checkpoint.seq
                                         and previous.key_id == checkpoint.key_id):
            raise _Failure("malformed", f"line {line_no} is a second checkpoint for seq "
                           f"{checkpoint.seq} (see line {self.checkpoint_line}).", seq=None,
                           line=line_no)
        self._check_signature(checkpoint, message, line_no)
        self._check_place(checkpoint, line_no)
        self._check_link(checkpoint, previous, line_no)
        self.checkpoint, self.checkpoint_line = checkpoint, line_no
        # The line is canonical, so its inner object's bytes are canonical(C): the checkpoint's hash input.
        self.checkpoint_hash = hashlib.sha256(CHECKPOINT_HASH_PREFIX + raw[_CHECKPOINT_OPEN:-1]).hexdigest()
        self.checkpoints += 1
        if self.statement is not None:
            self.final_line = line_no

    def _check_signature(self, checkpoint: Checkpoint, message: bytes, line_no: int) -> None:
        key = self.keys.get(checkpoint.key_id)
        if key is None:
            raise _Failure("wrong_key", f"the checkpoint for seq {checkpoint.seq} (line {line_no}) "
                           f"names key {checkpoint.key_id}, not the given key "
                           f"{' or '.join(self.keys)}.", seq=checkpoint.seq, line=line_no)
        if not _signed_by(checkpoint, message, key, self.fast_keys.get(checkpoint.key_id)):
            raise _Failure("bad_signature", f"the checkpoint for seq {checkpoint.seq} (line "
                           f"{line_no}) has a forged or damaged signature.", seq=checkpoint.seq,
                           line=line_no)

    def _check_place(self, checkpoint: Checkpoint, line_no: int) -> None:
        """A checkpoint follows the entry it signs (seq 0: before any entry)."""
        last_seq = self.last_seq
        if checkpoint.seq > last_seq:
            # Truncated at the end, or entries missing before it: any entry after it fails.
            self.unplaced, self.last_hash = checkpoint, ""
            return
        if checkpoint.seq < last_seq:
            seq = checkpoint.seq + 1
            if self.unsigned is None or seq < self.unsigned[0]:
                raise _Failure("reordered", f"the checkpoint for seq {checkpoint.seq} (line "
                               f"{line_no}) stands after a later checkpoint.", seq=checkpoint.seq,
                               line=line_no)
            raise _Failure("appended", f"entry seq {seq} at line {self._line_of(seq)} is beyond the "
                           f"checkpoint that follows it (seq {checkpoint.seq}, line {line_no}), so it "
                           "is not signed.", seq=seq, line=self._line_of(seq))
        if checkpoint.head_hash != self.last_hash:
            where = (f"entry seq {last_seq} at line {self.last_line} is not" if last_seq
                     else "the genesis hash is not")
            raise _Failure("head_mismatch", f"{where} the head the checkpoint at line {line_no} "
                           "signed: the chain up to it was rewritten.", seq=last_seq or None,
                           line=self.last_line or line_no)
        self.unsigned = None

    def _check_link(self, checkpoint: Checkpoint, previous: Checkpoint | None, line_no: int) -> None:
        if checkpoint.prev_checkpoint is None:
            if self.chained:
                raise _Failure("checkpoint_chain", f"the checkpoint at line {line_no} names no "
                               "predecessor, after checkpoints that do.", seq=checkpoint.seq,
                               line=line_no)
            return
        self.chained = True
        if previous is not None:
            expected = self.checkpoint_hash
        elif self.first_seq in (None, 1):
            expected = GENESIS_HASH  # an export from the start holds the first checkpoint too
        else:
            return  # an export --since: the first checkpoint's predecessor is taken as given
        if checkpoint.prev_checkpoint != expected:
            named = (f"the checkpoint at line {self.checkpoint_line}" if previous is not None
                     else "no earlier checkpoint (the genesis hash)")
            raise _Failure("checkpoint_chain", f"the checkpoint for seq {checkpoint.seq} (line "
                           f"{line_no}) does not name {named} as its predecessor: checkpoints were "
                           "removed or replaced, or the log was signed again after a rewrite.",
                           seq=checkpoint.seq, line=line_no)

    # --- the export statement and the end ------------------------------------------------------
    def _take_statement(self, raw: bytes, line_no: int) -> None:
        obj = _parse_line(raw, line_no)
        try:
            if self.statement is not None or len(obj) != 1:
                raise InvalidInput("a second or malformed export statement", code="malformed")
            statement = ExportStatement.from_dict(obj[EXPORT_KEY])
        except InvalidInput as exc:
            raise _Failure("malformed", f"line {line_no}: {exc.message}", seq=None,
                           line=line_no) from exc
        if canonical_json(obj) != raw:
            raise _Failure("malformed", f"line {line_no}: the export statement is not canonical "
                           "JSON.", seq=None, line=line_no)
        key = self.keys.get(statement.key_id)
        if key is None or not verify_signature(statement, key):
            problem = "wrong_key" if key is None else "bad_signature"
            raise _Failure(problem, f"the export statement (line {line_no}) is not signed by the "
                           "given key.", seq=None, line=line_no)
        self.statement, self.statement_line = statement, line_no

    def _finish(self) -> VerificationReport:
        checkpoint, last_seq, last_line = self.checkpoint, self.last_seq, self.last_line
        if checkpoint is None:
            raise _Failure("no_checkpoint", "the export does not end with a checkpoint line, so "
                           "its end cannot be checked.", seq=None, line=None)
        if self.first_seq is None:
            raise _Failure("no_entries", "the export holds no entries.", seq=None, line=None)
        if self.unplaced is not None:
            raise _Failure("truncated", f"the export ends at seq {last_seq} (line {last_line}) but "
                           f"the checkpoint covers seq {self.unplaced.seq}: seq {last_seq + 1} "
                           "onwards is missing.", seq=last_seq + 1, line=self.checkpoint_line)
        if self.unsigned is not None:
            seq = self.unsigned[0]
            raise _Failure("appended", f"entry seq {seq} at line {self.unsigned[1]} is beyond the "
                           f"last checkpoint (seq {checkpoint.seq}), so it is not signed.",
                           seq=seq, line=self.unsigned[1])
        if self.statement is not None and not self.final_line:
            raise _Failure("malformed", f"the export statement (line {self.statement_line}) is not "
                           "followed by the export's final checkpoint.", seq=None,
                           line=self.statement_line)
        self._check_statement(checkpoint)
        self._check_trusted_covered()
        return self._report()

    def _check_statement(self, final: Checkpoint) -> None:
        statement, first_seq = self.statement, self.first_seq
        assert first_seq is not None
        if statement is None:
            if self.chained:
                raise _Failure("no_statement", "the export's checkpoints name their predecessors "
                               "but the signed export statement (where the export starts, whether "
                               "it is full) is missing.", seq=None, line=None)
            return
        if statement.checkpoint != self.checkpoint_hash:
            raise _Failure("statement_mismatch", f"the export statement (line {self.statement_line}) "
                           "names another final checkpoint.", seq=None, line=self.statement_line)
        start = 1 if statement.full else statement.first_seq
        if first_seq > start:
            what = "a full export" if statement.full else f"an export from seq {start}"
            raise _Failure("removed", f"entries seq {start} to seq {first_seq - 1} removed: the "
                           f"statement (line {self.statement_line}) says this is {what}, and it "
                           f"starts at seq {first_seq}.", seq=start, line=1)
        if first_seq < start:
            raise _Failure("statement_mismatch", f"the export starts at seq {first_seq}, before the "
                           f"seq {start} its statement names.", seq=first_seq, line=1)

    def _check_trusted_covered(self) -> None:
        first_seq, last_seq = self.first_seq, self.last_seq
        assert first_seq is not None
        for seq, checkpoints in sorted(self.trusted.items()):
            if seq > last_seq:
                raise _Failure("behind_trusted", f"the export ends at seq {last_seq}, before the "
                               f"trusted checkpoint's seq {seq} (signed {checkpoints[0].time}): "
                               f"seq {last_seq + 1} to {seq} are missing.", seq=last_seq + 1,
                               line=None)
            if seq == 0 and first_seq == 1:
                self.trusted_met += len(checkpoints)  # the genesis head: any full chain extends it
            elif seq < first_seq and seq in self.skippable:
                continue
            elif seq < first_seq:
                raise _Failure("trusted_not_covered", f"the export starts at seq {first_seq}, after "
                               f"the trusted checkpoint's seq {seq}: export from seq {seq} or "
                               "earlier to check it.", seq=seq, line=None)

    def _report(self) -> VerificationReport:
        checkpoint, first_seq = self.checkpoint, self.first_seq
        assert checkpoint is not None and first_seq is not None
        starts_mid = first_seq > 1
        message = (f"{self.count} entries (seq {first_seq} to {self.last_seq}) verified against "
                   f"{self.checkpoints} checkpoint(s), the last for seq {checkpoint.seq}, signed "
                   f"by key {checkpoint.key_id}.")
        if self.statement is not None:
            message += (" The export statement says it is the full log." if self.statement.full
                        else f" The export statement says it starts at seq {first_seq}.")
        if starts_mid:
            message += (f" The export starts at seq {first_seq}: its prev_hash was taken "
                        "as given.")
        if self.trusted_met:
            message += f" It extends {self.trusted_met} trusted checkpoint(s)."
        return VerificationReport(ok=True, entries=self.count, checkpoint_seq=checkpoint.seq,
                                  first_bad_seq=None, line=None, problem="", message=message,
                                  first_seq=first_seq, starts_mid_log=starts_mid,
                                  checkpoints=self.checkpoints,
                                  full=None if self.statement is None else self.statement.full,
                                  trusted=self.trusted_met)


def verify_export(lines: Iterable[bytes | str],
                  public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey], *,
                  require_genesis: bool = False, trusted: Sequence[Checkpoint] = (),
                  anchored: Sequence[Checkpoint] = ()) -> VerificationReport:
    """Verify an export (an iterable of its lines, e.g. an open binary file).

    Stops at the first problem and names the first bad entry (``first_bad_seq``, ``line``).
    Every checkpoint line must be signed by one of the keys, follow the entry it signs and name
    its predecessor.  An export starting after seq 1 is accepted (its first prev_hash taken as
    given, ``starts_mid_log`` set) unless its signed statement says it is full, or
    ``require_genesis``.  ``trusted`` checkpoints (kept by an auditor, or anchored off the host)
    must each be extended: the export's entry at their seq has their head hash.  ``anchored`` checkpoints
    (read from the anchors) are the same, except that those before the export's first entry are skipped.
    """
    verifier = _ExportVerifier(_keys_by_id(public_key), require_genesis=require_genesis,
                               trusted=trusted, anchored=anchored)
    try:
        return verifier.run(lines)
    except _Failure as failure:
        checkpoint = verifier.checkpoint
        return VerificationReport(
            ok=False, entries=verifier.count,
            checkpoint_seq=checkpoint.seq if checkpoint is not None else None,
            first_bad_seq=failure.seq, line=failure.line, problem=failure.problem,
            message=failure.message, first_seq=verifier.first_seq,
            starts_mid_log=verifier.first_seq is not None and verifier.first_seq > 1,
            checkpoints=verifier.checkpoints,
            full=None if verifier.statement is None else verifier.statement.full)


# --- an export verified in segments, one per CPU ------------------------------------------------
# What a segment's walk leaves (the state the next segment starts from, or the whole export ends with).
_SEGMENT_STATE = ("count", "checkpoints", "trusted_met", "first_seq", "last_seq", "last_hash", "last_line",
                  "checkpoint", "checkpoint_hash", "checkpoint_line", "chained", "unsigned", "unplaced",
                  "statement", "statement_line", "final_line", "lines")


@dataclass(frozen=True)
class SegmentOutcome:
    """What walking one segment of an export left: the verifier's state at its end, or a failure."""

    failed: bool
    state: Mapping[str, Any]


def verify_segment(lines: Iterable[bytes], public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey], *,
                   seam: bytes | None, require_genesis: bool = False, trusted: Sequence[Checkpoint] = (),
                   anchored: Sequence[Checkpoint] = ()) -> SegmentOutcome:
    """Walk one segment of an export: the first (``seam`` None), or one starting right after the checkpoint
    line ``seam`` (without its newline) that ends the segment before it.  Every check of verify_export runs on
    every line; what needs the whole export (its end, the statement, trusted checkpoints covered) is left to
    merge_segments.  Segments may be walked at the same time, in separate processes."""
    verifier = _ExportVerifier(_keys_by_id(public_key), require_genesis=require_genesis, trusted=trusted,
                               anchored=anchored)
    try:
        if seam is not None:
            verifier.resume_after(seam)
        verifier.walk(lines)
    except _Failure:
        return SegmentOutcome(failed=True, state={})
    return SegmentOutcome(failed=False, state=verifier.segment_state())


def merge_segments(outcomes: Sequence[SegmentOutcome], seams: Sequence[bytes],
                   public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey], *, require_genesis: bool = False,
                   trusted: Sequence[Checkpoint] = (), anchored: Sequence[Checkpoint] = ()) -> VerificationReport | None:
    """The report on the whole export from its segments (``seams[k]`` ends segment k and starts k + 1), or None
    when the export must be verified in one pass: a segment failed, or a seam is not where a checkpoint line
    left the verifier (so its state is not the next segment's start).  A failure is reported only by
    verify_export, which names the exact line; an intact export is reported here, as verify_export would."""
    if not outcomes or len(seams) != len(outcomes) - 1 or any(outcome.failed for outcome in outcomes):
        return None
    for outcome, seam in zip(outcomes, seams):  # every segment but the last ends on its seam, taken as placed
        state = outcome.state
        seam_hash = hashlib.sha256(CHECKPOINT_HASH_PREFIX + seam[_CHECKPOINT_OPEN:-1]).hexdigest()
        if not (state["lines"] and state["checkpoint_line"] == state["lines"] and state["checkpoint_hash"] == seam_hash
                and state["unplaced"] is None and state["unsigned"] is None and state["statement"] is None
                and not state["final_line"] and state["first_seq"] is not None):
            return None
    verifier = _ExportVerifier(_keys_by_id(public_key), require_genesis=require_genesis, trusted=trusted,
                               anchored=anchored)
    for name, value in outcomes[-1].state.items():
        setattr(verifier, name, value)
    verifier.first_seq = outcomes[0].state["first_seq"]
    for name in ("count", "checkpoints", "trusted_met"):
        setattr(verifier, name, sum(outcome.state[name] for outcome in outcomes))
    try:
        return verifier._finish()
    except _Failure:
        return None


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


# --- may the broker sign the head? ------------------------------------------------------------

@dataclass(frozen=True)
class SigningRefusal:
    """Why the head may not be signed: the chain does not extend the last signed checkpoint."""

    reason: str  # head_behind_checkpoint | checkpoint_fork | chain_broken | head_mismatch
    message: str


def check_extends(latest: Checkpoint, stored: Iterable[bytes], *, head_seq: int,
                  head_hash: str) -> SigningRefusal | None:
    """None when the stored entries from ``latest.seq`` on chain from the entry ``latest``
    signed to the head ``(head_seq, head_hash)``; otherwise why not.

    ``stored`` are the stored lines (canonical JSON) of every entry with seq >= ``latest.seq``
    (from seq 1 for a seq-0 checkpoint), in seq order; each is checked against its own hash, so
    a body edited in place is caught as well as a re-chained one.
    """
    if head_seq < latest.seq:
        return SigningRefusal("head_behind_checkpoint", f"the log head (seq {head_seq}) is behind "
                              f"the last signed checkpoint (seq {latest.seq}): entries were removed.")
    rows = iter(stored)
    try:
        if latest.seq == 0:
            if latest.head_hash != GENESIS_HASH:
                return SigningRefusal("checkpoint_fork", "the last checkpoint signs seq 0 with a "
                                      "head that is not the genesis hash.")
            last_seq, last_hash = 0, GENESIS_HASH
        else:
            first = next(rows, None)
            seq, _, this_hash = _chain_fields(first) if first is not None else (0, "", "")
            if seq != latest.seq or this_hash != latest.head_hash:
                return SigningRefusal("checkpoint_fork", f"entry seq {latest.seq} is not the entry "
                                      "the last signed checkpoint signed: the log was rewritten.")
            last_seq, last_hash = seq, this_hash
        for raw in rows:
            seq, prev_hash, this_hash = _chain_fields(raw)
            if seq != last_seq + 1 or prev_hash != last_hash:
                return SigningRefusal("chain_broken", f"stored entry seq {seq} does not chain from "
                                      f"seq {last_seq}.")
            last_seq, last_hash = seq, this_hash
    except _Failure as failure:
        return SigningRefusal("chain_broken", "a stored entry after the last checkpoint does not "
                              f"match its own hash ({failure.problem}).")
    if last_seq != head_seq or last_hash != head_hash:
        return SigningRefusal("head_mismatch", f"the log head (seq {head_seq}) is not the last "
                              f"stored entry (seq {last_seq}).")
    return None


def _chain_fields(raw: bytes) -> tuple[int, str, str]:
    """(seq, prev_hash, hash) of one stored entry line, its self-hash checked."""
    try:
        fields = _DECODE_LINE(raw)
    except _DECODE_ERRORS as exc:
        raise _Failure("malformed", "not an entry", seq=None, line=None) from exc
    seq, prev_hash, stated = fields.seq, fields.prev_hash, fields.hash
    if not (type(seq) is int and seq >= 1 and is_hex64(prev_hash) and is_hex64(stated)):
        raise _Failure("malformed", "not an entry", seq=None, line=None)
    if hashlib.sha256(ENTRY_PREFIX + _body_bytes(raw, stated, 0, seq)).hexdigest() != stated:
        raise _Failure("modified", "modified", seq=seq, line=None)
    return seq, prev_hash, stated

