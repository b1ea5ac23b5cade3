"""Broker-issued API keys.

A key looks like ``brk_<key_id>_<secret>``:

* ``brk_`` makes a leaked key self-identifying (secret scanners can match it);
* ``key_id`` is 12 lowercase hex characters, not secret, used to look the key up;
* ``secret`` is 32 random bytes from :mod:`secrets` (256 bits), URL-safe base64
  without padding (43 characters).

The full key is shown once, at issue time.  Only its hash is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

API_KEY_PREFIX = "brk_"
KEY_ID_HEX_CHARS = 12
SECRET_BYTES = 32  # NOTE: 256 bits of entropy; the brief's floor.
# token_urlsafe(32) is exactly 43 characters of [A-Za-z0-9_-].
_SECRET_CHARS = 43
HASH_SCHEME = "sha256"

_API_KEY_FORMAT = re.compile(
    rf"^{API_KEY_PREFIX}(?P<key_id>[0-9a-f]{{{KEY_ID_HEX_CHARS}}})_(?P<secret>[A-Za-z0-9_-]{{{_SECRET_CHARS}}})$"
)


@dataclass(frozen=True)
class IssuedApiKey:
    """A freshly generated key.  ``token`` is shown to the holder once and never stored."""

    key_id: str
    token: str
    token_hash: str

    def __repr__(self) -> str:  # NOTE: keep the secret out of logs and tracebacks.
        return f"IssuedApiKey(key_id={self.key_id!r}, token='<redacted>', token_hash={self.token_hash!r})"


def generate_api_key() -> IssuedApiKey:
    key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
    token = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return IssuedApiKey(key_id=key_id, token=token, token_hash=hash_api_key(token))


def hash_api_key(token: str) -> str:
    """The stored form of a key: ``sha256:<hex>`` of the whole token.

    NOTE: a fast hash is enough here, and a slow KDF (bcrypt, argon2) would add
    nothing but latency.  KDFs exist to slow down guessing of *low-entropy*
    secrets such as passwords.  Our secret is 256 uniformly random bits, so even
    with the stored hash in hand an attacker faces 2**256 guesses, no matter how
    fast each one is.  The scheme prefix lets us change the hash later.
    """
    return f"{HASH_SCHEME}:{hashlib.sha256(token.encode('utf-8')).hexdigest()}"


def parse_api_key(token: str) -> tuple[str, str] | None:
    """``(key_id, token_hash)`` for a token in our format, else ``None``."""
    if not isinstance(token, str):
        return None
    match = _API_KEY_FORMAT.fullmatch(token)
    if match is None:
        return None
    return match["key_id"], hash_api_key(token)


def verify_api_key_hash(token_hash: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key's hash with the stored hash."""
    # NOTE: hmac.compare_digest so the time taken does not reveal how many leading
    # characters matched.
    return hmac.compare_digest(token_hash.encode("utf-8"), stored_hash.encode("utf-8"))
