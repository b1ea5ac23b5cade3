"""An export file verified on every CPU: ``broker audit verify``.

The file is cut into segments, each ending right after a checkpoint line; each segment is walked by
the one verifier (``broker.domain.log.verify_segment``, every check on every line) in a process of its
own, and the segments' states are joined (``merge_segments``) into the report the one-pass verifier
would give.  Whenever a segment fails, or a seam is not where a checkpoint left the verifier, the file
is verified again in one pass (``verify_export``), which names the first bad line exactly as before:
the segments only ever make an intact export faster, never a report different.

A small file, a machine with one CPU, or an export without checkpoints in its middle (format 1) is
verified in one pass.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.domain.log import (Checkpoint, SegmentOutcome, VerificationReport, merge_segments, verify_export,
                               verify_segment)

# Below this many bytes a segment is not worth a process (~50,000 entries of a busy log).
SEGMENT_BYTES = 32 * 1024 * 1024
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
    size = os.path.getsize(path)
    wanted = min(processes or available_cpus(), size // max(segment_bytes, 1))
    bounds, seams = cut_at_checkpoints(path, size, wanted) if wanted > 1 else ([0, size], [])
    if seams:
        outcomes = _walk_segments(path, bounds, seams, public_keys, options)
        report = merge_segments(outcomes, seams, public_keys, **options)
        if report is not None:
            return report
    with open(path, "rb") as export:
        return verify_export(export, public_keys, **options)


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


def _lines(path: str | Path, start: int, end: int) -> Iterator[bytes]:
    """The lines of bytes [start, end) of the file (``end`` falls right after a newline, or at its end)."""
    with open(path, "rb", buffering=_READ) as export:
        export.seek(start)
        left = end - start
        for line in export:
            left -= len(line)
            if left < 0:
                return
            yield line
            if not left:
                return


def _walk_segments(path: str | Path, bounds: Sequence[int], seams: Sequence[bytes], public_keys,
                   options: dict) -> list[SegmentOutcome]:
    """Segment 0 in this process, each other one in a forked child; a child that fails reads as a failure."""
    children = []
    for index in range(1, len(bounds) - 1):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: walk one segment, send its outcome, exit without unwinding the parent's stack
            status = 1
            try:
                os.close(read)
                outcome = verify_segment(_lines(path, bounds[index], bounds[index + 1]), public_keys,
                                         seam=seams[index - 1], **options)
                with os.fdopen(write, "wb") as sink:
                    sink.write(pickle.dumps(outcome))
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        children.append((pid, read))
    outcomes = [verify_segment(_lines(path, bounds[0], bounds[1]), public_keys, seam=None, **options)]
    for pid, read in children:
        with os.fdopen(read, "rb") as source:
            data = source.read()
        _, status = os.waitpid(pid, 0)
        # NOTE: only our own child's bytes, read from its pipe, are unpickled.
        outcomes.append(pickle.loads(data) if status == 0 and data else SegmentOutcome(failed=True, state={}))
    return outcomes
