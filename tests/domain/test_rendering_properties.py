"""Property: no parameter value widens a rendered policy.

For arbitrary parameter strings, either the broker refuses the value, or every rendered action
and resource lies inside what the template allows: the same actions, and each resource equals the
template's resource with each ``{placeholder}`` replaced by wildcard-free text.  The evaluator
confirms it semantically: anything the rendered policy allows, the template's widest reading
(every placeholder as ``*``) allows too; and the re-check before minting finds nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker.aws.action_database import default_action_knowledge
from broker.storage.template_files import load_catalog
from broker.domain.evaluator import AccessRequest, Outcome, PolicyKind, PolicySet, evaluate
from broker.domain.guardrails import check_rendered
from broker.domain.rendering import render_policy, validate_parameters
from broker.domain.templates import PLACEHOLDER, ScopeTemplate, template_from_mapping
from broker.errors import BrokerError, InvalidParameter

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
# What a substituted value may look like: never a wildcard, variable, brace, quote or colon.
VALUE = r"[A-Za-z0-9_.\-/+=,@]+"

# A deliberately permissive template: free-form string parameters (no pattern, no enum) in
# resources and in a condition, so that only the renderer's own rules stand between a value and
# the policy.
OPEN = template_from_mapping({
    "name": "open", "description": "free-form parameters", "environment": "dev",
    "role": "arn:aws:iam::{account}:role/broker-target-open",
    "parameters": {"account": {"type": "aws_account_id", "enum": ["123456789012"], "default": "123456789012"},
                   "bucket": {"type": "string"}, "prefix": {"type": "string"}, "fn": {"type": "string"}},
    "statements": [
        {"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::{bucket}/{prefix}/*"]},
        {"actions": ["s3:ListBucket"], "resources": ["arn:aws:s3:::{bucket}"],
         "conditions": {"StringLike": {"s3:prefix": ["{prefix}/*"]}}},
        {"actions": ["lambda:GetFunction"], "resources": ["arn:aws:lambda:us-east-1:{account}:function:{fn}"]},
    ],
    "requesters": ["agent:*"],
}, source="open.yaml")

SHIPPED = {t.name: t for t in load_catalog(REPO_SCOPES).all()}
TEMPLATES = [OPEN, *SHIPPED.values()]

HOSTILE_ALPHABET = st.sampled_from(list("ab-/._*?${}[]:\"'\\ ,@=+%\n\x00é") + ["..", "//", "${aws:username}",
                                                                                "*", "arn:aws:s3:::"])
values = st.one_of(
    st.text(max_size=40),
    st.lists(HOSTILE_ALPHABET, max_size=12).map("".join),
    st.from_regex(r"[a-z0-9-]{1,10}(/[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    st.from_regex(r"/aws/lambda/[a-z0-9-]{1,10}", fullmatch=True),
    st.sampled_from(["123456789012", "broker-demo-bucket", "cost-explorer-api", "reports"]),
)


def _template_regex(text: str) -> re.Pattern[str]:
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[last:match.start()]))
        parts.append(VALUE)
        last = match.end()
    parts.append(re.escape(text[last:]))
    return re.compile("".join(parts), re.DOTALL)


def _widest(template: ScopeTemplate) -> dict:
    """The template read as a policy with every placeholder as '*': the most it could ever grant."""
    statements = []
    for s in template.statements:
        statement = {"Effect": "Allow", "Action": list(s.actions),
                     "Resource": [PLACEHOLDER.sub("*", r) for r in s.resources]}
        if s.conditions:
            statement["Condition"] = {op: {k: [PLACEHOLDER.sub("*", v) for v in ([vs] if isinstance(vs, str) else vs)]
                                           for k, vs in by_key.items()} for op, by_key in s.conditions.items()}
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def _instances(resource: str, filler: str) -> str:
    return resource.replace("*", filler).replace("?", filler[:1] or "x")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=len(TEMPLATES) - 1), data=st.data(), filler=st.text(
    alphabet="abc/:-", min_size=1, max_size=8))
def test_no_parameter_value_widens_a_rendered_policy(index, data, filler):
    template = TEMPLATES[index]
    supplied = {name: data.draw(values, label=name) for name in template.parameters
                if data.draw(st.booleans(), label=f"give {name}") or template.parameters[name].required}
    try:
        rendered = render_policy(template, validate_parameters(template, supplied))
    except InvalidParameter:
        event("refused")
        return                      # refused: nothing was rendered, nothing can be wider
    except BrokerError as exc:     # any other refusal must still be a deliberate broker error
        pytest.fail(f"unexpected {exc.code}")

    event("rendered")
    # 1. structurally inside the template
    assert _template_regex(template.role).fullmatch(rendered.role_arn)
    for written, out in zip(template.statements, rendered.document["Statement"], strict=True):
        assert sorted(out["Action"]) == sorted(set(written.actions))
        assert len(out["Resource"]) == len(set(written.resources))
        for pattern, resource in zip(dict.fromkeys(written.resources), out["Resource"], strict=True):
            assert _template_regex(pattern).fullmatch(resource), (pattern, resource)
        for op, by_key in (written.conditions or {}).items():
            for key, expected in by_key.items():
                expected = [expected] if isinstance(expected, str) else expected
                got = out["Condition"][op][key]
                got = [got] if isinstance(got, str) else got
                assert all(_template_regex(e).fullmatch(g) for e, g in zip(expected, got, strict=True))

    # 2. semantically inside: whatever the rendered policy allows, the widest reading allows
    rendered_set = [PolicySet.of(PolicyKind.SESSION, rendered.document)]
    widest_set = [PolicySet.of(PolicyKind.SESSION, _widest(template))]
    for out in rendered.document["Statement"]:
        for action in out["Action"]:
            for resource in out["Resource"]:
                probe = AccessRequest(action, _instances(resource, filler), context_complete=True,
                                      context={"s3:prefix": _instances(f"{supplied.get('prefix', 'p')}/*", filler)})
                if evaluate(rendered_set, probe).outcome is Outcome.ALLOWED:
                    assert evaluate(widest_set, probe).outcome is Outcome.ALLOWED

    # 3. the re-check before minting finds no widening
    findings = check_rendered(template, rendered, actions=default_action_knowledge())
    assert "policy_widened" not in {f.code for f in findings}


@given(before=st.text(max_size=12), token=st.sampled_from(["*", "?", "${aws:username}", "{", "}", ":", "$"]),
       after=st.text(max_size=12))
def test_values_with_wildcards_or_variables_are_always_refused(before, token, after):
    value = before + token + after
    with pytest.raises(InvalidParameter):
        validate_parameters(OPEN, {"bucket": value, "prefix": "p", "fn": "f"})
