"""Signed checkpoints and the log's Ed25519 keys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import InvalidInput

from broker.domain.log.chain import CHECKPOINT_PREFIX, canonical_json, is_hex64

_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")


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
            "head_hash": is_hex64,
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
        if type(seq) is not int or seq < 0 or not is_hex64(head_hash):
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
