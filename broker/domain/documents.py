"""Documents people review before the broker believes them (scope templates, the accounts configuration):
what a reviewer reads must be what loads.

YAML and JSON keep the *last* value of a key written twice in one mapping, and YAML's merge keys (``<<``)
let an explicit key override a merged one; a reader sees the first.  A ``dev`` template could show
``logs:FilterLogEvents`` and load another ``actions:`` list; an accounts file could name the production
account ``production`` at the top and ``dev`` further down.  Both readers here refuse instead.  Pure: text in,
values out.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key written twice in one mapping, or a merge key (``<<``)."""


class ReviewedYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader (several times faster than the pure-Python one) that refuses a key written
    twice in one mapping and YAML merge keys: YAML keeps the last (or the explicit) value, so a reviewer
    reading the first ``actions:`` (or an account's first environment) would approve another document
    than the one that loads."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise DuplicateKey(None, None, "a YAML merge key ('<<') hides which value applies; write the keys out",
                                   key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: PyYAML's own constructor refuses it below
            if key in seen:
                raise DuplicateKey(None, None, f"key {key!r} is written twice in one mapping (lines {seen[key]} and "
                                   f"{key_node.start_mark.line + 1}): YAML keeps the last, a reader sees the first",
                                   key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _no_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(None, None, f"key {key!r} is written twice in one object: JSON keeps the last, a "
                               "reader sees the first", None)
        seen[key] = value
    return seen


def load_reviewed(text: str, *, json_format: bool = False) -> Any:
    """``text`` as YAML (or JSON), refusing a key written twice in one mapping and YAML merge keys
    (:class:`DuplicateKey`, a ``yaml.YAMLError``; JSON syntax errors stay ``ValueError``)."""
    if json_format:
        return json.loads(text, object_pairs_hook=_no_duplicate_pairs)
    return yaml.load(text, Loader=ReviewedYamlLoader)  # noqa: S506 - a safe loader (libyaml's when present)


__all__ = ["DuplicateKey", "ReviewedYamlLoader", "load_reviewed"]
