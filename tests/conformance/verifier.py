"""An issuance-log verifier written from docs/log-format.md alone (section numbers below are the doc's).

It imports nothing of ``broker``: only the standard library and ``cryptography`` for Ed25519.  It answers
whether an export verifies, not the broker's detailed problem codes; tests/conformance checks that it agrees
with ``broker audit verify``.  Usage: ``python tests/conformance/verifier.py EXPORT PUBLIC_KEY_PEM``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

GENESIS = hashlib.sha256(b"agent-credential-broker/issuance-log/v1/genesis").hexdigest()  # section 4
HEX = set("0123456789abcdef")


class Refused(Exception):
    pass


def canonical(obj) -> bytes:  # section 2
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def is_hash(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX


def check(condition: bool, why: str) -> None:
    if not condition:
        raise Refused(why)


def verify_signature(obj: dict, prefix: bytes, keys: dict) -> None:  # sections 5 and 6
    check(obj.get("key_id") in keys, "signed by an unknown key")
    signed = {name: value for name, value in obj.items() if name != "signature"}
    try:
        keys[obj["key_id"]].verify(base64.b64decode(obj["signature"], validate=True), prefix + canonical(signed))
    except (InvalidSignature, ValueError) as exc:
        raise Refused("bad signature") from exc


def verify(lines: list[bytes], public_keys: list) -> tuple[bool, str]:
    keys = {}
    for key in public_keys:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys[hashlib.sha256(raw).hexdigest()[:16]] = key  # section 5: key id
    try:
        return _verify(lines, keys)
    except Refused as refused:
        return False, str(refused)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, or a field missing
        return False, f"malformed: {exc!r}"


def _verify(lines: list[bytes], keys: dict) -> tuple[bool, str]:
    first_seq = None
    seq, head = 0, GENESIS          # the last entry seen (seq 0: none yet)
    checkpoint = None               # the last checkpoint seen
    signed_up_to = 0                # the seq the last checkpoint signed
    statement = None
    chained = False
    for number, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\n")
        obj = json.loads(raw)
        check(isinstance(obj, dict), "not an object")
        check(statement is None or "checkpoint" in obj, "only the final checkpoint may follow the statement")
        if "checkpoint" in obj or "export" in obj:  # sections 5, 6: these lines must be canonical
            check(len(obj) == 1 and canonical(obj) == raw, "checkpoint or statement not canonical")
        if "checkpoint" in obj:  # section 5
            check(statement is None or number == len(lines), "a line after the final checkpoint")
            new = obj["checkpoint"]
            check(not (checkpoint and checkpoint["seq"] == new["seq"] and checkpoint["key_id"] == new["key_id"]),
                  "second checkpoint for a seq")
            verify_signature(new, b"\x01", keys)
            check(new["seq"] == seq and new["head_hash"] == head, "checkpoint does not sign the entry before it")
            if "prev_checkpoint" in new:
                chained = True
                if checkpoint is not None:
                    expected = hashlib.sha256(b"\x02" + canonical(checkpoint)).hexdigest()
                    check(new["prev_checkpoint"] == expected, "checkpoint does not name its predecessor")
                elif first_seq in (None, 1):
                    check(new["prev_checkpoint"] == GENESIS, "first checkpoint does not name genesis")
            else:
                check(not chained, "a checkpoint without predecessor after chained ones")
            checkpoint, signed_up_to = new, seq
        elif "export" in obj:  # section 6
            check(statement is None, "second statement")
            statement = obj["export"]
            verify_signature(statement, b"\x03", keys)
        else:  # sections 3, 4
            stated = obj["hash"]
            check(is_hash(stated) and is_hash(obj["prev_hash"]), "bad hash fields")
            check(type(obj["seq"]) is int and obj["seq"] >= 1, "bad seq")
            member = b'"hash":"' + stated.encode() + b'"'
            start = raw.find(member)
            check(start >= 0, "hash member not found")
            end = start + len(member)
            body = raw[:start] + raw[end + 1:] if raw[end:end + 1] == b"," else raw[:start - 1] + raw[end:]
            check(hashlib.sha256(b"\x00" + body).hexdigest() == stated, "entry does not match its hash")
            if first_seq is None:
                first_seq = obj["seq"]
                check(first_seq > 1 or obj["prev_hash"] == GENESIS, "seq 1 does not chain to genesis")
                check(checkpoint is None or first_seq == 1, "checkpoint before a mid-log start")
            else:
                check(obj["seq"] == seq + 1 and obj["prev_hash"] == head, "chain broken")
            seq, head = obj["seq"], stated
    check(checkpoint is not None and first_seq is not None, "no checkpoint or no entries")
    check(signed_up_to == seq, "entries after the last checkpoint")  # section 7
    check("checkpoint" in json.loads(lines[-1]), "the last line is not a checkpoint")
    if statement is not None:  # section 6
        final_hash = hashlib.sha256(b"\x02" + canonical(checkpoint)).hexdigest()
        check(statement["checkpoint"] == final_hash, "statement names another checkpoint")
        check(first_seq == (1 if statement["full"] else statement["first_seq"]), "statement's start")
    else:
        check(not chained, "chained checkpoints without a statement")
    return True, f"{seq - first_seq + 1} entries verified"


def main(argv: list[str]) -> int:
    with open(argv[1], "rb") as pem:
        key = serialization.load_pem_public_key(pem.read())
    with open(argv[0], "rb") as export:
        ok, message = verify(export.read().splitlines(keepends=True), [key])
    print(("OK: " if ok else "REFUSED: ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
