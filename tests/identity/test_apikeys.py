import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.identity.apikeys import (
    generate_api_key,
    hash_api_key,
    parse_api_key,
    verify_api_key_hash,
)


def test_generated_key_has_documented_format_and_entropy():
    issued = generate_api_key()
    match = re.fullmatch(r"brk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})", issued.token)
    assert match is not None
    assert match[1] == issued.key_id
    # 43 base64url characters carry 258 bits; at least 256 of them random.
    assert len(match[2]) * math.log2(64) >= 256


def test_generated_keys_are_unique():
    tokens = {generate_api_key().token for _ in range(200)}
    key_ids = {t.split("_")[1] for t in tokens}
    assert len(tokens) == 200
    assert len(key_ids) == 200


def test_stored_hash_is_not_the_token_and_repr_hides_secret():
    issued = generate_api_key()
    assert issued.token not in issued.token_hash
    assert issued.token_hash == hash_api_key(issued.token)
    assert issued.token_hash.startswith("sha256:")
    assert issued.token.split("_", 2)[2] not in repr(issued)


def test_parse_round_trip():
    issued = generate_api_key()
    assert parse_api_key(issued.token) == (issued.key_id, issued.token_hash)


@pytest.mark.parametrize("token", [
    "",
    "brk_",
    "brk__",
    "brk_0123456789ab",
    "brk_0123456789ab_",
    "brk_0123456789AB_" + "a" * 43,  # key id must be lowercase hex
    "brk_0123456789a_" + "a" * 43,  # key id too short
    "brk_0123456789abc_" + "a" * 43,  # key id too long
    "brk_0123456789ab_" + "a" * 42,  # secret too short
    "brk_0123456789ab_" + "a" * 44,  # secret too long
    "brk_0123456789ab_" + "a" * 42 + "+",  # not urlsafe
    "BRK_0123456789ab_" + "a" * 43,
    "xbrk_0123456789ab_" + "a" * 43,
    "brk_0123456789ab_" + "a" * 43 + "\n",
    " brk_0123456789ab_" + "a" * 43,
    "eyJhbGciOiJub25lIn0.e30.",
], ids=lambda t: repr(t)[:40])
def test_parse_rejects_foreign_formats(token):
    assert parse_api_key(token) is None


def test_parse_rejects_non_strings():
    assert parse_api_key(None) is None  # type: ignore[arg-type]
    assert parse_api_key(b"brk_0123456789ab_" + b"a" * 43) is None  # type: ignore[arg-type]


def test_verify_hash():
    issued = generate_api_key()
    other = generate_api_key()
    assert verify_api_key_hash(hash_api_key(issued.token), issued.token_hash)
    assert not verify_api_key_hash(hash_api_key(other.token), issued.token_hash)
    assert not verify_api_key_hash("", issued.token_hash)


@given(st.text(max_size=120))
def test_parse_never_raises_and_only_accepts_format(text):
    parsed = parse_api_key(text)
    if parsed is not None:
        assert text.startswith("brk_") and len(text) == 4 + 12 + 1 + 43
        assert parsed[1] == hash_api_key(text)


@given(st.integers(min_value=17, max_value=59), st.characters(codec="ascii"))
def test_any_single_character_change_breaks_the_hash(position, replacement):
    issued = generate_api_key()
    if issued.token[position] == replacement:
        return
    tampered = issued.token[:position] + replacement + issued.token[position + 1:]
    assert not verify_api_key_hash(hash_api_key(tampered), issued.token_hash)
