"""Regular expressions whose worst-case matching time is bounded, decided when the configuration loads.

An issuer's ``principal_pattern`` is matched (whole value, ``fullmatch``) against a claim of every
token that reaches the broker.  Python's ``re`` backtracks, so ``(a+)+x``, ``(a|a)*x`` or
``.*a.*a.*a.*a.*x`` on a crafted value takes exponential or high-polynomial time: a pattern is a
denial of service waiting for the first hostile token.  So a pattern is accepted only if its parse
tree shows the backtracking is small:

* only literals, character classes, ``.``, groups, alternation, anchors and quantifiers: no
  backreferences, lookarounds, conditionals, atomic groups, possessive quantifiers or flags (a
  flag such as ``(?i)`` would also break the exact, case-sensitive comparison);
* nothing quantified or alternative inside a quantified part (``(a+)+``, ``(a|ab)*``: the
  exponential shapes);
* the number of ways the pattern can cut a value into its parts is at most :data:`MAX_MATCH_PATHS`:
  a quantifier counts one way per length it may take (at most ``MAX_VALUE_CHARS + 1``; ``a?`` two),
  an alternation the sum of its branches, a sequence the product of its parts.  Each way may cost a
  pass over the whole value, so the bound on the work is that count times ``MAX_VALUE_CHARS + 1``,
  at most :data:`MAX_MATCH_STEPS` (about 257**3 steps, tens of milliseconds).  Two ``.*`` pass; three
  do not (each is a factor of 257 on the backtracking of a failing 256-character value), nor do
  sixteen optional parts before a long fixed run.

The values matched are at most :data:`MAX_VALUE_CHARS` characters (the OIDC verifier refuses longer
principals before any pattern runs), which is what makes the count an upper bound on the work.
Pure: no I/O.
"""

from __future__ import annotations

import re
# NOTE: the parser of the ``re`` module itself (``sre_parse`` before Python 3.11), so the tree
# judged is exactly the one that will run.
from re import _constants as sre
from re import _parser as sre_parse

MAX_PATTERN_CHARS = 512
MAX_VALUE_CHARS = 256
# Each way of cutting a value may cost a pass over all of it: the work is bounded by paths x (value + 1).
# 257**3 steps are ~40 ms for the steepest accepted shape on the project's 2-core machine.
MAX_MATCH_STEPS = (MAX_VALUE_CHARS + 1) ** 3
MAX_MATCH_PATHS = MAX_MATCH_STEPS // (MAX_VALUE_CHARS + 1)

# A single character each: no backtracking of their own.
_ATOMS = frozenset({sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN})
_REPEATS = frozenset({sre.MAX_REPEAT, sre.MIN_REPEAT})


class UnboundedPattern(ValueError):
    """The pattern is not a regular expression, or its matching time could not be bounded."""


def compile_bounded_pattern(text: object) -> re.Pattern[str]:
    """``text`` compiled, once its worst case is known to be small; else :class:`UnboundedPattern` saying why."""
    if not isinstance(text, str) or not text:
        raise UnboundedPattern("must be a non-empty string (a regular expression)")
    if len(text) > MAX_PATTERN_CHARS:
        raise UnboundedPattern(f"is longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re.compile(text)
        tree = sre_parse.parse(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise UnboundedPattern(f"is not a valid regular expression ({exc})") from exc
    if compiled.flags & ~re.UNICODE:
        raise UnboundedPattern("may not set flags such as (?i): the match is exact and case-sensitive")
    paths = _paths(tree, quantified=False)
    if paths > MAX_MATCH_PATHS:
        raise UnboundedPattern(
            "could take too long to match: it can cut a value in too many ways (at most two open-ended "
            "quantifiers such as '.*', fewer with alternatives '|'); write the fixed parts out")
    return compiled


def _paths(items: sre_parse.SubPattern | list, *, quantified: bool) -> int:
    """How many ways ``items`` (a sequence) can split a value; raises on what is not allowed."""
    total = 1
    for op, argument in items:
        if op in _ATOMS or op is sre.AT:
            continue
        if op is sre.SUBPATTERN:
            _group, add_flags, del_flags, inner = argument
            if add_flags or del_flags:
                raise UnboundedPattern("may not set flags such as (?i:...): the match is exact and case-sensitive")
            total *= _paths(inner, quantified=quantified)
        elif op is sre.BRANCH:
            if quantified:
                raise UnboundedPattern("may not repeat an alternation such as (a|b)* (its backtracking is "
                                       "exponential); repeat a character class [ab]* instead")
            total *= sum(_paths(branch, quantified=False) for branch in argument[1])
        elif op in _REPEATS:
            low, high, inner = argument
            if quantified:
                raise UnboundedPattern("may not nest quantifiers such as (a+)+ (their backtracking is exponential)")
            _paths(inner, quantified=True)
            # NOTE: an open quantifier's high is MAXREPEAT; no value is longer than MAX_VALUE_CHARS anyway.
            total *= max(min(high, MAX_VALUE_CHARS) - low, 0) + 1
        else:
            raise UnboundedPattern(f"uses {str(op).lower()}, which is not supported: only literals, "
                                   "character classes, '.', groups, '|', anchors and quantifiers")
        if total > MAX_MATCH_PATHS:
            return total
    return total


__all__ = ["MAX_MATCH_PATHS", "MAX_MATCH_STEPS", "MAX_PATTERN_CHARS", "MAX_VALUE_CHARS", "UnboundedPattern", "compile_bounded_pattern"]
