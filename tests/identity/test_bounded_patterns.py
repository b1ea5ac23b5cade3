"""Principal patterns: what compiles, what is refused at load, and that what compiles stays fast on hostile values."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.identity.bounded_patterns import (MAX_MATCH_PATHS, MAX_MATCH_STEPS, MAX_VALUE_CHARS, UnboundedPattern,
                                              compile_bounded_pattern)
from broker.identity.oidc import SAFE_IDENTIFIER

ACCEPTED = [
    "repo:acme/.*:ref:refs/heads/main",
    r"repo:acme/[A-Za-z0-9_.-]+:ref:refs/heads/main",
    "repo:acme/[^:]+:environment:(prod|staging)",
    "repo:acme/(api|web):ref:refs/heads/(main|release/.*)",
    "project_path:acme/[^:]+:ref_type:branch:ref:main",
    "system:serviceaccount:ci:[a-z0-9-]{1,63}",
    r"^acme-deployer\.[0-9]+$",  # anchors are harmless (the match is whole anyway)
    "(?:ab){3}c",  # a fixed repeat of fixed text
    ".*a.*b",  # two open-ended quantifiers
    "(?:a|a)" * 16 + "b",  # 2**16 ways, each a pass over the value: near the budget
    ".{0,255}.{0,255}x",
]

REFUSED = [
    ("", "non-empty"),
    (None, "non-empty"),
    (5, "non-empty"),
    (["repo:acme/.*"], "non-empty"),
    ("a" * 513, "longer than"),
    ("[", "not a valid regular expression"),
    ("repo:acme/(", "not a valid regular expression"),
    # exponential backtracking: nested quantifiers and repeated alternatives
    ("(a+)+x", "nest quantifiers"),
    ("(a*)*x", "nest quantifiers"),
    ("(.*)*x", "nest quantifiers"),
    ("(?:[a-z]+/)*x", "nest quantifiers"),
    ("(x+x+)+y", "nest quantifiers"),
    ("(a|a)*x", "repeat an alternation"),
    ("(a|ab)+x", "repeat an alternation"),
    ("(?:main|release){2}", "repeat an alternation"),
    # polynomial, but too steep for a 256-character value
    (".*.*.*x", "too long to match"),
    (".*a.*a.*a.*b", "too long to match"),
    ("(?:a|a)" * 21 + "b", "too long to match"),
    (".*" + "(?:a|a)" * 12 + "b", "too long to match"),
    # not regular, or not exact
    (r"(a)\1", "groupref"),
    ("(?=repo:acme/).*", "assert"),
    ("(?!repo:evil/).*", "assert_not"),
    ("(?<=x)y", "assert"),
    ("(?P<o>a)(?(o)b|c)", "groupref_exists"),
    ("(?>a*)b", "atomic_group"),
    ("a*+b", "possessive_repeat"),
    ("(?i)repo:acme/.*", "flags"),
    ("(?i:repo:acme)/.*", "flags"),
    ("(?x)repo", "flags"),
    ("(?a)repo", "flags"),
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_accepted_patterns_compile(pattern):
    assert compile_bounded_pattern(pattern).pattern == pattern


@pytest.mark.parametrize(("pattern", "why"), REFUSED, ids=lambda value: repr(value)[:40])
def test_refused_patterns_say_why(pattern, why):
    with pytest.raises(UnboundedPattern) as caught:
        compile_bounded_pattern(pattern)
    assert why in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the issuer configuration turns it into a start-up error


def _hostile_values() -> list[str]:
    return ["a" * MAX_VALUE_CHARS, "a" * (MAX_VALUE_CHARS - 1) + "!", "ab" * (MAX_VALUE_CHARS // 2),
            "repo:acme/" + "a" * (MAX_VALUE_CHARS - 10), "x" * MAX_VALUE_CHARS, "y" * MAX_VALUE_CHARS]


# The steepest shapes the budget lets through, each near MAX_MATCH_PATHS.
STEEPEST_ACCEPTED = [
    ".*a.*ab",
    ".*a" + "(?:a|a)" * 8 + "b",
    "(?:a|a)" * 16 + "b",
    "(?:a|aa)" * 16 + "b",
    ".{0,255}.{0,255}b",
    "[a-z]*[a-z]*b",
    "[a-z]?" * 16 + r"\w{230}0",           # each way of cutting then runs 230 characters
]

# Each way of cutting a value can cost a pass over it: shapes with few open parts but many ways, each long.
@pytest.mark.parametrize("pattern", [
    "[a-z]?" * 20 + r"\w{230}0",            # 2**20 ways x 230 characters: 0.6 s when it was accepted
    "a?" * 20 + "a" * 230 + "b",
    "a{0,3}" * 10 + "a{200}b",
    ".*a.*a(?:a|a)(?:a|a)(?:a|a)b",
    "(?:a|a)" * 20 + "b",
])
def test_many_ways_times_a_long_pass_is_refused(pattern):
    with pytest.raises(UnboundedPattern):
        compile_bounded_pattern(pattern)


@pytest.mark.parametrize("pattern", STEEPEST_ACCEPTED)
def test_accepted_patterns_match_hostile_values_quickly(pattern):
    compiled = compile_bounded_pattern(pattern)
    for value in _hostile_values():
        started = time.perf_counter()
        compiled.fullmatch(value)
        # ~10 ms on the project's machine; generous for a shared CI runner, yet far below the seconds to hours
        # of the refused shapes.
        assert time.perf_counter() - started < 0.5, (pattern, value[:20])


def test_the_bound_covers_every_principal_the_verifier_lets_through():
    assert SAFE_IDENTIFIER.fullmatch("a" * MAX_VALUE_CHARS)
    assert not SAFE_IDENTIFIER.fullmatch("a" * (MAX_VALUE_CHARS + 1))
    assert MAX_MATCH_PATHS * (MAX_VALUE_CHARS + 1) <= MAX_MATCH_STEPS == 257 ** 3


# Random patterns over a small alphabet, hostile-shaped on purpose: repeats, alternatives, groups, nesting.
_ATOM = st.sampled_from(["a", "b", ".", "[ab]", "[^b]", "a?"])
_QUANTIFIER = st.sampled_from(["", "", "*", "+", "?", "{0,9}", "{2}", "*?"])


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    sequence = st.lists(children, min_size=1, max_size=4).map("".join)
    alternation = st.lists(children, min_size=2, max_size=3).map(lambda parts: "(?:" + "|".join(parts) + ")")
    return st.tuples(st.one_of(sequence, alternation, children.map(lambda inner: f"({inner})")),
                     _QUANTIFIER).map("".join)


PATTERNS = st.recursive(st.tuples(_ATOM, _QUANTIFIER).map("".join), _extend, max_leaves=12)
VALUES = st.text(alphabet="ab!", min_size=MAX_VALUE_CHARS - 8, max_size=MAX_VALUE_CHARS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=PATTERNS, value=VALUES)
def test_any_pattern_that_compiles_matches_any_value_quickly(pattern, value):
    try:
        compiled = compile_bounded_pattern(pattern)
    except UnboundedPattern:
        return
    for candidate in (value, "a" * len(value), "a" * (len(value) - 1) + "!"):
        started = time.perf_counter()
        compiled.fullmatch(candidate)
        assert time.perf_counter() - started < 0.5, pattern
