"""How commands print: a table (or lines) for people, ``--format json`` for scripts, one way everywhere."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def add_format_option(parser: argparse.ArgumentParser, *, help_text: str = "json: the API's JSON, unchanged") -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help=f"output format (default text; {help_text})")


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON under ``--format json``, else ``text``."""
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "format", "text") == "json" else text)


def one_line(text: Any, limit: int) -> str:
    """``text`` flattened to one line of at most ``limit`` characters, control characters shown as spaces."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in str(text or "")).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def table(columns: Mapping[str, Callable[[Mapping[str, Any]], Any]], rows: Sequence[Mapping[str, Any]], *,
          empty: str) -> str:
    """Aligned columns, a header line first; ``empty`` when there are no rows."""
    if not rows:
        return empty
    cells = [[one_line(read(row) if read(row) not in (None, "") else "-", 80) for read in columns.values()]
             for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells]) for i, header in enumerate(columns)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [list(columns), *cells])
