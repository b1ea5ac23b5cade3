"""The issuance log: canonical entries, a hash chain, chained signed checkpoints, exports.

Every event the broker records (a request, a refusal, an approval, an issue, a revocation...)
is one *entry*: a flat JSON object (see :data:`ENTRY_FIELDS`) that never holds a secret.
Entries form a hash chain (:mod:`.chain`); a signed *checkpoint* commits to the head of the chain
and names the checkpoint before it (:mod:`.checkpoints`), so anyone holding the broker's public
key can check an export offline (:mod:`.export`, ``broker audit verify``).

The format, byte by byte, with test vectors, is ``docs/log-format.md``: it is the reference, and
``tests/conformance/`` checks it with a verifier written from that document alone.

* ``canonical_json(obj)``: ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False, allow_nan=False)`` as UTF-8;
* ``entry_hash = sha256(0x00 || canonical_json(entry without "hash"))``; seq 1 chains to
  ``GENESIS_HASH = sha256(b"agent-credential-broker/issuance-log/v1/genesis")``;
* a checkpoint is Ed25519 over ``0x01 || canonical_json({seq, head_hash, time, key_id,
  prev_checkpoint})``; ``prev_checkpoint`` is ``sha256(0x02 || canonical_json(previous
  checkpoint))`` (``GENESIS_HASH`` for the first; absent in format-1 checkpoints);
* an export statement is Ed25519 over ``0x03 || canonical_json({checkpoint, first_seq, full,
  since, time, key_id})``.
"""

from broker.domain.log.chain import (CHECKPOINT_HASH_PREFIX, CHECKPOINT_KEY, CHECKPOINT_PREFIX, EARLIEST_TIME, ENTRY_FIELDS,
                    ENTRY_PREFIX, EXPORT_KEY, EXPORT_PREFIX, GENESIS_HASH, GENESIS_LABEL, HASH_FIELD,
                    LATEST_TIME, PREV_HASH_FIELD, SEQ_FIELD, SINCE_UNITS, canonical_json, entry_hash,
                    entry_line, is_hex64, is_seq, parse_since, seal_entry)
from broker.domain.log.checkpoints import (PREV_CHECKPOINT_FIELD, Checkpoint, CheckpointSigner, ExportStatement, MessageSigner,
                          checkpoint_message, generate_signing_key, key_id_of, load_public_key,
                          load_signing_key, private_key_pem, public_key_pem, verify_checkpoint,
                          verify_signature)
from broker.domain.times import log_time
from broker.domain.log.export import (PROBLEMS, SegmentOutcome, SigningRefusal, VerificationReport, chained_export_lines,
                     check_extends, checkpoint_line, export_lines, merge_segments, require_intact, statement_line,
                     verify_chain, verify_export, verify_segment, write_export)

__all__ = [
    "CHECKPOINT_HASH_PREFIX", "CHECKPOINT_KEY", "CHECKPOINT_PREFIX", "EARLIEST_TIME", "ENTRY_FIELDS",
    "ENTRY_PREFIX", "EXPORT_KEY", "EXPORT_PREFIX", "GENESIS_HASH", "GENESIS_LABEL", "HASH_FIELD",
    "LATEST_TIME", "PREV_CHECKPOINT_FIELD", "PREV_HASH_FIELD", "PROBLEMS", "SEQ_FIELD", "SegmentOutcome", "SINCE_UNITS",
    "Checkpoint", "CheckpointSigner", "ExportStatement", "MessageSigner", "SigningRefusal",
    "VerificationReport", "canonical_json", "chained_export_lines", "check_extends",
    "checkpoint_line", "checkpoint_message", "entry_hash", "entry_line", "export_lines",
    "generate_signing_key", "is_hex64", "is_seq", "key_id_of", "load_public_key", "load_signing_key",
    "log_time", "merge_segments", "parse_since", "private_key_pem", "public_key_pem", "require_intact", "seal_entry",
    "statement_line", "verify_chain", "verify_checkpoint", "verify_export", "verify_segment", "verify_signature",
    "write_export",
]
