"""An export file verified on every CPU: ``broker audit verify``.

The file is cut into segments, each ending right after a checkpoint line; each segment is walked by
the one verifier (``broker.domain.log.verify_segment``, every check on every line) in one of a forked
process per CPU, each taking the next segment when done with one (a few segments per CPU, so that a CPU
shared with other work walks fewer), and the segments' states are joined (``merge_segments``) into the
report the one-pass verifier would give.  Whenever a segment fails, or a seam is not where a checkpoint
left the verifier, the file is verified again in one pass (``verify_export``), which names the first bad
line exactly as before: the segments only ever make an intact export faster, never a report different.

A small file, a machine with one CPU, or an export without checkpoints in its middle (format 1) is
verified in one pass.
"""

from __future__ import annotations

import mmap
import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.domain.log import (Checkpoint, SegmentOutcome, VerificationReport, merge_segments, verify_export,
                               verify_segment)

# Below this many bytes a segment is not worth cutting (~35,000 entries of a busy log).
SEGMENT_BYTES = 32 * 1024 * 1024
# Segments per CPU: when other work shares the CPUs, a process it slows takes fewer segments.  The last one a process
# waits on is at most one segment long: with one segment per CPU it waited 0.7-2.4 s of a 1 M-entry export's 6-12 s
# at load 7-8, with 4 per CPU 0.06-0.8 s, with 8 per CPU 0.01-0.08 s.  A segment costs well under a millisecond
# besides its lines (its seam read again, a verifier set up, its outcome sent).
SEGMENTS_PER_CPU = 8
_MAX_SEGMENTS = 255  # a segment's number is one byte on the queue
_CHECKPOINT_LINE = b'\n{"checkpoint":'
_READ = 1024 * 1024


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def verify_export_file(path: str | Path, public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey], *,
                       require_genesis: bool = False, trusted: Sequence[Checkpoint] = (),
                       anchored: Sequence[Checkpoint] = (), processes: int | None = None,
                       segment_bytes: int = SEGMENT_BYTES) -> VerificationReport:
    """verify_export on the file at ``path``, in segments on ``processes`` CPUs (default: all) when it is large."""
    options = {"require_genesis": require_genesis, "trusted": trusted, "anchored": anchored}
    before = os.stat(path)
    size = before.st_size
    cpus = processes or available_cpus()
    wanted = min(cpus * SEGMENTS_PER_CPU, size // max(segment_bytes, 1), _MAX_SEGMENTS) if cpus > 1 else 1
    bounds, seams = cut_at_checkpoints(path, size, wanted) if wanted > 1 else ([0, size], [])
    if seams:
        outcomes = _walk_segments(path, bounds, seams, public_keys, options, workers=min(cpus, len(seams) + 1))
        report = merge_segments(outcomes, seams, public_keys, **options)
        # NOTE: the segments read the bytes the file had when it was cut; a file replaced or written meanwhile (a
        # tail the segments never read) is judged by the one pass, which reads it to its end.
        if report is not None and _same_file(before, os.stat(path)):
            return report
    with open(path, "rb", buffering=_READ) as export:
        return verify_export(export, public_keys, **options)


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) == \
        (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns)


def cut_at_checkpoints(path: str | Path, size: int, count: int) -> tuple[list[int], list[bytes]]:
    """Up to ``count`` segments of about equal size: their byte bounds, and the checkpoint line (without its
    newline) that ends each segment but the last."""
    bounds, seams = [0], []
    with open(path, "rb") as export:
        for part in range(1, count):
            found = _next_checkpoint_line(export, max(bounds[-1], size * part // count), size)
            if found is None:
                break
            start, line = found
            bounds.append(start + len(line) + 1)
            seams.append(line)
    bounds.append(size)
    if bounds[-2] >= size:  # the last checkpoint line ends the file: nothing after it to walk apart
        bounds.pop(-2)
        seams.pop()
    return bounds, seams


def _next_checkpoint_line(export, offset: int, size: int) -> tuple[int, bytes] | None:
    """(offset, bytes) of the first checkpoint line starting after ``offset`` and ending in a newline."""
    export.seek(offset)
    carry, base = b"", offset
    while base < size:
        block = carry + export.read(_READ)
        if len(block) == len(carry):
            return None
        at = block.find(_CHECKPOINT_LINE)
        if at >= 0:
            end = block.find(b"\n", at + 1)
            while end < 0:  # the line goes on past this block
                more = export.read(_READ)
                if not more:
                    return None
                block += more
                end = block.find(b"\n", at + 1)
            return base + at + 1, block[at + 1:end]
        keep = len(_CHECKPOINT_LINE) - 1
        base += len(block) - keep
        carry = block[-keep:]
    return None


@contextmanager
def _mapped_lines(path: str | Path, start: int, end: int) -> Iterator[Iterator[bytes]]:
    """The lines of bytes [start, end) of the file (``end`` falls right after a newline, or at its end), read
    from a memory map (no copy into a read buffer first).  Only a forked child reads them: a file cut shorter
    meanwhile ends that child (SIGBUS), which reads as a failure, and the file is then verified in one pass."""
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as export, mmap.mmap(export.fileno(), end - base, access=mmap.ACCESS_READ,
                                                offset=base) as view:
        view.seek(start - base)
        yield iter(view.readline, b"")


def _walk_segments(path: str | Path, bounds: Sequence[int], seams: Sequence[bytes], public_keys,
                   options: dict, *, workers: int) -> list[SegmentOutcome]:
    """Every segment walked in one of ``workers`` forked children, each taking the next segment's number from a
    queue (a pipe) until it is empty; a segment whose child failed reads as a failure."""
    segments = len(bounds) - 1
    assert segments <= _MAX_SEGMENTS
    queue, queue_in = os.pipe()
    os.write(queue_in, bytes(range(segments)))  # a few bytes: within the pipe's buffer
    os.close(queue_in)
    children = []
    for _ in range(workers):
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no process to spare (EAGAIN, ENOMEM): the children started walk it all, or the one pass does
            os.close(read)
            os.close(write)
            if not children:
                os.close(queue)
                return [SegmentOutcome(failed=True, state={})] * segments
            break
        if pid == 0:  # the child: walk segments, send their outcomes, exit without unwinding the parent's stack
            status = 1
            try:
                os.close(read)
                walked = {}
                while taken := os.read(queue, 1):  # a one-byte read: no two children take the same segment
                    index = taken[0]
                    with _mapped_lines(path, bounds[index], bounds[index + 1]) as lines:
                        walked[index] = verify_segment(lines, public_keys, seam=seams[index - 1] if index else None,
                                                       **options)
                with os.fdopen(write, "wb") as sink:
                    sink.write(pickle.dumps(walked))
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        children.append((pid, read))
    os.close(queue)
    outcomes: dict[int, SegmentOutcome] = {}
    for pid, read in children:
        with os.fdopen(read, "rb") as source:
            data = source.read()
        _, status = os.waitpid(pid, 0)
        # NOTE: only our own child's bytes, read from its pipe, are unpickled.
        if status == 0 and data:
            outcomes.update(pickle.loads(data))
    failed = SegmentOutcome(failed=True, state={})
    return [outcomes.get(index, failed) for index in range(segments)]
