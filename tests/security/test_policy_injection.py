"""Policy injection: hostile parameter values, through the pure renderer and the real HTTP API.

Every value in ``MUST_REFUSE`` is one an attacker would use to widen or break a session
policy (wildcards, policy variables, JSON break-outs, control and look-alike characters, ARN
separators, path traversal, encodings, the Unity Catalog "empty prefix becomes the whole
bucket" shape).  Each must be refused with 422 ``invalid_parameter`` / ``missing_parameter``
and leave nothing behind: no request row, no grant, no STS session.  The values in
``MAY_ACCEPT`` are odd but harmless; if accepted, the rendered policy must be provably inside
the template: structurally (every placeholder filled by wildcard-free text) and semantically
(the IAM evaluator allows nothing outside the intended prefix).

The template under attack, ``sec-open-path`` (tests/security/scopes/), declares its ``path``
parameter with no pattern and no enum, so that only the renderer's own rules stand between
a value and the policy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.domain.evaluator import AccessRequest, Outcome, PolicyKind, PolicySet, evaluate
from broker.domain.rendering import RenderedPolicy, render_policy, validate_parameters
from broker.domain.templates import PLACEHOLDER, ScopeTemplate, parse_template, template_from_mapping
from broker.errors import InvalidParameter
from tests.conftest import moto_sts_sessions
from tests.security.attack_tally import record

SCOPES = Path(__file__).parent / "scopes"
OPEN_PATH = parse_template((SCOPES / "sec-open-path.yaml").read_text(encoding="utf-8"), source="sec-open-path.yaml")
# The other Unity Catalog shape: the prefix glued to the wildcard, so "" would be the whole bucket.
GLUED = template_from_mapping({
    "name": "sec-glued-prefix", "description": "prefix glued to a wildcard", "environment": "dev",
    "role": "arn:aws:iam::{account}:role/broker-target-s3-read",
    "parameters": {"account": {"type": "aws_account_id", "enum": ["123456789012"], "default": "123456789012"},
                   "path": {"type": "string"}},
    "statements": [{"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::broker-demo-bucket/{path}*"]}],
    "requesters": ["agent:*"],
}, source="memory")
TEMPLATES = {"sec-open-path": OPEN_PATH, "sec-glued-prefix": GLUED}

# attack class -> {case id: hostile value}
MUST_REFUSE: dict[str, dict[str, object]] = {
    "wildcards": {"star": "*", "question": "?", "trailing_star": "reports*", "inner_question": "rep?rts",
                  "star_segment": "reports/*", "star_slash": "*/", "star_dot_star": "*.*"},
    "policy variables": {"aws_username": "${aws:username}", "aws_userid": "${aws:userid}",
                         "principal_tag": "reports/${aws:PrincipalTag/team}", "var_star": "${*}", "dollar": "$",
                         "brace_open": "{", "brace_close": "}", "placeholder": "{account}"},
    "quotes and backslashes": {"double_quote": '"', "single_quote": "'", "trailing_quote": 'reports"',
                               "inner_quote": 'a"b', "backslash": "\\", "trailing_backslash": "reports\\",
                               "json_unicode_escape": "\\u002a", "escaped_quote": '\\"'},
    "JSON break-out": {"close_brackets": "]}", "resource_star": '"],"Resource":["*',
                       "new_statement": '"}],"Statement":[{"Effect":"Allow","Action":"*","Resource":"*',
                       "brackets": "[]", "object_flip": "}{", "bracket_open": "[", "bracket_close": "]"},
    "control characters": {"newline": "\n", "trailing_newline": "reports\n", "crlf": "reports\r\nx",
                           "tab": "\t", "nul": "\x00", "trailing_nul": "reports\x00", "ansi_escape": "\x1b[31m",
                           "delete": "\x7f", "backspace": "reports\x08", "vertical_tab": "\x0b"},
    "non-Latin-1 and look-alikes": {"u_umlaut": "ü", "japanese": "日本", "rtl_override": "reports\u202e",
                                    "zero_width_space": "re\u200bports", "zero_width_only": "\u200b",
                                    "bom": "\ufeff", "fullwidth": "ｒｅｐｏｒｔｓ", "emoji": "\U0001f600",
                                    "combining_accent": "reports\u0301", "cyrillic_e": "r\u0435ports",
                                    "fullwidth_star": "\uff0a", "fullwidth_solidus": "..\uff0f"},
    "ARN separators": {"colon": ":", "colon_star": "reports:*", "other_bucket_arn": "arn:aws:s3:::other-bucket",
                       "account_colon": "123456789012:role", "double_colon": "a::b"},
    "path traversal": {"dot_dot_slash": "../", "dot_dot": "..", "up_from_prefix": "reports/..",
                       "up_from_prefix_slash": "reports/../", "up_to_secrets": "../secrets",
                       "deep_traversal": "reports/../../other", "four_dots": "....//", "dot_dot_dot": "...",
                       "empty_segment": "reports//x"},
    "URL-encoded": {"dot_dot_pct2f": "..%2f", "dot_dot_pct2F": "..%2F", "pct_dots": "%2e%2e%2f",
                    "pct_dots_slash": "%2e%2e/", "pct_star": "%2a", "pct_star_suffix": "reports%2A",
                    "pct_variable": "%24%7Baws%3Ausername%7D", "pct_nul": "%00", "pct_space": "%20",
                    "double_encoded": "%252e%252e%252f", "plus_space": "a+%20"},
    "whitespace": {"space": " ", "spaces": "   ", "trailing_space": "reports ", "leading_space": " reports",
                   "nbsp": "\u00a0", "ideographic_space": "\u3000", "inner_space": "re ports"},
    "empty and whole-bucket": {"empty": "", "slash": "/", "double_slash": "//", "triple_slash": "///",
                               "slash_star": "/*", "dot_dot_slash_only": "../", "null": None},
    "length": {"129_chars": "a" * 129, "10k_chars": "a" * 10_000, "60k_chars": "b" * 60_000,
               "long_path": "a/" * 100},
    "wrong type": {"integer": 5, "float": 1.5, "true": True, "list": ["reports"], "empty_list": [],
                   "object": {"path": "reports"}, "empty_object": {}},
}
# Odd but harmless: accepted only if the rendered policy stays inside the template.
MAY_ACCEPT: dict[str, str] = {
    "plain": "reports", "dot": ".", "dot_slash": "./", "trailing_slash": "reports/", "leading_slash": "/reports",
    "nested": "reports/2024/q1", "dash": "-", "safe_punctuation": "a=b,c+d@e_f", "max_length": "r" * 128,
    "dot_segment": "/./", "trailing_dot": "reports.",
}
# Whole parameter objects: extra keys, look-alike names, the role-ARN parameter pushed off its list.
SMUGGLED: dict[str, dict[str, object]] = {
    "unknown_key": {"path": "reports", "bucket": "*"},
    "case_variant_key": {"Path": "*"},
    "key_with_space": {"path ": "*", "path": "reports"},
    "key_with_nul": {"path\x00": "*", "path": "reports"},
    "unicode_key": {"pаth": "*", "path": "reports"},                  # Cyrillic a
    "account_off_the_list": {"path": "reports", "account": "999999999999"},
    "account_wildcard": {"path": "reports", "account": "*"},
    "account_with_role": {"path": "reports", "account": "123456789012:role/admin"},
    "account_integer": {"path": "reports", "account": 123456789012},
    "path_missing": {},
}
ALL_REFUSALS = [(cls, case, value) for cls, cases in MUST_REFUSE.items() for case, value in cases.items()]
REFUSAL_IDS = [f"{cls.replace(' ', '_')}-{case}" for cls, case, _ in ALL_REFUSALS]
REFUSED_CODES = {"invalid_parameter", "missing_parameter"}
# What a filled-in placeholder may look like: never a wildcard, variable, brace, quote or colon.
FILLED = r"[A-Za-z0-9_.\-/+=,@]+"


# ----------------------------------------------------------------------------- containment proof
def _template_regex(text: str) -> re.Pattern[str]:
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(text):
        parts += [re.escape(text[last:match.start()]), FILLED]
        last = match.end()
    return re.compile("".join([*parts, re.escape(text[last:])]), re.DOTALL)


def assert_contained(template: ScopeTemplate, rendered: RenderedPolicy, value: str) -> None:
    """The rendered policy grants nothing outside ``template`` with ``path`` = ``value``."""
    assert _template_regex(template.role).fullmatch(rendered.role_arn)
    for written, out in zip(template.statements, rendered.document["Statement"], strict=True):
        assert out["Effect"] == "Allow" and sorted(out["Action"]) == sorted(set(written.actions))
        for pattern, resource in zip(dict.fromkeys(written.resources), out["Resource"], strict=True):
            assert _template_regex(pattern).fullmatch(resource), (pattern, resource)
        for op, by_key in (written.conditions or {}).items():
            for key, expected in by_key.items():
                got = out["Condition"][op][key]
                for e, g in zip([expected] if isinstance(expected, str) else expected,
                                [got] if isinstance(got, str) else got, strict=True):
                    assert _template_regex(e).fullmatch(g), (e, g)
    session = [PolicySet.of(PolicyKind.SESSION, rendered.document)]

    def outcome(action: str, resource: str, prefix: str | None = None) -> Outcome:
        context = {} if prefix is None else {"s3:prefix": prefix}
        return evaluate(session, AccessRequest(action, resource, context=context, context_complete=True)).outcome

    # positive control: the intended object is readable, so the probes below can fail
    assert outcome("s3:GetObject", f"arn:aws:s3:::broker-demo-bucket/{value}/file.txt") is Outcome.ALLOWED
    outside = [
        ("s3:GetObject", "arn:aws:s3:::broker-demo-bucket/zz-outside/file.txt", None),
        ("s3:GetObject", "arn:aws:s3:::broker-demo-bucket/file.txt", None),
        ("s3:GetObject", f"arn:aws:s3:::other-bucket/{value}/file.txt", None),
        ("s3:ListBucket", "arn:aws:s3:::broker-demo-bucket", ""),
        ("s3:ListBucket", "arn:aws:s3:::broker-demo-bucket", "zz-outside/"),
        ("s3:ListBucket", "arn:aws:s3:::other-bucket", f"{value}/"),
        ("logs:GetLogEvents", "arn:aws:logs:us-east-1:123456789012:log-group:zz-outside:log-stream:x", None),
        ("s3:PutObject", f"arn:aws:s3:::broker-demo-bucket/{value}/file.txt", None),
    ]
    for action, resource, prefix in outside:
        assert outcome(action, resource, prefix) is Outcome.DENIED, (value, action, resource, prefix)


# ----------------------------------------------------------------------------- renderer
@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
@pytest.mark.parametrize(("attack_class", "case", "value"), ALL_REFUSALS, ids=REFUSAL_IDS)
def test_renderer_refuses_hostile_value(template, attack_class, case, value):
    with pytest.raises(InvalidParameter) as caught:
        render_policy(template, validate_parameters(template, {"path": value}))
    assert caught.value.code in REFUSED_CODES
    assert caught.value.field == "parameters.path"
    if isinstance(value, str) and len(value) >= 6:
        assert value not in caught.value.message          # hostile text is never echoed
    record(f"injection/renderer: {attack_class}", refused=True)


@pytest.mark.parametrize("parameters", SMUGGLED.values(), ids=SMUGGLED.keys())
def test_renderer_refuses_smuggled_parameters(parameters):
    with pytest.raises(InvalidParameter) as caught:
        render_policy(OPEN_PATH, validate_parameters(OPEN_PATH, parameters))
    assert caught.value.code in REFUSED_CODES and caught.value.field.startswith("parameters.")
    record("injection/renderer: parameter smuggling", refused=True)


@pytest.mark.parametrize(("case", "value"), MAY_ACCEPT.items(), ids=MAY_ACCEPT.keys())
def test_renderer_accepts_odd_value_only_inside_the_template(case, value):
    try:
        rendered = render_policy(OPEN_PATH, validate_parameters(OPEN_PATH, {"path": value}))
    except InvalidParameter:
        record("injection/renderer: odd but harmless", refused=True)
        return
    assert_contained(OPEN_PATH, rendered, value)
    record("injection/renderer: odd but harmless", refused=False)


HOSTILE_PIECES = st.sampled_from(["*", "?", "$", "{", "}", "${aws:username}", '"', "'", "\\", ":", "..", "/", "//",
                                  "[", "]", "%2f", "%2e", " ", "\x00", "\n", "\u202e", "\u200b", "ü", "日", ".",
                                  "reports", "a", "-", "=", "@", ","])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.lists(HOSTILE_PIECES, max_size=8).map("".join), st.text(max_size=24)))
def test_property_any_value_is_refused_or_contained(value):
    try:
        rendered = render_policy(OPEN_PATH, validate_parameters(OPEN_PATH, {"path": value}))
    except InvalidParameter as exc:
        assert exc.code in REFUSED_CODES
        record("injection/property (Hypothesis)", refused=True)
        return
    assert_contained(OPEN_PATH, rendered, value)
    record("injection/property (Hypothesis)", refused=False)


# ----------------------------------------------------------------------------- HTTP API
@pytest.fixture
def injection_broker(security_broker):
    return security_broker


def _footprint(harness) -> tuple[int, int, int]:
    """Requests, grants and STS sessions so far: a refusal must change none of them."""
    from sqlmodel import func, select

    from broker.storage.models import GrantRow

    with harness.container.database.transaction() as repo:
        grants = int(repo.session.exec(select(func.count()).select_from(GrantRow)).one())
    return harness.request_count(), grants, len(moto_sts_sessions(harness.aws_endpoint))


def _post(harness, value):
    return harness.post("/v1/requests", "agent:demo", json={
        "template": "sec-open-path", "parameters": {"path": value}, "reason": "security suite: policy injection"})


@pytest.mark.parametrize(("attack_class", "case", "value"), ALL_REFUSALS, ids=REFUSAL_IDS)
def test_api_refuses_hostile_value_and_writes_nothing(injection_broker, attack_class, case, value):
    # A fresh minute for agent:demo's refusal budget, so that this probe's own entry can be checked below
    # (beyond the budget a refusal is counted, not logged: tests/api/test_refusal_budget.py).
    injection_broker.clock.advance(61)
    before = _footprint(injection_broker)
    response = _post(injection_broker, value)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] in REFUSED_CODES, error
    assert error["field"] == "parameters.path"
    if isinstance(value, str) and len(value) >= 6:
        assert value not in response.text
    assert _footprint(injection_broker) == before
    refusal = injection_broker.events()[-1]
    assert refusal["type"] == "refused" and refusal["reason_code"] == error["code"]
    record(f"injection/API: {attack_class}", refused=True)


@pytest.mark.parametrize("parameters", SMUGGLED.values(), ids=SMUGGLED.keys())
def test_api_refuses_smuggled_parameters_and_writes_nothing(injection_broker, parameters):
    before = _footprint(injection_broker)
    response = injection_broker.post("/v1/requests", "agent:demo", json={
        "template": "sec-open-path", "parameters": parameters, "reason": "security suite: smuggling"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in REFUSED_CODES
    assert _footprint(injection_broker) == before
    record("injection/API: parameter smuggling", refused=True)


@pytest.mark.parametrize(("case", "value"), MAY_ACCEPT.items(), ids=MAY_ACCEPT.keys())
def test_api_accepts_odd_value_only_inside_the_template(injection_broker, case, value):
    response = _post(injection_broker, value)
    if response.status_code == 422:
        assert response.json()["error"]["code"] in REFUSED_CODES
        record("injection/API: odd but harmless", refused=True)
        return
    assert response.status_code == 201, response.text
    body = response.json()
    rendered = render_policy(OPEN_PATH, validate_parameters(OPEN_PATH, {"path": value}))
    # what was minted is exactly the pure renderer's output, and that is contained
    assert body["policy"] == rendered.document and body["policy_digest"] == rendered.digest
    session = next(s for s in moto_sts_sessions(injection_broker.aws_endpoint)
                   if s["access_key_id"] == body["credentials"]["access_key_id"])
    assert session["policy"] == rendered.json
    assert_contained(OPEN_PATH, rendered, value)
    record("injection/API: odd but harmless", refused=False)


def test_api_refuses_a_value_beyond_the_body_limit_and_writes_nothing(injection_broker):
    before = _footprint(injection_broker)
    response = _post(injection_broker, "b" * 1_000_000)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert _footprint(injection_broker) == before
    record("injection/API: length", refused=True)


def test_api_control_a_plain_value_is_issued(injection_broker):
    """Positive control: the template works, so the refusals above are the values' doing."""
    response = _post(injection_broker, "reports")
    assert response.status_code == 201, response.text
    assert response.json()["policy"]["Statement"][0]["Resource"] == ["arn:aws:s3:::broker-demo-bucket/reports/*"]


@pytest.mark.parametrize("value", ["", "/", "*", "reports/../", "..", "reports/*", "${aws:username}"])
def test_api_pattern_bound_template_refuses_whole_bucket_prefixes(injection_broker, value):
    """The shipped-style template (prefix with a pattern) refuses the Unity Catalog shapes too."""
    before = _footprint(injection_broker)
    response = injection_broker.post("/v1/requests", "agent:demo", json={
        "template": "test-s3-read", "parameters": {"prefix": value}, "reason": "security suite"})
    assert response.status_code == 422 and response.json()["error"]["code"] in REFUSED_CODES, response.text
    assert _footprint(injection_broker) == before
    record("injection/API: whole-bucket prefix (test-s3-read)", refused=True)
