"""The verifier's shortcuts keep its verdicts: a checkpoint line read without a full parse (``_read_checkpoint``)
gets exactly what the full parse gives it, and an entry's hashed bytes are cut from its line as
docs/log-format.md section 4 says (the first ``"hash":"<hex>"`` member, and the comma after it or, when none
follows, the one before it)."""

from __future__ import annotations

import hashlib
import json
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from broker.domain import log
from broker.domain.log import export
from tests.domain.test_log import signer
from tests.domain.test_log_checkpoint_chain import TIME, chained_export, lines_of, standard

HEX = "0123456789abcdef"


def outcome(read, raw: bytes):
    """What a checkpoint reader gives for a line: (checkpoint, message), or the failure it raises."""
    try:
        return read(raw, 7)
    except export._Failure as failure:
        return ("failure", failure.problem, failure.message, failure.seq, failure.line)
    except Exception as exc:  # noqa: BLE001 - compared, not hidden: both readers must raise the same
        return ("raised", type(exc))


def honest_line(**change) -> bytes:
    checkpoint = standard()[1][1].to_dict()
    checkpoint.update(change)
    return log.canonical_json({"checkpoint": checkpoint})


# Near the broker's lines: values a canonical encoder writes verbatim or escapes, ints beyond 18 digits, other types.
texts = st.text(alphabet=st.sampled_from(HEX + "AZaz+/= :.-T\"\\\u00e9\u2028\x00\x1f\x7f~"), max_size=70)
values = {
    "seq": st.integers(-3, 10**19 + 3) | st.sampled_from([0, 1, 10**18 - 1, 10**18, True]) | texts,
    "head_hash": st.text(alphabet=HEX + "A", min_size=63, max_size=65) | texts,
    "key_id": st.text(alphabet=HEX + "g", min_size=15, max_size=17) | texts,
    "prev_checkpoint": st.text(alphabet=HEX + "A", min_size=63, max_size=65) | st.none() | texts,
    "signature": st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=201) | texts,
    "time": texts | st.just(TIME) | st.text(max_size=65),
}
ENCODINGS = {
    "canonical": log.canonical_json,
    "ascii escapes": lambda obj: json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(),
    "spaces": lambda obj: json.dumps(obj, sort_keys=True, ensure_ascii=False).encode(),
    "unsorted": lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(),
}


@st.composite
def checkpoint_lines(draw) -> bytes:
    fields = standard()[1][1].to_dict()
    for name in draw(st.sets(st.sampled_from(sorted(values)), max_size=3)):
        fields[name] = draw(values[name])
    if draw(st.booleans()) and fields.get("prev_checkpoint") is None:
        fields.pop("prev_checkpoint", None)
    if draw(st.integers(0, 9)) == 0:
        fields["extra"] = 1
    if draw(st.integers(0, 9)) == 0:
        fields.pop(draw(st.sampled_from(sorted(fields))))
    raw = ENCODINGS[draw(st.sampled_from(sorted(ENCODINGS)))]({"checkpoint": fields})
    return raw + draw(st.sampled_from([b"", b"", b"", b" ", b"\r", b"}", b"\n"]))


@settings(max_examples=1000, deadline=None)
@given(raw=checkpoint_lines())
@example(raw=honest_line())
@example(raw=honest_line(prev_checkpoint=None))  # format 1
@example(raw=honest_line(seq=0))
@example(raw=honest_line(time="2026-01-02T03:04:05.000000Z\\"))
@example(raw=honest_line(time="caf\u00e9"))  # canonical, but not the shortcut's: the full parse reads it
@example(raw=honest_line(seq=10**18))
@example(raw=honest_line(seq=10**18 - 1))
@example(raw=honest_line() + b" ")
@example(raw=honest_line().replace(b'"seq":8', b'"seq":08'))
@example(raw=honest_line().replace(b'"signature":"', b'"signature":"\\/'))
def test_a_checkpoint_line_read_without_a_parse_gets_the_full_parses_verdict(raw):
    assert outcome(export._read_checkpoint, raw) == outcome(export._parse_checkpoint, raw)


def test_the_broker_lines_take_the_shortcut_and_sign_the_checkpoints_message():
    for line in lines_of():
        if line.startswith(b'{"checkpoint":'):
            raw = line.removesuffix(b"\n")
            assert export._CANONICAL_CHECKPOINT.fullmatch(raw) is not None
            checkpoint, message = export._read_checkpoint(raw, 1)
            assert message == checkpoint.message() and log.checkpoint_line(checkpoint) == line


@pytest.mark.parametrize("damage", [
    lambda line: line.replace(b"}}\n", b"}} \n"),
    lambda line: line.replace(b'","time":"', b'", "time":"'),
    lambda line: line.replace(b'"time":"2', b'"time":"\\u0032'),
], ids=["trailing space", "a space", "an escape"])
def test_a_non_canonical_checkpoint_line_is_malformed(damage):
    lines = lines_of()
    index = next(i for i, line in enumerate(lines) if line.startswith(b'{"checkpoint":'))
    lines[index] = damage(lines[index])
    report = log.verify_export(lines, signer().public_key)
    assert (report.ok, report.problem, report.line) == (False, "malformed", index + 1), report.message
    assert "not canonical" in report.message


def test_a_checkpoint_time_beyond_ascii_verifies():
    # Canonical, but not what the shortcut reads (an escaped quote and backslash, non-ASCII): the full parse's verdict.
    entries = list(standard()[0])
    checkpoints, previous = [], log.GENESIS_HASH
    for entry in entries[3::4]:
        checkpoints.append(signer().sign(entry["seq"], entry["hash"], '2026 \u00e9t\u00e9 "\\',
                                         prev_checkpoint=previous))
        previous = checkpoints[-1].hash()
    lines = chained_export(entries, checkpoints)
    assert all(export._CANONICAL_CHECKPOINT.fullmatch(line.rstrip(b"\n")) is None
               for line in lines if line.startswith(b'{"checkpoint":'))
    report = log.verify_export(lines, signer().public_key)
    assert report.ok and report.checkpoints == len(checkpoints) == 3, report.message


# --- an entry's hashed bytes ---------------------------------------------------------------------------------------
def crafted(members: bytes) -> bytes:
    """A line ``{<members>,"hash":"<its hash>"}``: the hash member last, so the comma before it is cut."""
    stated = hashlib.sha256(log.ENTRY_PREFIX + b"{" + members + b"}").hexdigest()
    return b"{" + members + b',"hash":"' + stated.encode() + b'"}'


def test_an_entry_whose_hash_member_is_last_has_the_comma_before_it_cut():
    line = crafted(b'"prev_hash":"' + log.GENESIS_HASH.encode() + b'","seq":1')
    stated = json.loads(line)["hash"]
    checkpoint = log.checkpoint_line(signer().sign(1, stated, TIME))
    for lines in ([line + b"\n", checkpoint], [line.decode(), checkpoint], [line + b"\n", checkpoint.rstrip(b"\n")]):
        report = log.verify_export(lines, signer().public_key)
        assert report.ok and report.entries == 1, report.message
    assert log.verify_export([line + b" \n", checkpoint], signer().public_key).problem == "modified"


def test_an_entry_whose_hash_member_appears_twice_is_modified():
    # The first occurrence is the one cut: a copy of the member nested before it leaves the real one in the hashed
    # bytes (the line cannot hash to a value it holds).
    lines = lines_of()
    stated = json.loads(lines[2])["hash"]
    member = b'"hash":"' + stated.encode() + b'"'
    lines[2] = lines[2].replace(b'{"access_key_id":', b'{"a":{' + member + b'},"access_key_id":', 1)
    assert lines[2].count(member) == 2
    report = log.verify_export(lines, signer().public_key)
    assert (report.problem, report.first_bad_seq, report.line) == ("modified", 3, 3), report.message


@pytest.mark.parametrize("members", [b'"a":1', b'"prev_hash":"' + log.GENESIS_HASH.encode() + b'"',
                                     b'"seq":0,"prev_hash":"' + log.GENESIS_HASH.encode() + b'"',
                                     b'"seq":true,"prev_hash":"' + log.GENESIS_HASH.encode() + b'"',
                                     b'"seq":1,"prev_hash":7', b'"seq":1,"prev_hash":""'],
                         ids=["no seq", "no seq, a prev_hash", "seq 0", "seq true", "prev_hash a number",
                              "prev_hash empty"])
def test_an_entry_that_matches_its_hash_without_a_valid_seq_or_prev_hash_is_malformed(members):
    # Its own hash holds, so only the chain fields can refuse it (this raised TypeError for a missing seq).
    report = log.verify_export([crafted(members) + b"\n", lines_of()[-1]], signer().public_key)
    assert (report.ok, report.problem, report.line) == (False, "malformed", 1), report.message


@pytest.mark.parametrize("require_genesis", [False, True], ids=["any start", "complete"])
def test_a_made_up_first_entry_chained_to_nothing_is_refused_before_a_genuine_export(require_genesis):
    """An entry stating ``"prev_hash":""`` (the value the walk once used to mean "take the slow path") and seq 1,
    its own hash right, put before a genuine full export: it must not pass as chained, and the genuine seq 1 after
    it must not pass as the export's first entry (this verified as OK, full log included)."""
    lines = lines_of()
    assert log.verify_export(lines, signer().public_key, require_genesis=require_genesis).ok
    made_up = crafted(b'"actor":"human:mallory","event_id":"x","prev_hash":"","seq":1,"type":"approved"')
    report = log.verify_export([made_up + b"\n", *lines], signer().public_key, require_genesis=require_genesis)
    assert (report.ok, report.problem, report.line) == (False, "malformed", 1), report.message
    segment = log.verify_segment(iter([made_up + b"\n", *lines]), signer().public_key, seam=None,
                                 require_genesis=require_genesis)
    assert segment.failed


BASE64 = string.ascii_letters + string.digits + "+/="


def _near_shortcut_line(rng) -> bytes:
    """A checkpoint line built from the shortcut's own alphabets and lengths, each field now and then a near miss
    (a seq of 19 digits or a leading zero, a time or signature one character too long or with a character just
    outside its set, a hash or key id one digit off or with an uppercase digit)."""
    def text(alphabet: str, low: int, high: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))

    def miss() -> bool:
        return rng.random() < 0.08

    time_chars = "".join(chr(c) for c in range(0x20, 0x7f) if chr(c) not in '"\\')
    fields = {
        "head_hash": text(HEX + "A", 63, 65) if miss() else text(HEX, 64, 64),
        "key_id": rng.choice([text(HEX, 15, 15), text(HEX, 17, 17), "A" + text(HEX, 15, 15)]) if miss() else
        text(HEX, 16, 16),
        "seq": rng.choice([10**18, 10**19 + 7]) if miss() else rng.choice([0, 1, rng.randint(2, 10**18 - 1),
                                                                             10**18 - 1]),
        "signature": rng.choice([text(BASE64, 201, 201), text(BASE64, 0, 20) + rng.choice("-_.") + text(BASE64, 0, 20)])
        if miss() else text(BASE64, 1, 200),
        "time": rng.choice([text(time_chars, 65, 65), text(time_chars, 0, 20) + rng.choice("\u00e9\x7f\x1f\\\"")
                            + text(time_chars, 0, 20), ""]) if miss() else text(time_chars, 1, 64),
    }
    if rng.random() < 0.5:
        fields["prev_checkpoint"] = text(HEX + "A", 63, 65) if miss() else text(HEX, 64, 64)
    raw = log.canonical_json({"checkpoint": fields})
    if miss():
        raw = raw.replace(b'"seq":', b'"seq":0', 1)
    return raw


def test_lines_shaped_like_the_shortcuts_get_the_full_parses_verdict():
    """Most of these take the shortcut (the property test above mostly exercises the full parse on both sides):
    every one gets the same outcome from both readers."""
    import random

    rng = random.Random(21)
    lines = [_near_shortcut_line(rng) for _ in range(3000)]
    shortcut = sum(export._CANONICAL_CHECKPOINT.fullmatch(raw) is not None for raw in lines)
    assert shortcut > len(lines) // 2, shortcut
    for raw in lines:
        assert outcome(export._read_checkpoint, raw) == outcome(export._parse_checkpoint, raw), raw


def test_an_export_without_checkpoints_is_refused_as_invalid_input_whatever_holds_them():
    from broker.errors import InvalidInput

    entries, checkpoints, _ = standard()
    statement = signer().sign_export(checkpoints[-1], first_seq=entries[0]["seq"], since=None, time=TIME)
    for none in ([], (), iter([])):
        with pytest.raises(InvalidInput):
            list(log.chained_export_lines(entries, none, statement))
