"""The template owners file is a reviewed document: a key written twice is refused (config_invalid)."""

from __future__ import annotations

import pytest

from broker.errors import InvalidInput
from broker.runtime.template_loading import signing_rule


def test_required_signatures_written_twice_is_refused(tmp_path):
    path = tmp_path / "owners.yaml"
    path.write_text("owners:\n  - {name: alice, public_key: x}\nrequired_signatures: 2\nrequired_signatures: 1\n")
    with pytest.raises(InvalidInput) as caught:
        signing_rule(path)
    assert caught.value.code == "config_invalid" and "written twice" in caught.value.message
