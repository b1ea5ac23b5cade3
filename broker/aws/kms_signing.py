"""The log's Ed25519 signing key in AWS KMS: checkpoints signed by KMS ``Sign``, the private key never on a host.

The key is an asymmetric KMS key of key spec ``ECC_NIST_EDWARDS25519`` and key usage ``SIGN_VERIFY``; it signs
with ``ED25519_SHA_512`` over the RAW message, which is pure EdDSA (RFC 8032): the signature KMS returns is a
standard 64-byte Ed25519 signature, so the log format (``docs/log-format.md``) and every verifier are unchanged.

At start-up the public key is fetched once (``GetPublicKey``) and checked: a key of another spec or usage, or
one that cannot sign with ED25519_SHA_512, stops the broker.  Every signature KMS returns is verified against
that public key before it is used: a checkpoint is never stored with a signature that does not verify.

Errors never carry AWS's own message text (it can echo request details).
"""

from __future__ import annotations

import logging

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.errors import InvalidInput, Unavailable

log = logging.getLogger("broker.aws.kms_signing")

KEY_SPEC = "ECC_NIST_EDWARDS25519"
KEY_USAGE = "SIGN_VERIFY"
SIGNING_ALGORITHM = "ED25519_SHA_512"


class SigningUnavailable(Unavailable):
    """KMS did not sign, or returned a signature that does not verify: nothing is signed."""

    code = "signing_unavailable"


class KmsMessageSigner:
    """A ``broker.domain.log.MessageSigner`` whose private key stays in KMS."""

    def __init__(self, *, key_id: str, endpoint_url: str | None = None, region: str | None = None,
                 client=None) -> None:
        if not key_id:
            raise InvalidInput("BROKER_SIGNING_KMS_KEY_ID is empty", code="config_invalid",
                               field="signing_kms_key_id")
        self.key_id = key_id
        # NOTE: one attempt, short timeouts.  A checkpoint is signed while its unit of work holds the log's lock
        # (broker.usecases.checkpoints), so a slow KMS must not hold it past BROKER_DB_LOCK_TIMEOUT_MS (5 s by
        # default): 1 s + 2 s at most.  A checkpoint KMS did not sign is not stored and is tried again at the
        # next one (the background checkpointer, `broker serve`'s periodic one), so botocore need not retry.
        self._kms = client or boto3.client("kms", endpoint_url=endpoint_url, region_name=region, config=Config(
            retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1, read_timeout=2))
        self._public_key = self._fetch_public_key()

    def _fetch_public_key(self) -> Ed25519PublicKey:
        try:
            answer = self._kms.get_public_key(KeyId=self.key_id)
        except ClientError as exc:
            raise InvalidInput(f"KMS key {self.key_id}: GetPublicKey was refused "
                               f"({exc.response.get('Error', {}).get('Code', 'error')})",
                               code="signing_key_invalid", field="signing_kms_key_id") from exc
        except BotoCoreError as exc:
            raise SigningUnavailable(f"KMS key {self.key_id}: KMS cannot be reached for its public key") from exc
        # NOTE: CustomerMasterKeySpec is KeySpec's deprecated name (KMS sends both, equal; moto only the old one).
        spec = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec")
        # Checked as a table, one loop; each must hold, an absent field included.
        checks = {
            "KeySpec": (spec == KEY_SPEC, f"key spec {spec}, not {KEY_SPEC}"),
            "KeyUsage": (answer.get("KeyUsage") == KEY_USAGE,
                         f"key usage {answer.get('KeyUsage')}, not {KEY_USAGE}"),
            "SigningAlgorithms": (SIGNING_ALGORITHM in (answer.get("SigningAlgorithms") or ()),
                                  f"signing algorithms {answer.get('SigningAlgorithms')}, without {SIGNING_ALGORITHM}"),
        }
        for name, (holds, problem) in checks.items():
            if not holds:
                raise InvalidInput(f"KMS key {self.key_id} cannot sign the log: {problem}",
                                   code="signing_key_invalid", field="signing_kms_key_id")
        try:
            public = serialization.load_der_public_key(answer["PublicKey"])
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInput(f"KMS key {self.key_id}: its public key is not readable",
                               code="signing_key_invalid", field="signing_kms_key_id") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise InvalidInput(f"KMS key {self.key_id}: its public key is not an Ed25519 key",
                               code="signing_key_invalid", field="signing_kms_key_id")
        return public

    def public_key(self) -> Ed25519PublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data`` by the KMS key, verified here before it is returned."""
        try:
            answer = self._kms.sign(
                KeyId=self.key_id,
                Message=data,
                # NOTE: RAW, not DIGEST: ED25519_SHA_512 over a raw message is pure Ed25519 (the signature every
                # verifier of the log checks); a DIGEST message type would be Ed25519ph, another signature.
                MessageType="RAW",
                # NOTE: named, never left to KMS: the one algorithm whose output is a standard Ed25519 signature.
                SigningAlgorithm=SIGNING_ALGORITHM,
            )
            signature = answer["Signature"]
        except (BotoCoreError, ClientError, KeyError) as exc:
            raise SigningUnavailable(f"KMS key {self.key_id} did not sign") from exc
        try:
            # NOTE: fail closed: a signature that does not verify with the key fetched at start-up is never used.
            self._public_key.verify(signature, data)
        except (InvalidSignature, TypeError, ValueError) as exc:
            log.error("KMS key %s returned a signature that does not verify: nothing signed", self.key_id)
            raise SigningUnavailable(f"KMS key {self.key_id} returned a signature that does not verify") from exc
        return signature
