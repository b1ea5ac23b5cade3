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

from broker.domain.log.chain import (CHECKPOINT_KEY, CHECKPOINT_PREFIX, ENTRY_FIELDS, ENTRY_PREFIX, GENESIS_HASH, GENESIS_LABEL,
                    HASH_FIELD, PREV_HASH_FIELD, SEQ_FIELD, SINCE_UNITS, canonical_json, entry_hash, entry_line,
                    is_hex64, is_seq, log_time, parse_since, seal_entry)
from broker.domain.log.checkpoints import (Checkpoint, CheckpointSigner, checkpoint_message, generate_signing_key, key_id_of,
                          load_public_key, load_signing_key, private_key_pem, public_key_pem, verify_checkpoint)
from broker.domain.log.export import (PROBLEMS, VerificationReport, export_lines, require_intact, verify_chain, verify_export,
                     write_export)

__all__ = [
    "CHECKPOINT_KEY", "CHECKPOINT_PREFIX", "ENTRY_FIELDS", "ENTRY_PREFIX", "GENESIS_HASH", "GENESIS_LABEL",
    "HASH_FIELD", "PREV_HASH_FIELD", "PROBLEMS", "SEQ_FIELD", "SINCE_UNITS", "Checkpoint", "CheckpointSigner",
    "VerificationReport", "canonical_json", "checkpoint_message", "entry_hash", "entry_line", "export_lines",
    "generate_signing_key", "is_hex64", "is_seq", "key_id_of", "load_public_key", "load_signing_key", "log_time",
    "parse_since", "private_key_pem", "public_key_pem", "require_intact", "seal_entry", "verify_chain",
    "verify_checkpoint", "verify_export", "write_export",
]
