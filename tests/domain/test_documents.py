"""Reviewed documents (templates, accounts, owners, the configuration file): a key written twice, or a YAML
merge key, is refused instead of resolved to the last value a reader may not see."""

from __future__ import annotations

import pytest

from broker.domain.documents import DuplicateKey, load_reviewed


@pytest.mark.parametrize(("text", "json_format"), [
    ("a: 1\nb: 2\na: 3\n", False),
    ("outer:\n  inner: 1\n  inner: 2\n", False),
    ("base: &b {x: 1}\nuse:\n  <<: *b\n  x: 2\n", False),
    ('{"a": 1, "a": 2}', True),
    ('{"outer": {"inner": 1, "inner": 2}}', True),
])
def test_a_key_written_twice_is_refused(text, json_format):
    with pytest.raises(DuplicateKey):
        load_reviewed(text, json_format=json_format)


def test_distinct_keys_and_aliases_load():
    assert load_reviewed("a: &v [1, 2]\nb: *v\n") == {"a": [1, 2], "b": [1, 2]}
    assert load_reviewed('{"a": {"b": 1}, "c": [1, 1]}', json_format=True) == {"a": {"b": 1}, "c": [1, 1]}
