"""Signed templates: template owners co-sign a template's canonical form before production loads it.

A signature is detached: one small JSON file per owner and template (see :func:`signature_file_name`),
beside the templates (``<folder>/signatures/<template name>/<owner>.sig``), so that two owners signing
on two branches never touch the same file.  It holds::

    {"format": "broker-template-signature/v1", "template": NAME, "digest": "sha256:...",
     "key_id": KEY_ID, "owner": OWNER, "signature": BASE64}

The signed message is ``SIGNATURE_PREFIX || canonical_json({"digest": DIGEST, "template": NAME})``
(keys sorted, no whitespace, UTF-8), with Ed25519.  ``DIGEST`` is the template's version digest: the
sha256 of its canonical form (every key, defaults included), so *any* change to what a template
grants, who may request it or how it is approved invalidates every earlier signature.  ``key_id`` is
the first 16 hex characters of sha256 of the raw 32-byte public key.

Verification trusts nothing in the file but the signature: the owner is the one whose configured
public key verifies it (the file's ``owner`` and ``key_id`` only help find the key); a signature
counts once per distinct owner, whichever of the owner's keys made it and however many copies exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.domain.templates import Environment, ScopeTemplate
from broker.errors import InvalidInput

SIGNATURE_FORMAT = "broker-template-signature/v1"
# Domain separation: a template signature can never be passed off as a log checkpoint signature.
SIGNATURE_PREFIX = b"agent-credential-broker/template-signature/v1\n"
SIGNATURES_FOLDER = "signatures"
SIGNATURE_SUFFIX = ".sig"
DEFAULT_REQUIRED_SIGNATURES = 2


def signed_message(template_name: str, digest: str) -> bytes:
    body = json.dumps({"digest": digest, "template": template_name}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return SIGNATURE_PREFIX + body.encode("utf-8")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_file_name(template_name: str, owner: str) -> str:
    """``signatures/<template>/<owner>.sig`` (relative to the template folder)."""
    return f"{SIGNATURES_FOLDER}/{template_name}/{owner}{SIGNATURE_SUFFIX}"


@dataclass(frozen=True)
class TemplateSignature:
    template: str
    digest: str
    key_id: str
    owner: str
    signature: str            # base64 (standard alphabet) of the 64-byte Ed25519 signature
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": SIGNATURE_FORMAT, "template": self.template, "digest": self.digest,
                "key_id": self.key_id, "owner": self.owner, "signature": self.signature}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def sign_template(template: ScopeTemplate, *, owner: str, key: Ed25519PrivateKey) -> TemplateSignature:
    signature = key.sign(signed_message(template.name, template.version_digest))
    return TemplateSignature(template=template.name, digest=template.version_digest,
                             key_id=key_id_of(key.public_key()), owner=owner,
                             signature=base64.b64encode(signature).decode("ascii"))


def parse_signature(text: str, *, source: str) -> TemplateSignature:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{source}: a template signature must be JSON", code="signature_unreadable",
                           details={"source": source}) from exc
    fields = ("template", "digest", "key_id", "owner", "signature")
    if (not isinstance(data, dict) or data.get("format") != SIGNATURE_FORMAT
            or not all(isinstance(data.get(name), str) for name in fields)):
        raise InvalidInput(f"{source}: not a {SIGNATURE_FORMAT} file", code="signature_unreadable",
                           details={"source": source})
    return TemplateSignature(**{name: data[name] for name in fields}, source=source)


@dataclass(frozen=True)
class TemplateOwner:
    name: str
    keys: tuple[Ed25519PublicKey, ...]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key_id_of(k) for k in self.keys)


def load_public_key(pem: str | bytes, *, owner: str) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"template owner {owner!r}: public key is not PEM", code="config_invalid",
                           field="template_owners") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"template owner {owner!r}: public key is not Ed25519", code="config_invalid",
                           field="template_owners")
    return key


@dataclass(frozen=True)
class Verdict:
    """How one template stands against the signing rule."""

    template: str
    digest: str
    required: int                     # 0: this template needs no signatures
    owners: tuple[str, ...]           # distinct owners with a valid signature over this digest
    problems: tuple[str, ...]         # why a signature file did not count (one line each)
    reason: str                       # why signatures are (or are not) required

    @property
    def satisfied(self) -> bool:
        return len(self.owners) >= self.required

    def message(self) -> str:
        got = ", ".join(self.owners) or "none"
        text = (f"template '{self.template}' ({self.reason}) needs signatures from {self.required} distinct "
                f"template owners over {self.digest}; valid: {len(self.owners)} ({got})")
        return text + ("; " + "; ".join(self.problems) if self.problems else "")

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "digest": self.digest, "required": self.required,
                "owners": list(self.owners), "problems": list(self.problems), "reason": self.reason,
                "satisfied": self.satisfied}


@dataclass(frozen=True)
class SigningRule:
    """Which templates need how many owners' signatures.  With no owners, nothing is required
    (deployments from before signed templates keep loading; ``broker serve`` warns)."""

    owners: tuple[TemplateOwner, ...] = ()
    required: int = DEFAULT_REQUIRED_SIGNATURES

    def __post_init__(self) -> None:
        if self.owners and not 1 <= self.required <= len(self.owners):
            raise InvalidInput(f"{self.required} distinct template owners must sign, but {len(self.owners)} "
                               "are configured: no template could ever load", code="config_invalid",
                               field="template_signatures_required")
        names = [o.name for o in self.owners]
        if len(set(names)) != len(names):
            raise InvalidInput("a template owner is listed twice", code="config_invalid", field="template_owners")
        ids = [key_id for o in self.owners for key_id in o.key_ids]
        if len(set(ids)) != len(ids):
            # NOTE: one key under two names would let one person count as two owners.
            raise InvalidInput("one public key is listed for two template owners (or twice)", code="config_invalid",
                               field="template_owners")

    @property
    def enforced(self) -> bool:
        return bool(self.owners)

    def why_required(self, template: ScopeTemplate, risky: bool) -> str | None:
        if template.environment is Environment.PRODUCTION:
            return "production"
        if risky:
            return "its risk classes need co-signing"
        return None

    def verdict(self, template: ScopeTemplate, signatures: Iterable[TemplateSignature], *,
                risky: bool = False) -> Verdict:
        reason = self.why_required(template, risky)
        required = self.required if (self.enforced and reason) else 0
        owners: list[str] = []
        problems: list[str] = []
        for signature in signatures:
            owner, problem = self._check(template, signature)
            if problem:
                problems.append(f"{signature.source or 'a signature'}: {problem}")
            elif owner in owners:
                problems.append(f"{signature.source or 'a signature'}: owner {owner} already counted")
            else:
                owners.append(owner)
        return Verdict(template=template.name, digest=template.version_digest, required=required,
                       owners=tuple(owners), problems=tuple(problems), reason=reason or "not production, no risk")

    def _check(self, template: ScopeTemplate, signature: TemplateSignature) -> tuple[str, str | None]:
        if signature.template != template.name:
            return "", f"signs template '{signature.template}', not '{template.name}'"
        if signature.digest != template.version_digest:
            return "", "signs another version of this template (the template changed since)"
        try:
            raw = base64.b64decode(signature.signature, validate=True)
        except (binascii.Error, ValueError):
            return "", "signature is not base64"
        message = signed_message(template.name, template.version_digest)
        for owner in self.owners:
            for key in owner.keys:
                try:
                    key.verify(raw, message)
                except InvalidSignature:
                    continue
                return owner.name, None
        return "", "not made by the key of any configured template owner"


def owners_from_config(data: Any, *, read_key_file) -> tuple[tuple[TemplateOwner, ...], int | None]:
    """Parse the owners file: ``{"owners": [{"name", "public_key" | "public_key_file" | "public_keys"}],
    "required_signatures": N}``.  ``read_key_file(path) -> bytes`` resolves key files (I/O stays outside)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("owners"), list) or not data["owners"]:
        raise InvalidInput("the template owners file must hold a non-empty 'owners' list", code="config_invalid",
                           field="template_owners")
    owners = []
    for entry in data["owners"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise InvalidInput("every template owner needs a 'name'", code="config_invalid", field="template_owners")
        name = entry["name"]
        pems: list[str | bytes] = list(entry.get("public_keys") or [])
        if entry.get("public_key"):
            pems.append(entry["public_key"])
        if entry.get("public_key_file"):
            pems.append(read_key_file(entry["public_key_file"]))
        if not pems:
            raise InvalidInput(f"template owner {name!r} has no public key", code="config_invalid",
                               field="template_owners")
        owners.append(TemplateOwner(name=name, keys=tuple(load_public_key(p, owner=name) for p in pems)))
    required = data.get("required_signatures")
    if required is not None and (isinstance(required, bool) or not isinstance(required, int)):
        raise InvalidInput("required_signatures must be an integer", code="config_invalid",
                           field="template_signatures_required")
    return tuple(owners), required


def signatures_for(template_name: str, signatures: Sequence[TemplateSignature]) -> list[TemplateSignature]:
    return [s for s in signatures if s.template == template_name]
