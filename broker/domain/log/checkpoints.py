"""Signed checkpoints (each naming the one before it), export statements, and the keys.

A checkpoint says "entry ``seq`` of this log has hash ``head_hash``", signed with Ed25519.
Since format 2 each checkpoint also names its predecessor's hash (``prev_checkpoint``), so the
checkpoints form a chain of their own: replacing or removing one, or signing a rewritten log
after it, shows.  Checkpoints without ``prev_checkpoint`` (format 1) still verify.

An export statement is signed once per export: where the export starts (``first_seq``), whether
it is the full log (``full``), and the hash of its final checkpoint; a full export whose oldest
entries were cut no longer matches it.  Exact rules: ``docs/log-format.md``, sections 5 to 7.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import InvalidInput

from broker.domain.log.chain import CHECKPOINT_HASH_PREFIX, CHECKPOINT_PREFIX, EXPORT_PREFIX, canonical_json, is_hex64

_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")
PREV_CHECKPOINT_FIELD = "prev_checkpoint"


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _is_time(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64


def _is_signature(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _is_key_id(value: object) -> bool:
    return isinstance(value, str) and _KEY_ID.match(value) is not None


def _read_fields(data: object, required: Mapping[str, Callable[[object], bool]],
                 optional: Mapping[str, Callable[[object], bool]], *, what: str, code: str,
                 ) -> dict[str, Any]:
    """Check an object's fields against shape checks, run by one loop; raise InvalidInput."""
    if (not isinstance(data, Mapping) or not set(required) <= set(data)
            or not set(data) <= set(required) | set(optional)):
        raise InvalidInput(f"A {what} must be an object with the fields " + ", ".join(required)
                           + (" (and optionally " + ", ".join(optional) + ")" if optional else "")
                           + ".", code=code)
    checks = {**required, **optional}
    for name in data:
        if not checks[name](data[name]):
            raise InvalidInput(f"The {what}'s {name} is malformed.", code=code, field=name)
    return dict(data)


_CHECKPOINT_FIELDS = {
    "seq": lambda v: type(v) is int and v >= 0, "head_hash": is_hex64, "time": _is_time,
    "key_id": _is_key_id, "signature": _is_signature,
}


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the log's entry ``seq`` has hash ``head_hash``."""

    seq: int
    head_hash: str
    time: str
    key_id: str
    signature: str  # base64 (standard alphabet, padded) of the Ed25519 signature
    # The hash of the checkpoint before this one (GENESIS_HASH for the first); None in format 1.
    prev_checkpoint: str | None = None

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.head_hash, self.time, self.key_id,
                                  prev_checkpoint=self.prev_checkpoint)

    def to_dict(self) -> dict[str, Any]:
        data = {"seq": self.seq, "head_hash": self.head_hash, "time": self.time,
                "key_id": self.key_id, "signature": self.signature}
        if self.prev_checkpoint is not None:
            data[PREV_CHECKPOINT_FIELD] = self.prev_checkpoint
        return data

    def hash(self) -> str:
        """sha256(CHECKPOINT_HASH_PREFIX || canonical_json(to_dict())), hex: what the next names."""
        return hashlib.sha256(CHECKPOINT_HASH_PREFIX + canonical_json(self.to_dict())).hexdigest()

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        """Read a checkpoint; raise InvalidInput unless every field has the right shape."""
        fields = _read_fields(data, _CHECKPOINT_FIELDS, {PREV_CHECKPOINT_FIELD: is_hex64},
                              what="checkpoint", code="checkpoint_invalid")
        return cls(**fields)


def checkpoint_message(seq: int, head_hash: str, time: str, key_id: str, *,
                       prev_checkpoint: str | None = None) -> bytes:
    """The signed bytes: CHECKPOINT_PREFIX || canonical({seq, head_hash, time, key_id
    [, prev_checkpoint]})."""
    signed: dict[str, Any] = {"seq": seq, "head_hash": head_hash, "time": time, "key_id": key_id}
    if prev_checkpoint is not None:
        signed[PREV_CHECKPOINT_FIELD] = prev_checkpoint
    return CHECKPOINT_PREFIX + canonical_json(signed)


@dataclass(frozen=True)
class ExportStatement:
    """The broker's signed word on one export: where it starts and which checkpoint ends it."""

    checkpoint: str       # hash of the export's final checkpoint
    first_seq: int        # seq of the export's first entry (1 for a full export)
    full: bool            # True: the whole log (no --since); verify then requires genesis
    since: str | None     # the --since time it was cut at, as a log time (None when full)
    time: str
    key_id: str
    signature: str

    def signed_fields(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "first_seq": self.first_seq, "full": self.full,
                "since": self.since, "time": self.time, "key_id": self.key_id}

    def message(self) -> bytes:
        return EXPORT_PREFIX + canonical_json(self.signed_fields())

    def to_dict(self) -> dict[str, Any]:
        return {**self.signed_fields(), "signature": self.signature}

    @classmethod
    def from_dict(cls, data: object) -> ExportStatement:
        fields = _read_fields(data, {
            "checkpoint": is_hex64, "first_seq": lambda v: type(v) is int and v >= 1,
            "full": lambda v: type(v) is bool, "since": lambda v: v is None or _is_time(v),
            "time": _is_time, "key_id": _is_key_id, "signature": _is_signature,
        }, {}, what="export statement", code="export_statement_invalid")
        return cls(**fields)


class MessageSigner(Protocol):
    """Signs bytes with the log's Ed25519 key, wherever that key lives (a file, a KMS)."""

    def public_key(self) -> Ed25519PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


class CheckpointSigner:
    """Signs checkpoints and export statements with the broker's Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey | MessageSigner) -> None:
        if not callable(getattr(private_key, "sign", None)) or not isinstance(
                private_key.public_key(), Ed25519PublicKey):
            raise InvalidInput("The log signing key must be an Ed25519 private key.",
                               code="signing_key_invalid")
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def _signature(self, message: bytes) -> str:
        return base64.b64encode(self._key.sign(message)).decode("ascii")

    def sign(self, seq: int, head_hash: str, time: str, *,
             prev_checkpoint: str | None = None) -> Checkpoint:
        """A checkpoint; ``prev_checkpoint`` is the predecessor's hash (None: format 1)."""
        if (type(seq) is not int or seq < 0 or not is_hex64(head_hash)
                or not (prev_checkpoint is None or is_hex64(prev_checkpoint))):
            raise InvalidInput("A checkpoint needs seq >= 0 and 64-hex head and predecessor hashes.",
                               code="checkpoint_invalid")
        message = checkpoint_message(seq, head_hash, time, self.key_id,
                                     prev_checkpoint=prev_checkpoint)
        return Checkpoint(seq=seq, head_hash=head_hash, time=time, key_id=self.key_id,
                          signature=self._signature(message), prev_checkpoint=prev_checkpoint)

    def sign_export(self, final: Checkpoint, *, first_seq: int, since: str | None,
                    time: str) -> ExportStatement:
        unsigned = ExportStatement(checkpoint=final.hash(), first_seq=first_seq, full=since is None,
                                   since=since, time=time, key_id=self.key_id, signature="")
        return ExportStatement(**{**unsigned.to_dict(),
                                  "signature": self._signature(unsigned.message())})


def verify_signature(signed: Checkpoint | ExportStatement, public_key: Ed25519PublicKey) -> bool:
    """True only if ``signed`` was signed by ``public_key`` (key id included)."""
    if signed.key_id != key_id_of(public_key):
        return False
    try:
        # NOTE: validate=True refuses non-alphabet characters instead of silently dropping them.
        signature = base64.b64decode(signed.signature, validate=True)
        public_key.verify(signature, signed.message())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def verify_checkpoint(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    """True only if ``checkpoint`` was signed by ``public_key`` (key id included)."""
    return verify_signature(checkpoint, public_key)


# --- keys ----------------------------------------------------------------------------------

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
