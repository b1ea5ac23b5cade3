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

Not modelled (say so rather than guess): resource-based policies, SCPs/RCPs, cross-account
requests.  References: AWS IAM User Guide, "Policy evaluation logic", "Condition operators",
"Conditions with multiple context keys or values", "Policy variables".
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
from enum import Enum, StrEnum
from typing import Any


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
    context: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()
    context_complete: bool = False

    def value(self, key: str) -> tuple[str, ...] | None | _Unknown:
        """The key's values; ``None`` when known absent; ``UNKNOWN_VALUE`` when not known."""
        wanted = key.lower()
        for name, raw in self.context.items():
            if name.lower() == wanted:
                return (raw,) if isinstance(raw, str) else tuple(raw)
        if self.context_complete or wanted in {a.lower() for a in self.absent}:
            return None
        return UNKNOWN_VALUE


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN_VALUE"


UNKNOWN_VALUE = _Unknown()


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
def _glob_regex(pattern: str, *, ignore_case: bool = False, cross: str = "") -> re.Pattern[str]:
    """``*`` any run and ``?`` one character; neither may match a character in ``cross``."""
    any_char = f"[^{re.escape(cross)}]" if cross else "."
    body = "".join(f"{any_char}*" if c == "*" else any_char if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def action_matches(pattern: str, action: str) -> bool:
    """IAM action matching: case-insensitive, ``*``/``?`` wildcards."""
    return bool(_glob_regex(pattern, ignore_case=True).fullmatch(action))


def arn_matches(pattern: str, arn: str) -> bool:
    """ARN matching, segment-aware: a wildcard in partition/service/region/account stays inside
    its segment; in the resource part (after the fifth colon) ``*`` spans ``/`` and ``:``.
    ARNs are case-sensitive."""
    if pattern == "*":
        return True
    if not pattern.startswith("arn:"):
        return bool(_glob_regex(pattern).fullmatch(arn))
    p_parts, a_parts = pattern.split(":", 5), arn.split(":", 5)
    if len(p_parts) != 6 or len(a_parts) != 6:
        # An ARN pattern needs all six segments; a wildcard never stands in for a missing one.
        return False
    head = all(_glob_regex(p, cross=":").fullmatch(a) for p, a in zip(p_parts[:5], a_parts[:5], strict=True))
    return head and bool(_glob_regex(p_parts[5]).fullmatch(a_parts[5]))


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_SPECIAL = {"*": "*", "?": "?", "$": "$"}


def substitute_variables(text: str, request: AccessRequest, *, literal_wildcards: bool) -> tuple[str, Tri]:
    """Replace ``${aws:username}`` etc. from the request context.

    Returns the text and whether that was possible: FALSE when a variable's key is known to be
    absent (AWS then treats the element as not matching), UNKNOWN when the key is not supplied.
    ``${*}``, ``${?}``, ``${$}`` stand for the literal characters; ``${key, 'default'}`` supplies a
    default.  When ``literal_wildcards`` the substituted values are escaped so that a ``*`` in
    a *value* is not a wildcard (the returned text then uses ``\\x00`` markers; see callers).
    """
    state = Tri.TRUE
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
        if isinstance(value, _Unknown):
            state = state & Tri.UNKNOWN
            out.append("")
            continue
        if value is None or len(value) != 1:
            if default is None:
                state = state & Tri.FALSE
                out.append("")
                continue
            value = (default,)
        text_value = value[0]
        out.append("".join(_LITERAL_MARK + c if c in "*?" else c for c in text_value) if literal_wildcards
                   else text_value)
    out.append(text[last:])
    return "".join(out), state


_LITERAL_MARK = "\x00"


def _pattern_match(pattern: str, value: str, *, ignore_case: bool = False, arn: bool = False) -> bool:
    """Wildcard match where ``\\x00c`` means the literal character c."""
    if _LITERAL_MARK not in pattern:
        return arn_matches(pattern, value) if arn else bool(_glob_regex(pattern, ignore_case=ignore_case)
                                                             .fullmatch(value))
    # Rare path: literal * or ? from a variable or ${*}.  Build the regex by hand (segment rules
    # for ARNs are approximated by treating the whole ARN as one segment here).
    body, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == _LITERAL_MARK and i + 1 < len(pattern):
            body.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        body.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return bool(re.fullmatch("".join(body), value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)))


# ---------------------------------------------------------------------------------------------
# Condition operators: a table of name -> comparison, run by one loop.

Compare = Callable[[str, str, AccessRequest], Tri]


def _string(transform: Callable[[str], str] = lambda s: s) -> Compare:
    def compare(policy: str, actual: str, request: AccessRequest) -> Tri:
        expected, ok = substitute_variables(policy, request, literal_wildcards=False)
        if ok is not Tri.TRUE:
            return ok
        return Tri.of(transform(expected) == transform(actual))
    return compare


def _like(*, arn: bool) -> Compare:
    def compare(policy: str, actual: str, request: AccessRequest) -> Tri:
        expected, ok = substitute_variables(policy, request, literal_wildcards=True)
        if ok is not Tri.TRUE:
            return ok
        return Tri.of(_pattern_match(expected, actual, arn=arn))
    return compare


def _numeric(op: Callable[[float, float], bool]) -> Compare:
    def compare(policy: str, actual: str, request: AccessRequest) -> Tri:  # noqa: ARG001
        try:
            return Tri.of(op(float(actual), float(policy)))
        except ValueError:
            return Tri.UNKNOWN
    return compare


def parse_date(text: str) -> datetime:
    """ISO 8601 (``2024-01-01T00:00:00Z``, a date, or with an offset) or epoch seconds."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), tz=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _date(op: Callable[[datetime, datetime], bool]) -> Compare:
    def compare(policy: str, actual: str, request: AccessRequest) -> Tri:  # noqa: ARG001
        try:
            return Tri.of(op(parse_date(actual), parse_date(policy)))
        except (ValueError, OverflowError, OSError):
            return Tri.UNKNOWN
    return compare


def _bool(policy: str, actual: str, request: AccessRequest) -> Tri:  # noqa: ARG001
    if policy.lower() not in {"true", "false"}:
        return Tri.UNKNOWN
    return Tri.of(policy.lower() == actual.lower())


def _binary(policy: str, actual: str, request: AccessRequest) -> Tri:  # noqa: ARG001
    try:
        return Tri.of(base64.b64decode(policy, validate=True) == base64.b64decode(actual, validate=True))
    except (binascii.Error, ValueError):
        return Tri.UNKNOWN


def _ip(policy: str, actual: str, request: AccessRequest) -> Tri:  # noqa: ARG001
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
    "StringEqualsIgnoreCase": Operator(_string(str.lower)),
    "StringNotEqualsIgnoreCase": Operator(_string(str.lower), negated=True),
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


def _values(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    return tuple(str(item).lower() if isinstance(item, bool) else str(item) for item in items)


def _single_value(op: Operator, expected: tuple[str, ...], actual: str, request: AccessRequest) -> Tri:
    """One request value against the policy's values: OR for positive operators, NOR for negated."""
    hit = any_of(op.compare(value, actual, request) for value in expected)
    return ~hit if op.negated else hit


def evaluate_condition(operator_name: str, key: str, raw_expected: Any, request: AccessRequest) -> tuple[Tri, str]:
    """One operator/key pair.  Returns the truth value and, if UNKNOWN, why."""
    qualifier, _, name = operator_name.rpartition(":")
    if qualifier and qualifier not in SET_QUALIFIERS:
        return Tri.UNKNOWN, f"unknown set qualifier {qualifier!r}"
    expected = _values(raw_expected)
    if name == "Null":
        actual = request.value(key)
        if isinstance(actual, _Unknown):
            return Tri.UNKNOWN, f"condition key {key} is not in the request context"
        if any(v.lower() not in {"true", "false"} for v in expected):
            return Tri.UNKNOWN, "Null takes true or false"
        is_absent = actual is None or len(actual) == 0
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
        return all_of(_single_value(op, expected, a, request) for a in actual), _why_unknown(expected, request)
    if qualifier == "ForAnyValue":
        return any_of(_single_value(op, expected, a, request) for a in actual), _why_unknown(expected, request)
    if len(actual) != 1:
        return Tri.UNKNOWN, f"condition key {key} has several values; use ForAnyValue/ForAllValues"
    return _single_value(op, expected, actual[0], request), _why_unknown(expected, request)


def _why_unknown(expected: tuple[str, ...], request: AccessRequest) -> str:
    for value in expected:
        _, ok = substitute_variables(value, request, literal_wildcards=False)
        if ok is Tri.UNKNOWN:
            return f"a policy variable in {value!r} is not in the request context"
    return "a condition value could not be compared"


# ---------------------------------------------------------------------------------------------
# Statements and the decision

def _listify(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class _Match:
    truth: Tri
    unknowns: tuple[str, ...] = ()


def _resource_match(patterns: list[str], request: AccessRequest) -> _Match:
    results, unknowns = [], []
    for pattern in patterns:
        text, ok = substitute_variables(pattern, request, literal_wildcards=True)
        if ok is Tri.FALSE:
            results.append(Tri.FALSE)
            continue
        if ok is Tri.UNKNOWN:
            unknowns.append(f"a policy variable in resource {pattern!r} is not in the request context")
            results.append(Tri.UNKNOWN)
            continue
        results.append(Tri.of(_pattern_match(text, request.resource, arn=True)))
    return _Match(any_of(results), tuple(unknowns))


def statement_matches(statement: Mapping[str, Any], request: AccessRequest) -> _Match:
    """Does one statement apply to the request (ignoring its Effect)?"""
    unknowns: list[str] = []
    if "Action" in statement:
        action = Tri.of(any(action_matches(p, request.action) for p in _listify(statement["Action"])))
    elif "NotAction" in statement:
        action = Tri.of(not any(action_matches(p, request.action) for p in _listify(statement["NotAction"])))
    else:
        return _Match(Tri.UNKNOWN, ("a statement has neither Action nor NotAction",))
    if action is Tri.FALSE:
        return _Match(Tri.FALSE)
    if "Resource" in statement:
        resource = _resource_match(_listify(statement["Resource"]), request)
    elif "NotResource" in statement:
        inner = _resource_match(_listify(statement["NotResource"]), request)
        resource = _Match(~inner.truth, inner.unknowns)
    else:
        return _Match(Tri.UNKNOWN, ("a statement has neither Resource nor NotResource",))
    unknowns.extend(resource.unknowns)
    if resource.truth is Tri.FALSE:
        return _Match(Tri.FALSE)
    condition = Tri.TRUE
    for operator_name, by_key in (statement.get("Condition") or {}).items():
        if not isinstance(by_key, Mapping):
            condition = condition & Tri.UNKNOWN
            unknowns.append(f"condition {operator_name} is malformed")
            continue
        for key, expected in by_key.items():
            truth, why = evaluate_condition(operator_name, key, expected, request)
            if truth is Tri.UNKNOWN:
                unknowns.append(why)
            condition = condition & truth
    truth = action & resource.truth & condition
    return _Match(truth, tuple(unknowns) if truth is Tri.UNKNOWN else ())


def _statements(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = document.get("Statement", [])
    return [raw] if isinstance(raw, Mapping) else list(raw)


def evaluate(policies: Sequence[PolicySet], request: AccessRequest) -> Decision:
    """Decide one request against the policy sets that apply to a session (see module doc)."""
    if not policies:
        # NOTE: fail closed: with no policy at all AWS denies; we never answer "allowed" for nothing.
        return Decision(Outcome.DENIED, "no policy applies, so nothing is allowed (implicit deny)")
    unknowns: list[str] = []
    maybe_deny = False
    allows_by_set: list[tuple[PolicySet, Tri, StatementRef | None]] = []
    for policy_set in policies:
        set_allow, allow_ref = Tri.FALSE, None
        for d_index, document in enumerate(policy_set.documents):
            for s_index, statement in enumerate(_statements(document)):
                effect = str(statement.get("Effect", ""))
                ref = StatementRef(policy_set.name or policy_set.kind.value, d_index, s_index,
                                   statement.get("Sid"), effect)
                match = statement_matches(statement, request)
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
                    maybe_deny = True
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
