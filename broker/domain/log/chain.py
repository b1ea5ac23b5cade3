"""Entries and the hash chain: canonical JSON, domain prefixes, the genesis hash, sealing.

The exact rules are in ``docs/log-format.md`` (sections 2 to 4); this module is their one
implementation in the broker.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.domain.times import parse_utc
from broker.errors import InvalidInput

# --- Domain separation -------------------------------------------------------------------
# Like RFC 6962 section 2.1 (and RFC 9162 section 2.1.1), which hashes Merkle leaves as
# SHA-256(0x00 || leaf) and interior nodes as SHA-256(0x01 || left || right), every hash or
# signature input starts with a byte naming what it is, so no one kind of object can be
# passed off as another.
ENTRY_PREFIX = b"\x00"            # entry hash input
CHECKPOINT_PREFIX = b"\x01"       # checkpoint signature input
CHECKPOINT_HASH_PREFIX = b"\x02"  # checkpoint hash input (what the next checkpoint names)
EXPORT_PREFIX = b"\x03"           # export statement signature input
# The prev_hash of entry seq 1, the head of an empty log, and the prev_checkpoint of the
# first checkpoint.
GENESIS_LABEL = b"agent-credential-broker/issuance-log/v1/genesis"
GENESIS_HASH = hashlib.sha256(GENESIS_LABEL).hexdigest()

HASH_FIELD = "hash"
PREV_HASH_FIELD = "prev_hash"
SEQ_FIELD = "seq"
CHECKPOINT_KEY = "checkpoint"
EXPORT_KEY = "export"

# The fields of an entry besides seq/prev_hash/hash, all JSON types.
ENTRY_FIELDS = (
    "event_id", "time", "type", "request_id", "grant_id", "actor", "acts_for", "template",
    "template_digest", "parameters", "policy_digest", "access_key_id", "expiration",
    "source_ip", "approvals", "reason_code", "details",
)

_HEX_DIGITS = "0123456789abcdef"


# NOTE: every argument is part of the on-disk format; changing any breaks old logs.  One encoder for every call (what
# json.dumps builds on each call given these arguments; it keeps no state between calls).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of ``obj`` (docs/log-format.md, section 2)."""
    try:
        return _CANONICAL.encode(obj).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidInput("A log entry holds a value that has no canonical JSON form.",
                           code="log_entry_not_canonical") from exc


def is_hex64(value: object) -> bool:
    """64 lowercase hex characters (a SHA-256 digest as written in the log)."""
    # str.strip instead of a regex: this runs twice per line when verifying an export.
    return type(value) is str and len(value) == 64 and not value.strip(_HEX_DIGITS)


def is_seq(value: object) -> bool:
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
    if not is_seq(seq):
        raise InvalidInput("A log entry's seq must be an integer >= 1.", code="log_entry_invalid",
                           field=SEQ_FIELD)
    if not is_hex64(prev_hash):
        raise InvalidInput("A log entry's prev_hash must be 64 lowercase hex characters.",
                           code="log_entry_invalid", field=PREV_HASH_FIELD)
    entry = {key: value for key, value in body.items() if key != HASH_FIELD}
    entry[SEQ_FIELD] = seq
    entry[PREV_HASH_FIELD] = prev_hash
    body_bytes = canonical_json(entry)
    if NUL_ESCAPE in body_bytes:
        # NOTE: an entry's strings never hold U+0000 (a caller's input can carry one into a refusal's
        # message): PostgreSQL holds it neither in text nor in JSONB (the body indexes), so such an entry
        # could not be written, and a refusal must always be.  U+FFFD stands in its place.
        entry = _without_nul(entry)
        body_bytes = canonical_json(entry)
    # NOTE: canonical_json(json.loads(b)) == b for canonical b, so hashing body_bytes is
    # hashing the stored entry (minus its hash).
    entry = json.loads(body_bytes)
    entry[HASH_FIELD] = hashlib.sha256(ENTRY_PREFIX + body_bytes).hexdigest()
    return entry


# How canonical JSON writes U+0000 (a false positive, an escaped backslash before "u0000", only costs a rewrite
# that changes nothing).
NUL_ESCAPE = b"\\u0000"
NUL_STAND_IN = "\ufffd"


def _without_nul(value: Any) -> Any:
    """``value`` with every U+0000 in its strings (keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_STAND_IN)
    if isinstance(value, Mapping):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(item) for item in value]
    return value


def entry_line(entry: Mapping[str, Any]) -> bytes:
    """The export line of a sealed entry: its canonical JSON, hash included, no newline."""
    return canonical_json(dict(entry))


# --- Time ----------------------------------------------------------------------------------
# log_time (the entries' time form) lives in broker.domain.times with the broker's other time rules.

# Relative `--since` units, as data.
SINCE_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_RELATIVE = re.compile(r"([1-9][0-9]{0,5})([dhm])\Z")
# The times a query or an export may name: outside them a value is a mistake (or a probe), and
# near year 1 or 9999 it would not survive time zone arithmetic or a database's range.
EARLIEST_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``24h``, ``30m`` (before ``now``) or an ISO 8601 time (naive means UTC).

    The time must fall in [EARLIEST_TIME, LATEST_TIME); anything else is InvalidInput
    (``invalid_time``), never an overflow.
    """
    value = text.strip()
    relative = _RELATIVE.match(value)
    try:
        if relative:
            moment = now - int(relative.group(1)) * SINCE_UNITS[relative.group(2)]
        else:
            moment = parse_utc(value)
    except ValueError as exc:
        raise InvalidInput(f"Cannot read {text!r} as a time: use 7d, 24h, 30m or an ISO time.",
                           code="invalid_time", field="since") from exc
    except OverflowError as exc:
        raise _out_of_range(text) from exc
    if not EARLIEST_TIME <= moment < LATEST_TIME:
        raise _out_of_range(text)
    return moment


def _out_of_range(text: str) -> InvalidInput:
    return InvalidInput(f"{text!r} is out of range: times must fall between "
                        f"{EARLIEST_TIME.year} and {LATEST_TIME.year}.", code="invalid_time",
                        field="since")
