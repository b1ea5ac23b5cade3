"""The issuance log: canonical entries, a hash chain, signed checkpoints, export verification.

Every event the broker records (a request, a refusal, an approval, an issue, a revocation...)
is one *entry*: a flat JSON object (see :data:`ENTRY_FIELDS`) that never holds a secret.
Entries form a hash chain; a signed *checkpoint* commits to the head of the chain, so anyone
holding the broker's public key can check an export offline (``broker audit verify``).

Canonical serialization (the bytes that are hashed, and the bytes of an export line)
------------------------------------------------------------------------------------
``canonical_json(obj)`` is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8:

* object keys sorted by code point, no whitespace anywhere, non-ASCII characters written
  as themselves (UTF-8), control characters and ``"``/``\\`` escaped the way Python's
  :mod:`json` does;
* NaN and Infinity are refused; floats are written with Python's shortest round-trip
  ``repr`` (entries should not need floats: times are strings, counts are integers).

Hash chain
----------
``entry_hash(entry) = sha256(ENTRY_PREFIX || canonical_json(entry without "hash")).hexdigest()``.
The hashed object includes ``seq`` and ``prev_hash``; the first entry (``seq`` 1) has
``prev_hash == GENESIS_HASH``.  Each later entry's ``prev_hash`` is the ``hash`` of the entry
before it, and ``seq`` is gapless from 1.

Checkpoints
-----------
A checkpoint is ``{seq, head_hash, time, key_id}`` signed with Ed25519 over
``CHECKPOINT_PREFIX || canonical_json({seq, head_hash, time, key_id})``.  ``key_id`` is the
first 16 hex characters of sha256 of the raw 32-byte public key.  An empty log's checkpoint
is ``seq 0`` with ``head_hash == GENESIS_HASH``.

Export format (JSONL)
---------------------
One entry per line, each line exactly ``canonical_json(entry)`` (the entry *with* its
``hash``), then one last line ``{"checkpoint": {...}}`` holding the latest checkpoint
(``Checkpoint.to_dict()``).  Lines end with ``\\n``.  Because an export line is the canonical
form, a verifier hashes the line's own bytes with the ``"hash":"..."`` member cut out: any
changed byte changes the hash, so non-canonical lines (extra spaces, reordered keys,
``\\u`` escapes) are rejected as modified.  An export may start at ``seq > 1``
(``export --since``): the first entry's ``prev_hash`` is then taken as given, and everything
after it must chain up to the checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import InvalidInput, LogIntegrityError

# --- Domain separation -------------------------------------------------------------------
# Like RFC 6962 section 2.1 (and RFC 9162 section 2.1.1), which hashes Merkle leaves as
# SHA-256(0x00 || leaf) and interior nodes as SHA-256(0x01 || left || right), every hash or
# signature input starts with a prefix naming what it is, so an entry can never be passed
# off as a checkpoint message (or the other way round).
ENTRY_PREFIX = b"\x00"
CHECKPOINT_PREFIX = b"\x01"
# The prev_hash of entry seq 1 (and the head of an empty log).
GENESIS_LABEL = b"agent-credential-broker/issuance-log/v1/genesis"
GENESIS_HASH = hashlib.sha256(GENESIS_LABEL).hexdigest()

HASH_FIELD = "hash"
PREV_HASH_FIELD = "prev_hash"
SEQ_FIELD = "seq"
CHECKPOINT_KEY = "checkpoint"

# The fields of an entry besides seq/prev_hash/hash, all JSON types.
ENTRY_FIELDS = (
    "event_id", "time", "type", "request_id", "grant_id", "actor", "acts_for", "template",
    "template_digest", "parameters", "policy_digest", "access_key_id", "expiration",
    "source_ip", "approvals", "reason_code", "details",
)

_HEX_DIGITS = "0123456789abcdef"
_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")


# --- Canonical form and the chain ----------------------------------------------------------

def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of ``obj`` (see the module docstring)."""
    try:
        # NOTE: every argument is part of the on-disk format; changing any breaks old logs.
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidInput("A log entry holds a value that has no canonical JSON form.",
                           code="log_entry_not_canonical") from exc


def _is_hex64(value: object) -> bool:
    # str.strip instead of a regex: this runs twice per line when verifying an export.
    return type(value) is str and len(value) == 64 and not value.strip(_HEX_DIGITS)


def _is_seq(value: object) -> bool:
    return type(value) is int and value >= 1  # NOTE: bool is an int subclass; refuse it.


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256(ENTRY_PREFIX || canonical_json(entry without "hash")), hex."""
    body = {key: value for key, value in entry.items() if key != HASH_FIELD}
    return hashlib.sha256(ENTRY_PREFIX + canonical_json(body)).hexdigest()


def seal_entry(body: Mapping[str, Any], *, seq: int, prev_hash: str) -> dict[str, Any]:
    """Return the full entry: ``body`` plus ``seq``, ``prev_hash`` and its ``hash``.

    The result is round-tripped through its canonical form, so what the caller stores is
    exactly what was hashed (tuples become lists, and so on).
    """
    if not _is_seq(seq):
        raise InvalidInput("A log entry's seq must be an integer >= 1.", code="log_entry_invalid",
                           field=SEQ_FIELD)
    if not _is_hex64(prev_hash):
        raise InvalidInput("A log entry's prev_hash must be 64 lowercase hex characters.",
                           code="log_entry_invalid", field=PREV_HASH_FIELD)
    entry = {key: value for key, value in body.items() if key != HASH_FIELD}
    entry[SEQ_FIELD] = seq
    entry[PREV_HASH_FIELD] = prev_hash
    body_bytes = canonical_json(entry)
    # NOTE: canonical_json(json.loads(b)) == b for canonical b, so hashing body_bytes is
    # hashing the stored entry (minus its hash).
    entry = json.loads(body_bytes)
    entry[HASH_FIELD] = hashlib.sha256(ENTRY_PREFIX + body_bytes).hexdigest()
    return entry


def entry_line(entry: Mapping[str, Any]) -> bytes:
    """The export line of a sealed entry: its canonical JSON, hash included, no newline."""
    return canonical_json(dict(entry))


# --- Time ----------------------------------------------------------------------------------

def log_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and 'Z' (``2024-05-01T12:00:00.000000Z``)."""
    if moment.tzinfo is None:
        raise InvalidInput("Log times must be timezone-aware.", code="invalid_time")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Relative `--since` units, as data.
SINCE_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_RELATIVE = re.compile(r"([1-9][0-9]{0,5})([dhm])\Z")


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``24h``, ``30m`` (before ``now``) or an ISO 8601 time (naive means UTC)."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        return now - int(relative.group(1)) * SINCE_UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"Cannot read {text!r} as a time: use 7d, 24h, 30m or an ISO time.",
                           code="invalid_time", field="since") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- Checkpoints ---------------------------------------------------------------------------

def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the log's entry ``seq`` has hash ``head_hash``."""

    seq: int
    head_hash: str
    time: str
    key_id: str
    signature: str  # base64 (standard alphabet, padded) of the Ed25519 signature

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.head_hash, self.time, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "head_hash": self.head_hash, "time": self.time,
                "key_id": self.key_id, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        """Read a checkpoint; raise InvalidInput unless every field has the right shape."""
        checks = {  # field -> shape check, run by one loop
            "seq": lambda v: type(v) is int and v >= 0,
            "head_hash": _is_hex64,
            "time": lambda v: isinstance(v, str) and 0 < len(v) <= 64,
            "key_id": lambda v: isinstance(v, str) and _KEY_ID.match(v) is not None,
            "signature": lambda v: isinstance(v, str) and 0 < len(v) <= 200,
        }
        if not isinstance(data, Mapping) or set(data) != set(checks):
            raise InvalidInput("A checkpoint must be an object with exactly the fields "
                               + ", ".join(checks) + ".", code="checkpoint_invalid")
        for name, check in checks.items():
            if not check(data[name]):
                raise InvalidInput(f"The checkpoint's {name} is malformed.",
                                   code="checkpoint_invalid", field=name)
        return cls(**{name: data[name] for name in checks})


def checkpoint_message(seq: int, head_hash: str, time: str, key_id: str) -> bytes:
    """The signed bytes: CHECKPOINT_PREFIX || canonical({seq, head_hash, time, key_id})."""
    return CHECKPOINT_PREFIX + canonical_json(
        {"seq": seq, "head_hash": head_hash, "time": time, "key_id": key_id})


class CheckpointSigner:
    """Signs checkpoints with the broker's Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise InvalidInput("The log signing key must be an Ed25519 private key.",
                               code="signing_key_invalid")
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, seq: int, head_hash: str, time: str) -> Checkpoint:
        if type(seq) is not int or seq < 0 or not _is_hex64(head_hash):
            raise InvalidInput("A checkpoint needs seq >= 0 and a 64-hex head hash.",
                               code="checkpoint_invalid")
        signature = self._private_key.sign(checkpoint_message(seq, head_hash, time, self.key_id))
        return Checkpoint(seq=seq, head_hash=head_hash, time=time, key_id=self.key_id,
                          signature=base64.b64encode(signature).decode("ascii"))


def verify_checkpoint(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    """True only if ``checkpoint`` was signed by ``public_key`` (key id included)."""
    if checkpoint.key_id != key_id_of(public_key):
        return False
    try:
        # NOTE: validate=True refuses non-alphabet characters instead of silently dropping them.
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public_key.verify(signature, checkpoint.message())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def load_signing_key(pem_bytes: bytes) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(pem_bytes, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("The log signing key is not a readable PEM private key.",
                           code="signing_key_invalid") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput("The log signing key must be an Ed25519 key.",
                           code="signing_key_invalid")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the (public half of the) key: GET /v1/events/public-key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem_bytes: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem_bytes)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("The public key is not a readable PEM public key.",
                           code="public_key_invalid") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("The public key must be an Ed25519 key.", code="public_key_invalid")
    return key


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
    if not (_is_seq(seq) and _is_hex64(prev_hash) and _is_hex64(stated)):
        named = f"line {line_no} (entry seq {seq})" if _is_seq(seq) else f"line {line_no}"
        raise _Failure("malformed", f"{named} lacks a valid seq, prev_hash or hash.",
                       seq=seq if _is_seq(seq) else None, line=line_no)
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
        if _is_seq(later_seq) and expected <= later_seq < seq:
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
                seq = obj.get(SEQ_FIELD) if _is_seq(obj.get(SEQ_FIELD)) else None
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
