"""An export verified in segments (``verify_segment`` + ``merge_segments``, as ``broker audit verify`` does on
every CPU) reports exactly what the one-pass verifier reports, and never reports a tampered export intact:
whatever the tampering and wherever the segments are cut."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain import log
from tests.domain import test_log, test_log_checkpoint_chain as chain
from tests.domain.test_log import make_entries, other_signer, signer


def is_checkpoint(line: bytes) -> bool:
    return line.startswith(b'{"checkpoint":')


def seams_of(lines: list[bytes]) -> list[int]:
    """Indexes of the checkpoint lines a file could be cut after (not the last line)."""
    return [i for i, line in enumerate(lines[:-1]) if is_checkpoint(line)]


def segmented(lines: list[bytes], cuts: list[int], keys, **options) -> log.VerificationReport | None:
    """Cut after the lines ``cuts``, walk each segment, merge; None: the merge asks for one pass."""
    bounds = [0, *(cut + 1 for cut in cuts), len(lines)]
    seams = [lines[cut].removesuffix(b"\n") for cut in cuts]
    outcomes = [log.verify_segment(lines[start:end], keys, seam=seams[k - 1] if k else None, **options)
                for k, (start, end) in enumerate(itertools.pairwise(bounds))]
    return log.merge_segments(outcomes, seams, keys, **options)


def check_agrees(lines: list[bytes], keys=None, **options) -> log.VerificationReport:
    """For every way of cutting ``lines`` at checkpoint lines: the merge gives the one-pass report or asks for
    one pass, and it never asks when the export is intact (the segments are then the whole work)."""
    keys = keys or signer().public_key
    expected = log.verify_export(lines, keys, **options)
    candidates = seams_of(lines)
    for size in range(1, min(len(candidates), 3) + 1):
        for cuts in itertools.combinations(candidates, size):
            merged = segmented(lines, list(cuts), keys, **options)
            if expected.ok:
                assert merged == expected, (cuts, merged, expected)
            else:
                assert merged is None, (cuts, merged, expected)  # never "intact", never another failure
    return expected


def chained_lines(size: int = 12, every: int = 4) -> list[bytes]:
    entries = make_entries(size)
    return chain.chained_export(entries, chain.signed_chain(entries, every=every))


def test_an_intact_export_merges_to_the_one_pass_report():
    report = check_agrees(chained_lines())
    assert report.ok and report.entries == 12 and report.checkpoints == 3


@pytest.mark.parametrize("name", chain.TAMPERING)
def test_tampering_with_checkpoints_is_never_merged_away(name):
    tamper, problem = chain.TAMPERING[name]
    lines = chain.lines_of()
    tamper(lines)
    assert check_agrees(lines).problem == problem


# The one-checkpoint tamperings that also apply to a chained export (the others name the line after the
# last entry, which is a checkpoint or the statement here, or the single final checkpoint).
ENTRY_TAMPERING = [name for name in test_log.TAMPERING if name not in (
    "no checkpoint", "second checkpoint", "non-canonical checkpoint", "edit the last entry, recompute its hash",
    "append an entry after the checkpoint", "append a chained entry before the checkpoint",
    "rewrite the chain from an entry on")]


@pytest.mark.parametrize("name", ENTRY_TAMPERING)
def test_tampering_with_entries_is_never_merged_away(name):
    """The one-checkpoint tamperings, done on a chained export."""
    tamper, *_ = test_log.TAMPERING[name]
    lines = chained_lines(size=16, every=4)
    tamper(lines)
    assert not check_agrees(lines).ok


@pytest.mark.parametrize("options", [
    {"trusted": "checkpoint 1"}, {"trusted": "checkpoint 2"}, {"require_genesis": True},
])
def test_options_reach_every_segment(options):
    _, checkpoints, lines = chain.standard()
    if "trusted" in options:
        options = {"trusted": [checkpoints[int(options["trusted"][-1])]]}
    report = check_agrees(list(lines), **options)
    assert report.ok and report.trusted == len(options.get("trusted", ())), report.message


def test_a_fork_against_a_trusted_checkpoint_is_found_in_any_segment():
    _, checkpoints, _ = chain.standard()
    assert check_agrees(chain.forked_log(), trusted=[checkpoints[0]]).problem == "fork"
    assert check_agrees(chain.forked_log(), trusted=[checkpoints[2]]).problem == "fork"


def test_a_since_export_and_a_rotated_key_merge_too():
    entries, checkpoints, _ = chain.standard()
    since = chain.chained_export(list(entries[6:]), list(checkpoints[1:]), since=chain.TIME)
    assert check_agrees(since).starts_mid_log
    first = chain.signed_chain(list(entries[:8]))
    later = chain.signed_chain(list(entries[8:]), by=other_signer(), previous=first[-1])
    rotated = chain.chained_export(list(entries), first + later, by=other_signer())
    assert check_agrees(rotated, [signer().public_key, other_signer().public_key]).ok
    assert check_agrees(rotated).problem == "wrong_key"


def test_a_seam_that_is_not_a_checkpoint_line_asks_for_one_pass():
    lines = chained_lines()
    outcomes = [log.verify_segment(lines[:3], signer().public_key, seam=None),
                log.verify_segment(lines[3:], signer().public_key, seam=lines[2].removesuffix(b"\n"))]
    assert log.merge_segments(outcomes, [lines[2].removesuffix(b"\n")], signer().public_key) is None


OPS = st.sampled_from(["delete", "duplicate", "swap", "flip"])


@settings(max_examples=30, deadline=None)
@given(op=OPS, where=st.integers(min_value=0, max_value=10_000), offset=st.integers(min_value=0, max_value=10_000))
def test_any_line_tampering_is_never_merged_away(op, where, offset):
    lines = list(_shared_lines())
    index = where % len(lines)
    if op == "delete":
        del lines[index]
    elif op == "duplicate":
        lines.insert(index, lines[index])
    elif op == "swap":
        other = (index + 1) % len(lines)
        lines[index], lines[other] = lines[other], lines[index]
    else:
        raw = bytearray(lines[index])
        raw[offset % (len(raw) - 1)] ^= 0x01
        lines[index] = bytes(raw)
    check_agrees(lines)


@cache
def _shared_lines() -> tuple[bytes, ...]:
    return tuple(chained_lines(size=12, every=3))
