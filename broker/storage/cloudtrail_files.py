"""CloudTrail log files on disk: what ``aws s3 sync s3://BUCKET/AWSLogs/ DIR`` leaves behind.

A trail delivers ``AWSLogs/<account>/CloudTrail/<region>/<yyyy>/<mm>/<dd>/<...>.json.gz`` and, with log
file validation on, digest files under ``AWSLogs/<account>/CloudTrail-Digest/`` (not records: skipped).
A folder is read recursively (``*.json`` and ``*.json.gz``, in name order); a file named explicitly is
read whatever its name.  Parsing is :mod:`broker.domain.cloudtrail`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from broker.domain.cloudtrail import CloudTrailUnusable, TrailRecords, read_records

DIGEST_FOLDER = "CloudTrail-Digest"
SUFFIXES = (".json", ".json.gz")


def trail_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
                                and DIGEST_FOLDER not in p.parts))
        elif path.is_file():
            files.append(path)
        else:
            raise CloudTrailUnusable(f"{path} does not exist", source=str(path))
    if not files:
        # NOTE: fail closed: no records is not "no sessions".
        raise CloudTrailUnusable(f"no CloudTrail log files (*.json, *.json.gz) in {', '.join(map(str, paths))}",
                                 source=", ".join(map(str, paths)))
    return files


def _contents(files: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    for path in files:
        try:
            yield str(path), path.read_bytes()
        except OSError as exc:
            raise CloudTrailUnusable(f"{path}: cannot be read ({exc.__class__.__name__})", source=str(path)) from exc


def read_trail(paths: Sequence[Path]) -> TrailRecords:
    return read_records(_contents(trail_files(paths)))
