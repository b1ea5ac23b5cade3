"""An offline IAM policy evaluator: what a minted session may actually do.

AWS grants a role session the *intersection* of the role's identity policies and the session
policy, minus every explicit Deny (including the broker's revocation denies).  moto does not
apply session policies, so the broker proves effective permissions itself, here, as a pure
function.  It follows AWS's documented evaluation order for a request inside one account:

1. An explicit ``Deny`` that matches, in any policy, denies.
2. Every policy *set* that applies (identity policies, a permissions boundary, the session
   policy) must contain an ``Allow`` that matches; otherwise the request is implicitly denied.
3. Otherwise the request is allowed.

Matching is three-valued.  Where the evaluator cannot decide (a condition operator it does
not implement, a condition key or policy variable the request does not supply, a value it
cannot parse) the statement "may match", and the answer becomes ``undecidable`` ("may
allow") unless something else decides the request for certain.  It never turns "don't
know" into "deny".

Also as documented: ``sts:GetCallerIdentity`` is always allowed (it needs no permission and an
explicit deny does not stop it); a document without ``"Version": "2012-10-17"`` has no policy
variables (``${aws:username}`` is literal text there); ARN wildcards follow the segment rules of
"IAM JSON policy elements: Resource" (see :func:`arn_match`, including the one case where the
documentation and observed behaviour can disagree: patterns of fewer than six segments); actions
and condition key names are case-insensitive, ARNs and ``StringLike`` case-sensitive.  A malformed
statement (both ``Action`` and ``NotAction``, an unknown ``Effect``, a null condition value...) is
undecidable: IAM would refuse the policy, and we do not guess.

Not modelled (say so rather than guess): resource-based policies, SCPs/RCPs, cross-account
requests.  References: AWS IAM User Guide, "Policy evaluation logic", "Condition operators",
"Conditions with multiple context keys or values", "Policy variables", "IAM JSON policy
elements: Version / Resource"; AWS STS API reference, "GetCallerIdentity".
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any

from broker.domain.times import parse_time


class Tri(Enum):
    """Kleene three-valued truth: TRUE, FALSE or UNKNOWN ("may be either")."""

    FALSE = 0
    UNKNOWN = 1
    TRUE = 2

    @staticmethod
    def of(value: bool) -> "Tri":
        return Tri.TRUE if value else Tri.FALSE

    def __and__(self, other: "Tri") -> "Tri":
        return self if self.value <= other.value else other

    def __or__(self, other: "Tri") -> "Tri":
        return self if self.value >= other.value else other

    def __invert__(self) -> "Tri":
        return {Tri.TRUE: Tri.FALSE, Tri.FALSE: Tri.TRUE, Tri.UNKNOWN: Tri.UNKNOWN}[self]


def all_of(values: Sequence[Tri] | Any) -> Tri:
    result = Tri.TRUE
    for value in values:
        result = result & value
        if result is Tri.FALSE:
            break
    return result


def any_of(values: Sequence[Tri] | Any) -> Tri:
    result = Tri.FALSE
    for value in values:
        result = result | value
        if result is Tri.TRUE:
            break
    return result


class PolicyKind(StrEnum):
    IDENTITY = "identity"                  # the role's own policies (and the broker's revocation denies)
    PERMISSIONS_BOUNDARY = "permissions-boundary"
    SESSION = "session"                    # the session policy passed to AssumeRole


@dataclass(frozen=True)
class PolicySet:
    """Policies of one kind.  If a set is passed to :func:`evaluate`, it must allow the request."""

    kind: PolicyKind
    documents: tuple[Mapping[str, Any], ...]
    name: str = ""

    @classmethod
    def of(cls, kind: PolicyKind, *documents: Mapping[str, Any], name: str = "") -> "PolicySet":
        return cls(kind=kind, documents=tuple(documents), name=name or kind.value)


@dataclass(frozen=True)
class AccessRequest:
    """One API call to decide.

    ``context`` holds the condition keys the caller knows (key names are case-insensitive;
    values are strings, a key may have several).  A key that is not in ``context`` is
    *unknown* (so conditions on it are undecidable) unless it is listed in ``absent`` or
    ``context_complete`` is true, in which case it is known to be missing from the request.
    """

    action: str
    resource: str
    context: Mapping[str, str | KnownSuffix | Sequence[str | KnownSuffix]] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()
    context_complete: bool = False

    def value(self, key: str) -> tuple[str | KnownSuffix, ...] | None | _Unknown:
        """The key's values; ``None`` when known absent; ``UNKNOWN_VALUE`` when not known."""
        wanted = key.lower()
        for name, raw in self.context.items():
            if name.lower() == wanted:
                values = (raw,) if isinstance(raw, (str, KnownSuffix, bool, int, float)) else tuple(raw)
                return tuple(_context_text(v) for v in values)
        if self.context_complete or wanted in {a.lower() for a in self.absent}:
            return None
        return UNKNOWN_VALUE


def _context_text(value: Any) -> str | KnownSuffix:
    """A context value as IAM sees it: text (JSON booleans as ``true``/``false``, numbers as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, (str, KnownSuffix)) else str(value)


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN_VALUE"


UNKNOWN_VALUE = _Unknown()


@dataclass(frozen=True)
class KnownSuffix:
    """A context value known only from its end: an unknown run of ``start_chars`` (at least one),
    then ``suffix``.  ``aws:userid`` of a role session is ``<role id>:<session name>``; without the
    role's unique id (``AROA`` and upper-case letters and digits, from ``aws iam get-role``) the
    broker knows the session name only.  String comparisons decide what they can from the suffix
    (``StringLike "*:name"`` is certain either way) and are UNKNOWN otherwise."""

    suffix: str
    start_chars: str = "A-Z0-9"

    def __str__(self) -> str:
        return f"<unknown [{self.start_chars}]+>{self.suffix}"

    def could_be(self, text: str, *, ignore_case: bool = False) -> bool:
        value, suffix = (text.lower(), self.suffix.lower()) if ignore_case else (text, self.suffix)
        start = value[:len(value) - len(suffix)]
        flags = re.IGNORECASE if ignore_case else 0
        return value.endswith(suffix) and bool(re.fullmatch(f"[{self.start_chars}]+", start, flags))

    def like(self, pattern: str) -> Tri:
        """StringLike of this value against a wildcard ``pattern`` (``\\x00`` marks literals)."""
        tokens = _tokens(pattern)
        if tokens and tokens[0][0] == "*":
            rest = _glob_regex(_untokens(tokens[1:]))
            if any(rest.fullmatch(self.suffix[k:]) for k in range(len(self.suffix) + 1)):
                return Tri.TRUE      # the leading * takes the unknown start (and more), the rest the suffix's end
        if not any(kind in "*?" for kind, _ in tokens):
            return Tri.UNKNOWN if self.could_be(_untokens(tokens)) else Tri.FALSE
        tail = ""
        for kind, char in reversed(tokens):
            if kind != "c":
                break
            tail = char + tail
        if len(tail) <= len(self.suffix):
            possible = self.suffix.endswith(tail)
        else:
            head = tail[:len(tail) - len(self.suffix)]
            possible = tail.endswith(self.suffix) and bool(re.fullmatch(f"[{self.start_chars}]*", head))
        return Tri.UNKNOWN if possible else Tri.FALSE


def _untokens(tokens: list[tuple[str, str]]) -> str:
    return "".join(char if kind == "c" and char not in "*?" else _LITERAL_MARK + char if kind == "c" else kind
                   for kind, char in tokens)


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    UNDECIDABLE = "undecidable"      # "may allow": something the evaluator cannot decide is involved


@dataclass(frozen=True)
class StatementRef:
    policy: str          # the policy set's name
    document: int        # index of the document within the set
    index: int           # index of the statement within the document
    sid: str | None
    effect: str

    def __str__(self) -> str:
        label = self.sid if self.sid else f"statement #{self.index}"
        return f"{self.effect} '{label}' in {self.policy} policy" + (f" #{self.document}" if self.document else "")

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "document": self.document, "index": self.index, "sid": self.sid,
                "effect": self.effect}


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    statements: tuple[StatementRef, ...] = ()      # the statements that decided (deny, or one allow per set)
    unknowns: tuple[str, ...] = ()                  # what the evaluator could not decide, if undecidable

    @property
    def deciding(self) -> StatementRef | None:
        return self.statements[0] if self.statements else None

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "reason": self.reason,
                "statements": [s.to_dict() for s in self.statements], "unknowns": list(self.unknowns)}


# ---------------------------------------------------------------------------------------------
# Wildcards and policy variables

@functools.lru_cache(maxsize=4096)  # a pure function of its strings; policies repeat their patterns
def _glob_regex(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """``*`` any run and ``?`` exactly one character (``\\x00c`` is the literal character c)."""
    body = "".join(".*" if kind == "*" else "." if kind == "?" else re.escape(char)
                   for kind, char in _tokens(pattern))
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """The pattern as (kind, character): kind ``*``/``?`` for a wildcard, ``c`` for a literal (a
    character after the ``\\x00`` mark is always literal: it came from a policy variable or ``${*}``)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == _LITERAL_MARK and i + 1 < len(pattern):
            out.append(("c", pattern[i + 1]))
            i += 2
            continue
        out.append((c, c) if c in "*?" else ("c", c))
        i += 1
    return out


# Segments before the resource part: partition, service, region, account (and "arn" itself).
_ARN_HEAD_SEGMENTS = 5


@functools.lru_cache(maxsize=4096)
def _arn_regex(pattern: str, *, trailing_star_crosses: bool = True) -> re.Pattern[str]:
    """An ARN pattern as a regular expression, as IAM documents it ("IAM JSON policy elements:
    Resource", *Using wildcards in resource ARNs*): wildcards work within the colon-separated segments;
    a ``*`` that is the *last character of a segment* "can expand to match beyond the colon
    boundaries"; everything after the fifth colon is the resource segment, where ``*`` and ``?``
    match any character (``:`` and ``/`` included).  So ``arn:aws:sns:*`` matches every SNS ARN,
    while ``arn:aws:ec2:us-*-1:...`` keeps its ``*`` inside the region.  Without
    ``trailing_star_crosses`` no wildcard before the resource part crosses a colon (strictly
    segment by segment)."""
    tokens = _tokens(pattern)
    body: list[str] = []
    segment = 0
    for i, (kind, char) in enumerate(tokens):
        if kind == "c":
            body.append(re.escape(char))
            segment += char == ":"
        elif segment >= _ARN_HEAD_SEGMENTS:
            body.append(".*" if kind == "*" else ".")
        elif kind == "?":
            body.append("[^:]")
        else:
            last_in_segment = i + 1 == len(tokens) or tokens[i + 1] == ("c", ":")
            body.append(".*" if last_in_segment and trailing_star_crosses else "[^:]*")
    return re.compile("".join(body), re.DOTALL)


def action_matches(pattern: str, action: str) -> bool:
    """IAM action matching: case-insensitive, ``*``/``?`` wildcards."""
    return bool(_glob_regex(pattern, ignore_case=True).fullmatch(action))


def arn_match(pattern: str, arn: str) -> Tri:
    """ARN matching (Resource, NotResource and the Arn* condition operators), case-sensitive.

    A pattern that does not start with ``arn:`` (``*``, or a service's non-ARN resource) is a plain
    wildcard match.  An ARN pattern is matched as :func:`_arn_regex` says AWS documents it.  For a
    pattern of *fewer than six segments* there is a second reading: the missing trailing segments
    taken as ``*`` (``arn:aws:sqs`` as ``arn:aws:sqs:*:*:*``), which is what an independent simulator
    (cloud-copilot iam-simulate) reports AWS doing for identity, session and boundary policies.  The
    two agree for the documented case (``arn:aws:sns:*``); where they differ (``arn:aws:sqs``, or
    ``arn:aws:ec2:*:instance/*``) the answer is UNKNOWN: the evaluator cannot decide it, and says so
    rather than deny."""
    if not pattern.startswith("arn:"):
        return Tri.of(bool(_glob_regex(pattern).fullmatch(arn)))
    documented = bool(_arn_regex(pattern).fullmatch(arn))
    segments = 1 + sum(token == ("c", ":") for token in _tokens(pattern))
    if segments < _ARN_HEAD_SEGMENTS + 1:
        padded = pattern + ":*" * (_ARN_HEAD_SEGMENTS + 1 - segments)
        if bool(_arn_regex(padded, trailing_star_crosses=False).fullmatch(arn)) != documented:
            return Tri.UNKNOWN
    return Tri.of(documented)


def _short_arn(pattern: str) -> bool:
    return pattern.startswith("arn:") and pattern.count(":") < _ARN_HEAD_SEGMENTS


def arn_matches(pattern: str, arn: str) -> bool:
    """May ``pattern`` match ``arn``?  (True unless :func:`arn_match` is certain it does not.)"""
    return arn_match(pattern, arn) is not Tri.FALSE


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_SPECIAL = {"*": "*", "?": "?", "$": "$"}
_LITERAL_MARK = "\x00"
# The policy language version that has policy variables ("IAM JSON policy elements: Version").
VARIABLES_VERSION = "2012-10-17"
KNOWN_VERSIONS = frozenset({VARIABLES_VERSION, "2008-10-17"})


@dataclass(frozen=True)
class Substituted:
    """A policy string after its policy variables were replaced.  ``state`` is TRUE when every
    variable resolved, FALSE when one names a key known to be absent (or with several values) and
    has no default, UNKNOWN when one names a key the request does not say."""

    text: str
    state: Tri
    why: str = ""


def substitute_variables(text: str, request: AccessRequest, *, literal_wildcards: bool,
                         variables: bool = True) -> tuple[str, Tri]:
    """Replace ``${aws:username}`` etc. from the request context (see :func:`substitute`)."""
    result = substitute(text, request, literal_wildcards=literal_wildcards, variables=variables)
    return result.text, result.state


def substitute(text: str, request: AccessRequest, *, literal_wildcards: bool, variables: bool = True) -> Substituted:
    """Policy variables ("IAM policy elements: Variables and tags").

    With ``variables`` false (a policy without ``"Version": "2012-10-17"``) the text is returned
    as it is: ``${aws:username}`` is literal text there.  ``${*}``, ``${?}``, ``${$}`` stand for the
    literal characters; ``${key, 'default'}`` supplies a default.  A multivalued key cannot be a
    variable.  When ``literal_wildcards`` the substituted characters are marked (``\x00c``) so that a
    ``*`` in a *value* or from ``${*}`` is not a wildcard.
    """
    if not variables or "${" not in text:
        return Substituted(text, Tri.TRUE)
    state, why = Tri.TRUE, ""
    out: list[str] = []
    last = 0
    for match in _VARIABLE.finditer(text):
        out.append(text[last:match.start()])
        last = match.end()
        inner = match.group(1).strip()
        if inner in _SPECIAL:
            out.append(_LITERAL_MARK + inner if literal_wildcards else inner)
            continue
        key, default = inner, None
        default_match = re.fullmatch(r"(.+?)\s*,\s*'(.*)'", inner)
        if default_match:
            key, default = default_match.group(1).strip(), default_match.group(2)
        value = request.value(key)
        if isinstance(value, _Unknown) or (value is not None and len(value) == 1 and not isinstance(value[0], str)):
            state, why = state & Tri.UNKNOWN, why or f"policy variable ${{{key}}} is not in the request context"
            out.append("")
            continue
        if value is None or len(value) != 1:
            if default is None:
                state = state & Tri.FALSE
                out.append("")
                continue
            value = (default,)
        text_value = str(value[0])
        out.append("".join(_LITERAL_MARK + c if c in "*?" else c for c in text_value) if literal_wildcards
                   else text_value)
    out.append(text[last:])
    return Substituted("".join(out), state, why)


def _pattern_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """Wildcard match where ``\x00c`` means the literal character c."""
    return bool(_glob_regex(pattern, ignore_case=ignore_case).fullmatch(value))


# ---------------------------------------------------------------------------------------------
# Condition operators: a table of name -> comparison, run by one loop.

Compare = Callable[[str, Any, AccessRequest, bool], Tri]


def _string(*, ignore_case: bool = False) -> Compare:
    def compare(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:
        expected = substitute(policy, request, literal_wildcards=False, variables=variables)
        if expected.state is not Tri.TRUE:
            return expected.state
        if isinstance(actual, KnownSuffix):
            return Tri.UNKNOWN if actual.could_be(expected.text, ignore_case=ignore_case) else Tri.FALSE
        if ignore_case:
            return Tri.of(expected.text.lower() == actual.lower())
        return Tri.of(expected.text == actual)
    return compare


def _like(*, arn: bool) -> Compare:
    def compare(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:
        expected = substitute(policy, request, literal_wildcards=True, variables=variables)
        if expected.state is not Tri.TRUE:
            return expected.state
        if isinstance(actual, KnownSuffix):
            return Tri.UNKNOWN if arn else actual.like(expected.text)
        return arn_match(expected.text, actual) if arn else Tri.of(_pattern_match(expected.text, actual))
    return compare


# A decimal number as IAM writes them: no exponents, NaN, infinities or digit separators.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def _numeric(op: Callable[[Decimal, Decimal], bool]) -> Compare:
    def compare(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:  # noqa: ARG001
        if not isinstance(actual, str) or not _NUMBER.fullmatch(actual.strip()) or not _NUMBER.fullmatch(policy.strip()):
            return Tri.UNKNOWN
        return Tri.of(op(Decimal(actual.strip()), Decimal(policy.strip())))
    return compare


def parse_date(text: str) -> datetime:
    """ISO 8601 (``2024-01-01T00:00:00Z``, a date, or with an offset) or epoch seconds."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), tz=UTC)
    return parse_time(text)


def _date(op: Callable[[datetime, datetime], bool]) -> Compare:
    def compare(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:  # noqa: ARG001
        if not isinstance(actual, str):
            return Tri.UNKNOWN
        try:
            return Tri.of(op(parse_date(actual), parse_date(policy)))
        except (ValueError, OverflowError, OSError):
            return Tri.UNKNOWN
    return compare


def _bool(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:  # noqa: ARG001
    if not isinstance(actual, str) or policy.lower() not in {"true", "false"}:
        return Tri.UNKNOWN
    return Tri.of(policy.lower() == actual.lower())


def _binary(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:  # noqa: ARG001
    if not isinstance(actual, str):
        return Tri.UNKNOWN
    try:
        return Tri.of(base64.b64decode(policy, validate=True) == base64.b64decode(actual, validate=True))
    except (binascii.Error, ValueError):
        return Tri.UNKNOWN


def _ip(policy: str, actual: Any, request: AccessRequest, variables: bool) -> Tri:  # noqa: ARG001
    if not isinstance(actual, str):
        return Tri.UNKNOWN
    try:
        network = ipaddress.ip_network(policy, strict=False)
        address = ipaddress.ip_address(actual)
    except ValueError:
        return Tri.UNKNOWN
    return Tri.of(address.version == network.version and address in network)


@dataclass(frozen=True)
class Operator:
    compare: Compare
    negated: bool = False


OPERATORS: dict[str, Operator] = {
    "StringEquals": Operator(_string()),
    "StringNotEquals": Operator(_string(), negated=True),
    "StringEqualsIgnoreCase": Operator(_string(ignore_case=True)),
    "StringNotEqualsIgnoreCase": Operator(_string(ignore_case=True), negated=True),
    "StringLike": Operator(_like(arn=False)),
    "StringNotLike": Operator(_like(arn=False), negated=True),
    "Bool": Operator(_bool),
    "BinaryEquals": Operator(_binary),
    "IpAddress": Operator(_ip),
    "NotIpAddress": Operator(_ip, negated=True),
    "ArnEquals": Operator(_like(arn=True)),
    "ArnLike": Operator(_like(arn=True)),
    "ArnNotEquals": Operator(_like(arn=True), negated=True),
    "ArnNotLike": Operator(_like(arn=True), negated=True),
}
# Numeric* and Date*: one comparison table for both families.
COMPARISONS: tuple[tuple[str, Callable[[Any, Any], bool], bool], ...] = (
    ("Equals", operator.eq, False), ("NotEquals", operator.eq, True), ("LessThan", operator.lt, False),
    ("LessThanEquals", operator.le, False), ("GreaterThan", operator.gt, False),
    ("GreaterThanEquals", operator.ge, False),
)
for _family, _make in (("Numeric", _numeric), ("Date", _date)):
    for _suffix, _op, _negated in COMPARISONS:
        OPERATORS[_family + _suffix] = Operator(_make(_op), negated=_negated)
del _family, _make, _suffix, _op, _negated
SET_QUALIFIERS = ("ForAnyValue", "ForAllValues")


def _values(raw: Any) -> tuple[str, ...] | None:
    """A condition's policy values as strings (JSON booleans and numbers as IAM reads them), or
    None when the block is malformed (null, an object, an empty list)."""
    items = raw if isinstance(raw, list) else [raw]
    if not items or any(item is None or isinstance(item, (dict, list)) for item in items):
        return None
    return tuple(str(item).lower() if isinstance(item, bool) else str(item) for item in items)


def _single_value(op: Operator, expected: tuple[str, ...], actual: Any, request: AccessRequest,
                  variables: bool) -> Tri:
    """One request value against the policy's values: OR for positive operators, NOR for negated."""
    results = [op.compare(value, actual, request, variables) for value in expected]
    if op.negated and variables and any(
            substitute(value, request, literal_wildcards=False).state is Tri.FALSE for value in expected):
        # "If AWS cannot resolve a variable this might cause the entire statement to be invalid"
        # ("Policy variables"): a negated operator would then not hold, yet compares true.  Undecidable.
        return Tri.UNKNOWN if not any(r is Tri.TRUE for r in results) else Tri.FALSE
    hit = any_of(results)
    return ~hit if op.negated else hit


def evaluate_condition(operator_name: str, key: str, raw_expected: Any, request: AccessRequest, *,
                       variables: bool = True) -> tuple[Tri, str]:
    """One operator/key pair ("Condition operators", "Conditions with multiple context keys or
    values").  Returns the truth value and, if UNKNOWN, why.  ``variables``: whether the policy's
    Version has policy variables."""
    qualifier, _, name = operator_name.rpartition(":")
    if qualifier and qualifier not in SET_QUALIFIERS:
        return Tri.UNKNOWN, f"unknown set qualifier {qualifier!r}"
    expected = _values(raw_expected)
    if expected is None:
        return Tri.UNKNOWN, f"condition {operator_name} on {key} has no usable value"
    if name == "Null":
        actual = request.value(key)
        if isinstance(actual, _Unknown):
            return Tri.UNKNOWN, f"condition key {key} is not in the request context"
        if any(v.lower() not in {"true", "false"} for v in expected):
            return Tri.UNKNOWN, "Null takes true or false"
        if actual is not None and len(actual) == 0:
            # A key present with no value: a "null dataset" to AWS's ForAllValues text, present to an
            # independent simulator.  Not ours to pick.
            return Tri.UNKNOWN, f"condition key {key} is given with no value: Null cannot be decided"
        is_absent = actual is None
        return any_of(Tri.of((v.lower() == "true") == is_absent) for v in expected), ""
    if_exists = name.endswith("IfExists")
    base = name.removesuffix("IfExists")
    op = OPERATORS.get(base)
    if op is None:
        return Tri.UNKNOWN, f"condition operator {operator_name} is not supported by the evaluator"
    actual = request.value(key)
    if isinstance(actual, _Unknown):
        return Tri.UNKNOWN, f"condition key {key} is not in the request context"
    if actual is None or (qualifier and len(actual) == 0):
        # Missing key: ForAllValues is vacuously true; ForAnyValue false; IfExists true;
        # negated operators true; everything else false (AWS "Condition operators").
        if qualifier == "ForAllValues":
            return Tri.TRUE, ""
        if qualifier == "ForAnyValue":
            return Tri.FALSE, ""
        return Tri.of(if_exists or op.negated), ""
    if qualifier == "ForAllValues":
        truth = all_of(_single_value(op, expected, a, request, variables) for a in actual)
    elif qualifier == "ForAnyValue":
        truth = any_of(_single_value(op, expected, a, request, variables) for a in actual)
    elif len(actual) != 1:
        return Tri.UNKNOWN, f"condition key {key} has several values; use ForAnyValue/ForAllValues"
    else:
        truth = _single_value(op, expected, actual[0], request, variables)
    if base.startswith("Arn") and truth is not Tri.FALSE and any(_short_arn(v) for v in expected):
        # "Each of the six colon-delimited components of the ARN is checked separately" (Condition operators,
        # ARN): a shorter pattern may match nothing there, negated or not.  Only "false" is certain.
        return Tri.UNKNOWN, f"condition {operator_name} on {key} has an ARN pattern of fewer than six segments"
    return truth, (_why_unknown(key, expected, actual, request, variables) if truth is Tri.UNKNOWN else "")


def _why_unknown(key: str, expected: tuple[str, ...], actual: tuple[Any, ...], request: AccessRequest,
                 variables: bool) -> str:
    for value in expected:
        result = substitute(value, request, literal_wildcards=False, variables=variables)
        if result.state is Tri.UNKNOWN:
            return result.why
        if result.state is Tri.FALSE:
            return f"a policy variable in {value!r} has no value; AWS may treat the statement as invalid"
    if any(isinstance(a, KnownSuffix) for a in actual):
        return f"condition key {key} is only partly known ({'; '.join(str(a) for a in actual)})"
    return "a condition value could not be compared"


# ---------------------------------------------------------------------------------------------
# Statements and the decision

def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [value]


@dataclass(frozen=True)
class _Match:
    truth: Tri
    unknowns: tuple[str, ...] = ()


def _resource_match(patterns: list[Any], request: AccessRequest, *, variables: bool, negated: bool) -> _Match:
    """Resource (or, ``negated``, NotResource): does any pattern match the request's resource?"""
    results, unknowns = [], []
    unresolved = False
    for pattern in patterns:
        if not isinstance(pattern, str):
            unknowns.append(f"resource {pattern!r} is not a string")
            results.append(Tri.UNKNOWN)
            continue
        text = substitute(pattern, request, literal_wildcards=True, variables=variables)
        if text.state is Tri.FALSE:
            unresolved = True          # the element does not match ("Policy variables with no value")
            results.append(Tri.FALSE)
            continue
        if text.state is Tri.UNKNOWN:
            unknowns.append(f"{text.why} (resource {pattern!r})")
            results.append(Tri.UNKNOWN)
            continue
        truth = arn_match(text.text, request.resource)
        if truth is Tri.UNKNOWN:
            unknowns.append(f"resource {pattern!r} has fewer than six ARN segments; AWS's documented wildcard "
                            f"rule and the missing-segments-are-* reading disagree on {request.resource}")
        results.append(truth)
    truth = any_of(results)
    if negated:
        truth = ~truth
        if unresolved and truth is Tri.TRUE:
            # An unresolvable variable may make the whole statement invalid: NotResource may not apply.
            truth = Tri.UNKNOWN
            unknowns.append("a policy variable in NotResource has no value; AWS may treat the statement as invalid")
    return _Match(truth, tuple(unknowns))


def _action_match(patterns: list[Any], action: str) -> Tri:
    if not all(isinstance(p, str) for p in patterns):
        return Tri.UNKNOWN
    return Tri.of(any(action_matches(p, action) for p in patterns))


def statement_matches(statement: Mapping[str, Any], request: AccessRequest, *, variables: bool = True) -> _Match:
    """Does one statement apply to the request (ignoring its Effect)?  ``variables``: whether the
    policy's Version has policy variables (``2012-10-17``)."""
    if not isinstance(statement, Mapping):
        return _Match(Tri.UNKNOWN, ("a statement is not an object",))
    if ("Action" in statement) == ("NotAction" in statement):
        # "you cannot use both Action and NotAction in the same policy statement" (IAM JSON element reference)
        return _Match(Tri.UNKNOWN, ("a statement must have exactly one of Action and NotAction",))
    if ("Resource" in statement) == ("NotResource" in statement):
        return _Match(Tri.UNKNOWN, ("a statement must have exactly one of Resource and NotResource",))
    unknowns: list[str] = []
    if "Action" in statement:
        action = _action_match(_listify(statement["Action"]), request.action)
    else:
        action = ~_action_match(_listify(statement["NotAction"]), request.action)
    if action is Tri.FALSE:
        return _Match(Tri.FALSE)
    if action is Tri.UNKNOWN:
        unknowns.append("an Action value is not a string")
    negated = "NotResource" in statement
    resource = _resource_match(_listify(statement["NotResource" if negated else "Resource"]), request,
                               variables=variables, negated=negated)
    unknowns.extend(resource.unknowns)
    if resource.truth is Tri.FALSE:
        return _Match(Tri.FALSE)
    condition = Tri.TRUE
    block = statement.get("Condition") or {}
    if not isinstance(block, Mapping):
        condition = Tri.UNKNOWN
        unknowns.append("the Condition element is malformed")
        block = {}
    for operator_name, by_key in block.items():
        if not isinstance(by_key, Mapping):
            condition = condition & Tri.UNKNOWN
            unknowns.append(f"condition {operator_name} is malformed")
            continue
        for key, expected in by_key.items():
            truth, why = evaluate_condition(operator_name, key, expected, request, variables=variables)
            if truth is Tri.UNKNOWN:
                unknowns.append(why)
            condition = condition & truth
    truth = action & resource.truth & condition
    return _Match(truth, tuple(unknowns) if truth is Tri.UNKNOWN else ())


def _statements(document: Mapping[str, Any]) -> list[Any]:
    raw = document.get("Statement", [])
    return [raw] if isinstance(raw, Mapping) else list(raw) if isinstance(raw, list) else [raw]


def _version(document: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(policy variables on?, why the document is unusable or None).  Without a Version element
    the language is 2008-10-17: "variables such as ${aws:username} aren't recognized as variables
    and are instead treated as literal strings" ("IAM JSON policy elements: Version")."""
    version = document.get("Version")
    if version is None:
        return False, None
    if version not in KNOWN_VERSIONS:
        return False, f"policy Version {version!r} is not one IAM knows"
    return version == VARIABLES_VERSION, None


# Actions AWS answers for every caller: "No permissions are required to perform this operation.  If an
# administrator attaches a policy to your identity that explicitly denies access to the
# sts:GetCallerIdentity action, you can still perform this operation" (STS API reference, GetCallerIdentity).
ALWAYS_ALLOWED_ACTIONS = frozenset({"sts:getcalleridentity"})


def evaluate(policies: Sequence[PolicySet], request: AccessRequest) -> Decision:
    """Decide one request against the policy sets that apply to a session (see module doc)."""
    if request.action.lower() in ALWAYS_ALLOWED_ACTIONS:
        return Decision(Outcome.ALLOWED, f"{request.action} needs no permission and cannot be denied "
                                         "(AWS STS API reference)")
    if not policies:
        # NOTE: fail closed: with no policy at all AWS denies; we never answer "allowed" for nothing.
        return Decision(Outcome.DENIED, "no policy applies, so nothing is allowed (implicit deny)")
    unknowns: list[str] = []
    maybe_deny = False
    allows_by_set: list[tuple[PolicySet, Tri, StatementRef | None]] = []
    for policy_set in policies:
        set_allow, allow_ref = Tri.FALSE, None
        for d_index, document in enumerate(policy_set.documents):
            name = policy_set.name or policy_set.kind.value
            variables, unusable = _version(document) if isinstance(document, Mapping) else (False, "not an object")
            if unusable:
                ref = StatementRef(name, d_index, 0, None, "?")
                maybe_deny, set_allow = True, set_allow | Tri.UNKNOWN
                allow_ref = allow_ref or ref
                unknowns.append(f"{name} policy #{d_index}: {unusable}")
                continue
            for s_index, statement in enumerate(_statements(document)):
                effect = str(statement.get("Effect", "")) if isinstance(statement, Mapping) else ""
                ref = StatementRef(name, d_index, s_index,
                                   statement.get("Sid") if isinstance(statement, Mapping) else None, effect)
                match = statement_matches(statement, request, variables=variables)
                if match.truth is Tri.FALSE:
                    continue
                if effect == "Deny":
                    if match.truth is Tri.TRUE:
                        return Decision(Outcome.DENIED, f"explicitly denied by {ref}", (ref,))
                    maybe_deny = True
                    unknowns.extend(match.unknowns)
                elif effect == "Allow":
                    if match.truth is Tri.TRUE and set_allow is not Tri.TRUE:
                        set_allow, allow_ref = Tri.TRUE, ref
                    elif match.truth is Tri.UNKNOWN and set_allow is Tri.FALSE:
                        set_allow, allow_ref = Tri.UNKNOWN, ref
                        unknowns.extend(match.unknowns)
                    elif match.truth is Tri.UNKNOWN:
                        unknowns.extend(match.unknowns)
                else:
                    # IAM refuses such a policy; what it would do is not ours to guess: may allow, may deny.
                    maybe_deny, set_allow = True, set_allow | Tri.UNKNOWN
                    allow_ref = allow_ref or ref
                    unknowns.append(f"{ref} has an unknown Effect {effect!r}")
        allows_by_set.append((policy_set, set_allow, allow_ref))
    for policy_set, set_allow, _ in allows_by_set:
        if set_allow is Tri.FALSE:
            name = policy_set.name or policy_set.kind.value
            return Decision(Outcome.DENIED, f"no statement in the {name} policy allows {request.action} on "
                                            f"{request.resource} (implicit deny)")
    refs = tuple(ref for _, _, ref in allows_by_set if ref is not None)
    if maybe_deny or any(allow is Tri.UNKNOWN for _, allow, _ in allows_by_set):
        return Decision(Outcome.UNDECIDABLE, "may allow: " + "; ".join(dict.fromkeys(unknowns)), refs,
                        tuple(dict.fromkeys(unknowns)))
    return Decision(Outcome.ALLOWED, "allowed by " + " and ".join(str(r) for r in refs), refs)
