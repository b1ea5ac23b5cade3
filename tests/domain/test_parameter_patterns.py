"""Template parameter patterns: a hostile pattern cannot stall the broker; full-match meaning is unchanged.

Issue 15 item 3: ``pattern: "^([a-z0-9]+-?)+$"`` linted clean and one 28-character value stalled the
whole process (Python's backtracking ``re``).  Patterns are now matched by RE2 (linear in the value),
and a pattern RE2 cannot run (backreferences, lookarounds) is refused when the template loads.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.rendering import validate_parameters
from broker.domain.templates import parse_template, template_from_mapping
from broker.errors import InvalidParameter, TemplateError

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
HOSTILE = "^([a-z0-9]+-?)+$"


def template_with(pattern: str, *, max_length: int = 128):
    return template_from_mapping({
        "name": "t", "description": "d", "environment": "dev", "role": "arn:aws:iam::123456789012:role/x",
        "parameters": {"name": {"type": "string", "pattern": pattern, "max_length": max_length}},
        "statements": [{"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::bucket/{name}/*"]}],
        "requesters": ["agent:*"],
    }, source="test")


def test_a_catastrophic_pattern_answers_at_once_in_a_fresh_process():
    # NOTE: a child process, so that the backtracking engine (today's code) can be stopped: 40 characters
    # are ~2**39 backtracking steps (hours); RE2 answers in microseconds.  The timeout is a hang guard.
    script = textwrap.dedent(f"""
        from broker.domain.rendering import validate_parameters
        from tests.domain.test_parameter_patterns import template_with
        from broker.errors import InvalidParameter
        template = template_with({HOSTILE!r})
        for value in ("a" * 40 + "_", "ab-" * 42 + "_"):
            try:
                validate_parameters(template, {{"name": value}})
            except InvalidParameter as exc:
                assert exc.field == "parameters.name", exc.field
            else:
                raise SystemExit("a value outside the pattern was accepted")
        print(validate_parameters(template, {{"name": "ab-cd-" * 20}})["name"][:6])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ab-cd-"


@pytest.mark.parametrize("pattern", [
    r"^(a+)\1$",            # a backreference: no linear-time engine runs it
    r"^(?=admin)[a-z]+$",   # a lookahead
    r"^(?<!x)[a-z]+$",      # a lookbehind
    r"^[a-z]+\Z",           # Python's \Z (RE2 spells it \z)
    "(",                     # does not compile at all
])
def test_patterns_the_linear_engine_cannot_run_are_refused_at_load(pattern):
    with pytest.raises(TemplateError) as caught:
        template_with(pattern)
    assert caught.value.field == "parameters.name.pattern"


def _shipped_patterns() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(REPO_SCOPES.glob("*.yaml")):
        template = parse_template(path.read_text(), source=path.name)
        for name, spec in template.parameters.items():
            if spec.pattern:
                found.append((path.name, name, spec.pattern))
    return found


SHIPPED = _shipped_patterns()


def test_the_shipped_templates_use_patterns():
    assert len(SHIPPED) >= 4  # the tests below would be vacuous otherwise


@pytest.mark.parametrize(("template", "value", "accepted"), [
    ("s3-read-prefix.yaml", "reports", True),
    ("s3-read-prefix.yaml", "reports/2024/q1/x", True),
    ("s3-read-prefix.yaml", "reports/2024/q1/x/y", False),   # five segments: {0,3} more than one
    ("s3-read-prefix.yaml", "reports/", False),
    ("s3-read-prefix.yaml", "Reports", False),
    ("logs-investigate.yaml", "/aws/lambda/checkout", True),
    ("logs-investigate.yaml", "/aws/lambda/checkout/x", False),
    ("lambda-deploy-dev.yaml", "checkout-api", True),
    ("lambda-deploy-dev.yaml", "-checkout", False),
])
def test_shipped_patterns_keep_their_meaning(template, value, accepted):
    loaded = parse_template((REPO_SCOPES / template).read_text(), source=template)
    name = next(n for n, spec in loaded.parameters.items() if spec.pattern)
    if accepted:
        assert validate_parameters(loaded, {name: value})[name] == value
    else:
        with pytest.raises(InvalidParameter):
            validate_parameters(loaded, {name: value})


# Values the renderer lets through to pattern matching at all (ASCII, IAM name characters) plus a few others.
VALUES = st.text(alphabet="abcz019-_./+=,@A\n", max_size=40)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(min_value=0, max_value=max(len(SHIPPED) - 1, 0)), value=VALUES)
def test_full_match_agrees_with_python_re_on_shipped_patterns(index, value):
    """The meaning of every shipped pattern is Python's full match (``$`` before a final newline included)."""
    _source, _name, pattern = SHIPPED[index]
    from broker.domain.templates import parameter_pattern

    assert bool(parameter_pattern(pattern).fullmatch(value)) == bool(re.fullmatch(pattern, value))
