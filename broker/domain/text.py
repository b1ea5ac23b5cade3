"""Free text people write and other people read (reasons): what may not be in it, and how to show it.

A reason is shown to approvers and reviewers (web pages, ``broker requests show``, the log).  Control
characters can rewrite a terminal (C0 and DEL, and C1: U+0085, or U+009B, a one-character CSI), and
Unicode bidirectional controls (Trojan Source, CVE-2021-42574) reorder what is displayed, so that
"approve ... no prod" reads as something else.  They are refused where a reason comes in
(:func:`unsafe_characters`); the CLI shows any it meets in older text as spaces (``cli/output.one_line``).
Pure.
"""

from __future__ import annotations

# Tab and newline are the only controls a reason may hold.
ALLOWED_CONTROLS = frozenset("\t\n")
# Unicode's bidirectional formatting characters (UAX #9): embeddings, overrides, isolates, marks.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Line and paragraph separators: a line break most terminals do not show as one.
SEPARATORS = frozenset("\u2028\u2029")


def _unsafe(char: str) -> bool:
    code = ord(char)
    if char in ALLOWED_CONTROLS:
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or char in BIDI_CONTROLS or char in SEPARATORS


def unsafe_characters(text: str) -> list[str]:
    """The characters of ``text`` that may not be stored in a reason (each once, in order, as U+XXXX)."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in text if _unsafe(c)))


__all__ = ["BIDI_CONTROLS", "unsafe_characters"]
