"""Rows <-> records: the store's tables keep JSON text, the use cases see ``broker.domain.records``' decoded values.

Every JSON encoding and decoding of the records' fields is here, and nowhere else.  The text written is
byte for byte what the broker has always written (the ``json`` module's default separators):

* ``requests.parameters``: the object, keys sorted;
* ``requests.session_tags``: the list of ``[key, value]`` pairs, in order;
* ``requests.identity``: the object, keys sorted, or NULL when there is none;
* ``principals.roles`` / ``groups``: the sorted list; ``principals.attributes``: the object with its keys
  sorted, or NULL when there is none.

A stored value that does not decode to what its record holds (text edited in the database: not JSON, or of
another shape) reads as a value no request can have, under the key :data:`UNREADABLE`: it never matches what
was approved (a redemption then fails as altered) and reading the row never raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from broker.domain.records import UNREADABLE, ApiKey, Approval, CredentialRequest, Grant, MintIntent, PrincipalEntry


# --------------------------------------------------------------------------- encoding (records -> columns)
def encode_parameters(parameters: Mapping[str, Any]) -> str:
    return json.dumps(parameters if type(parameters) is dict else dict(parameters), sort_keys=True)


def encode_session_tags(tags: tuple[tuple[str, str], ...]) -> str:
    # NOTE: tuples encode as JSON arrays: the text of the [[key, value], ...] lists written before.
    return json.dumps(tags)


def encode_identity(identity: Mapping[str, str] | None) -> str | None:
    return json.dumps(dict(identity), sort_keys=True) if identity else None


def encode_names(names: tuple[str, ...] | list[str]) -> str:
    return json.dumps(sorted(set(names)))


def encode_attributes(attributes: Mapping[str, str] | None) -> str | None:
    return json.dumps(dict(sorted(attributes.items()))) if attributes else None


def request_values(record: CredentialRequest) -> dict[str, Any]:
    """The ``requests`` row's column values for ``record``."""
    values = {name: getattr(record, name) for name in _REQUEST_FIELDS}
    values["parameters"] = encode_parameters(record.parameters)
    values["session_tags"] = encode_session_tags(record.session_tags)
    values["identity"] = encode_identity(record.identity)
    return values


def plain_values(record: Grant | MintIntent | Approval | ApiKey) -> dict[str, Any]:
    """The column values of a record without JSON fields (an autoincrement key left unset is left out)."""
    values = {name: getattr(record, name) for name in _FIELDS[type(record)]}
    if type(record) is Approval and values["id"] is None:
        del values["id"]   # the database assigns it
    return values


# --------------------------------------------------------------------------- decoding (columns -> records)
def _unreadable(text: Any) -> Mapping[str, Any]:
    return MappingProxyType({UNREADABLE: str(text)})


def decode_parameters(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return _unreadable(text)
    return MappingProxyType(value) if type(value) is dict else _unreadable(text)


def decode_session_tags(text: str) -> tuple[tuple[str, str], ...]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    if type(value) is list and all(type(tag) is list and len(tag) == 2 and type(tag[0]) is str
                                   and type(tag[1]) is str for tag in value):
        return tuple((key, tag_value) for key, tag_value in value)
    return ((UNREADABLE, str(text)),)


def decode_identity(text: str | None) -> Mapping[str, str] | None:
    if text is None:
        return None
    return decode_parameters(text)


def decode_names(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return ()
    return tuple(value) if type(value) is list and all(type(name) is str for name in value) else ()


def decode_attributes(text: str | None) -> Mapping[str, str] | None:
    return decode_parameters(text) if text else None


def request_record(row: Any) -> CredentialRequest:
    """A ``requests`` row (a Core result row) as its record."""
    values = dict(row._mapping)
    values["parameters"] = decode_parameters(values["parameters"])
    values["session_tags"] = decode_session_tags(values["session_tags"])
    values["identity"] = decode_identity(values["identity"])
    return CredentialRequest(**values)


def principal_entry(row: Any) -> PrincipalEntry:
    values = dict(row._mapping)
    values["roles"] = decode_names(values["roles"])
    values["groups"] = decode_names(values["groups"])
    values["attributes"] = decode_attributes(values["attributes"])
    values["disabled"] = bool(values["disabled"])
    return PrincipalEntry(**values)


def grant_record(row: Any) -> Grant:
    return Grant(**row._mapping)


def intent_record(row: Any) -> MintIntent:
    return MintIntent(**{**row._mapping, "resolved": bool(row.resolved)})


def approval_record(row: Any) -> Approval:
    return Approval(**row._mapping)


def api_key_record(row: Any) -> ApiKey:
    return ApiKey(**{**row._mapping, "revoked": bool(row.revoked)})


_REQUEST_FIELDS = tuple(CredentialRequest.__dataclass_fields__)
_FIELDS: dict[type, tuple[str, ...]] = {kind: tuple(kind.__dataclass_fields__)
                                        for kind in (Grant, MintIntent, Approval, ApiKey)}


__all__ = ["UNREADABLE", "api_key_record", "approval_record", "decode_attributes", "decode_identity",
           "decode_names", "decode_parameters", "decode_session_tags", "encode_attributes", "encode_identity",
           "encode_names", "encode_parameters", "encode_session_tags", "grant_record", "intent_record",
           "plain_values", "principal_entry", "request_record", "request_values"]
