"""``broker audit verify`` on every CPU (broker.storage.export_files): an export file cut at its checkpoint
lines, the segments walked in forked processes, and the same report as the one-pass verifier, intact or not."""

from __future__ import annotations

import os

import pytest

from broker.domain import log
from broker.storage import export_files
from tests.domain import test_log_checkpoint_chain as chain
from tests.domain.test_log import make_entries, signer


def write(tmp_path, lines: list[bytes]):
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def chained_lines(size: int = 30, every: int = 3) -> list[bytes]:
    entries = make_entries(size)
    return chain.chained_export(entries, chain.signed_chain(entries, every=every))


def test_an_intact_file_is_verified_in_segments_alone(tmp_path, monkeypatch):
    lines = chained_lines()
    path = write(tmp_path, lines)
    bounds, seams = export_files.cut_at_checkpoints(path, path.stat().st_size, 4)
    assert len(bounds) == 5 and len(seams) == 3 and all(seam.startswith(b'{"checkpoint":') for seam in seams)
    expected = log.verify_export(lines, signer().public_key)
    # No second pass: the segments' merge is the report.
    monkeypatch.setattr(export_files, "verify_export", lambda *a, **k: pytest.fail("verified in one pass"))
    report = export_files.verify_export_file(path, signer().public_key, processes=4, segment_bytes=1)
    assert report == expected and report.ok and report.entries == 30


@pytest.mark.parametrize("damage", ["edit", "delete", "duplicate", "forge"])
def test_a_tampered_file_gets_the_one_pass_report(tmp_path, damage):
    lines = chained_lines()
    index = len(lines) * 2 // 3  # in a later segment: found by a forked process
    while lines[index].startswith(b'{"checkpoint":'):
        index += 1
    if damage == "edit":
        lines[index] = lines[index].replace(b'"type":"issued"', b'"type":"denied"')
    elif damage == "delete":
        del lines[index]
    elif damage == "duplicate":
        lines.insert(index, lines[index])
    else:
        cut = next(i for i in range(index, len(lines)) if lines[i].startswith(b'{"checkpoint":'))
        lines[cut] = lines[cut].replace(b'"signature":"', b'"signature":"AA', 1)
    expected = log.verify_export(lines, signer().public_key)
    assert not expected.ok
    report = export_files.verify_export_file(write(tmp_path, lines), signer().public_key, processes=3,
                                             segment_bytes=1)
    assert report == expected


def test_trusted_checkpoints_and_require_genesis_hold_in_segments(tmp_path):
    entries = make_entries(30)
    checkpoints = chain.signed_chain(entries, every=3)
    lines = chain.chained_export(entries, checkpoints)
    path = write(tmp_path, lines)
    options = {"trusted": [checkpoints[2], checkpoints[7]], "require_genesis": True}
    report = export_files.verify_export_file(path, signer().public_key, processes=3, segment_bytes=1, **options)
    assert report == log.verify_export(lines, signer().public_key, **options) and report.trusted == 2
    since = chain.chained_export(entries[10:], checkpoints[3:], since=chain.TIME)
    report = export_files.verify_export_file(write(tmp_path, since), signer().public_key, processes=3,
                                             segment_bytes=1, require_genesis=True)
    assert report.problem == "removed"


def test_a_small_file_or_one_cpu_is_one_pass(tmp_path, monkeypatch):
    path = write(tmp_path, chained_lines())
    monkeypatch.setattr(export_files, "_walk_segments", lambda *a, **k: pytest.fail("cut a small file"))
    assert export_files.verify_export_file(path, signer().public_key).ok       # under SEGMENT_BYTES
    assert export_files.verify_export_file(path, signer().public_key, processes=1, segment_bytes=1).ok


def test_a_file_without_checkpoints_in_its_middle_is_one_pass(tmp_path):
    lines = [log.entry_line(entry) + b"\n" for entry in make_entries(5)]
    path = write(tmp_path, lines)
    assert export_files.cut_at_checkpoints(path, path.stat().st_size, 3) == ([0, path.stat().st_size], [])


def test_more_segments_than_processes_each_walked_once(tmp_path, monkeypatch):
    lines = chained_lines(60, every=3)
    path = write(tmp_path, lines)
    walked = tmp_path / "walked"
    real = export_files.verify_segment

    def counting(segment, *args, seam, **kwargs):
        with open(walked, "ab") as out:  # O_APPEND: the children's lines do not mix
            out.write(b"%d\n" % (0 if seam is None else lines.index(seam + b"\n")))
        return real(segment, *args, seam=seam, **kwargs)

    monkeypatch.setattr(export_files, "verify_segment", counting)
    monkeypatch.setattr(export_files, "verify_export", lambda *a, **k: pytest.fail("verified in one pass"))
    report = export_files.verify_export_file(path, signer().public_key, processes=2, segment_bytes=1)
    assert report == log.verify_export(lines, signer().public_key) and report.ok
    starts = walked.read_bytes().split()
    assert len(starts) == 2 * export_files.SEGMENTS_PER_CPU and len(set(starts)) == len(starts)


def test_a_child_that_dies_leaves_the_report_to_one_pass(tmp_path, monkeypatch):
    lines = chained_lines()
    path = write(tmp_path, lines)
    real = export_files.verify_segment

    def dies_on_a_later_segment(segment, *args, seam, **kwargs):
        if seam is not None:
            os._exit(3)  # as a SIGBUS would end it: no outcome sent
        return real(segment, *args, seam=seam, **kwargs)

    monkeypatch.setattr(export_files, "verify_segment", dies_on_a_later_segment)
    passes = []
    one_pass = export_files.verify_export
    monkeypatch.setattr(export_files, "verify_export", lambda *a, **k: passes.append(1) or one_pass(*a, **k))
    report = export_files.verify_export_file(path, signer().public_key, processes=3, segment_bytes=1)
    assert report == log.verify_export(lines, signer().public_key) and report.ok and passes == [1]


def test_a_file_written_while_its_segments_are_walked_gets_the_one_pass_report(tmp_path, monkeypatch):
    """The segments read the bytes the file had when it was cut: a line appended meanwhile (after the final
    checkpoint) is left to the one pass, which reads to the end and refuses it."""
    lines = chained_lines()
    path = write(tmp_path, lines)
    real = export_files.verify_segment

    def appends_while_walking(segment, *args, seam, **kwargs):
        if seam is None:
            with open(path, "ab") as out:
                out.write(lines[1])
        return real(segment, *args, seam=seam, **kwargs)

    monkeypatch.setattr(export_files, "verify_segment", appends_while_walking)
    report = export_files.verify_export_file(path, signer().public_key, processes=2, segment_bytes=1)
    assert not report.ok and report == log.verify_export(path.read_bytes().splitlines(keepends=True),
                                                         signer().public_key), report.message


@pytest.mark.parametrize("fails_at", [1, 2], ids=["no child", "after one child"])
def test_a_fork_that_fails_leaves_the_report_to_the_children_started_or_one_pass(tmp_path, monkeypatch, fails_at):
    lines = chained_lines()
    path = write(tmp_path, lines)
    real_fork, calls = os.fork, []

    def fork():
        calls.append(1)
        if len(calls) >= fails_at:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(export_files.os, "fork", fork)
    report = export_files.verify_export_file(path, signer().public_key, processes=3, segment_bytes=1)
    assert report == log.verify_export(lines, signer().public_key) and report.ok
