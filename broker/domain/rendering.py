"""Parameter validation and session-policy rendering.

Parameters are validated against their declared type, then substituted into the
policy *structure* (one resource string at a time) as data.  The policy JSON is
produced by ``json.dumps`` of that structure: no value is ever pasted into JSON
text.  A value that could widen the policy is refused before substitution.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.domain.templates import (PLACEHOLDER, ParameterSpec, ScopeTemplate, Statement, condition_operator,
                                     parameter_pattern)
from broker.domain.times import parse_time
from broker.errors import Forbidden, InvalidParameter, PolicyTooLarge

# STS: "The plaintext that you use for both inline and managed session policies can't exceed 2,048
# characters."  We count the minified JSON we send.
SESSION_POLICY_MAX_CHARS = 2048
POLICY_VERSION = "2012-10-17"

# NOTE: [0-9], not \d: \d matches every Unicode digit ("\u0661"), which must never reach an ARN.
ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$")
# Characters a parameter value may contain at all: those IAM ARNs use for names and paths.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.\-/+=,@]+$")

# Substrings that would widen or break a policy, with the reason shown to the caller.
# Checked by one loop; the safe-character rule above also catches most of them, this
# table names *why* a value was refused.
WIDENING_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("*", "a wildcard"),
    ("?", "a wildcard"),
    ("$", "a policy variable"),
    ("{", "a placeholder brace"),
    ("}", "a placeholder brace"),
    ('"', "a quote"),
    ("'", "a quote"),
    ("\\", "a backslash"),
    (":", "an ARN separator"),
    ("..", "path traversal"),
    ("//", "an empty path segment"),
    ("[", "a bracket"),
    ("]", "a bracket"),
)


@dataclass(frozen=True)
class RenderedPolicy:
    """The exact session policy sent to STS, and the role it is for."""

    role_arn: str
    document: dict[str, Any]
    json: str
    digest: str
    # The values bound to the caller's identity it was rendered with (broker.domain.caller_identity).
    identity: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.json)

    @property
    def size_ratio(self) -> float:
        return self.size / SESSION_POLICY_MAX_CHARS


def _reject(name: str, message: str) -> InvalidParameter:
    return InvalidParameter(f"parameter '{name}' {message}", field=f"parameters.{name}")


def _check_widening(name: str, value: str) -> None:
    if not value:
        raise _reject(name, "may not be empty")
    for needle, why in WIDENING_SUBSTRINGS:
        if needle in value:
            raise _reject(name, f"contains {why} ({needle!r}), which could widen the policy")
    if not SAFE_VALUE.fullmatch(value):
        raise _reject(name, "contains characters that are not allowed in an ARN (letters, digits and _.-/+=,@ only)")
    if value.startswith("/") and value.strip("/") == "":
        raise _reject(name, "may not be only a path separator")


def _validate_string(name: str, spec: ParameterSpec, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _reject(name, "must be a string")
    if len(raw) > spec.max_length:
        raise _reject(name, f"is longer than {spec.max_length} characters")
    _check_widening(name, raw)
    if spec.enum is not None and raw not in spec.enum:
        raise _reject(name, f"must be one of: {', '.join(spec.enum)}")
    if spec.pattern is not None and not parameter_pattern(spec.pattern).fullmatch(raw):
        raise _reject(name, f"does not match the pattern {spec.pattern}")
    return raw


def _validate_account(name: str, spec: ParameterSpec, raw: Any) -> str:
    if not isinstance(raw, str) or not ACCOUNT_ID.fullmatch(raw):
        raise _reject(name, "must be a 12-digit AWS account id")
    if spec.enum is not None and raw not in spec.enum:
        raise _reject(name, f"must be one of: {', '.join(spec.enum)}")
    return raw


def _validate_region(name: str, spec: ParameterSpec, raw: Any) -> str:
    if not isinstance(raw, str) or not REGION.fullmatch(raw):
        raise _reject(name, "must be an AWS region such as us-east-1")
    if spec.enum is not None and raw not in spec.enum:
        raise _reject(name, f"must be one of: {', '.join(spec.enum)}")
    return raw


def _validate_integer(name: str, spec: ParameterSpec, raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise _reject(name, "must be an integer")
    if isinstance(raw, str):
        if not re.fullmatch(r"-?[0-9]{1,18}", raw):
            raise _reject(name, "must be an integer")
        raw = int(raw)
    if spec.min is not None and raw < spec.min:
        raise _reject(name, f"must be at least {spec.min}")
    if spec.max is not None and raw > spec.max:
        raise _reject(name, f"must be at most {spec.max}")
    return str(raw)


VALIDATORS: dict[str, Callable[[str, ParameterSpec, Any], str]] = {
    "string": _validate_string,
    "aws_account_id": _validate_account,
    "aws_region": _validate_region,
    "integer": _validate_integer,
}


# Condition values a parameter fills are checked by what the operator compares (the widening rules above are
# about ARNs: 0.0.0.0/0 passes them).  IP networks no wider than these prefixes:
MIN_IPV4_PREFIX = 16
MIN_IPV6_PREFIX = 48


def _ip_problem(text: str) -> str | None:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return "is not an IP address or network"
    least = MIN_IPV4_PREFIX if network.version == 4 else MIN_IPV6_PREFIX
    return None if network.prefixlen >= least else f"is wider than a /{least} network"


def _date_problem(text: str) -> str | None:
    try:
        parse_time(text)
    except ValueError:
        return "is not an ISO 8601 date"
    return None


CONDITION_VALUE_CHECKS: dict[str, Callable[[str], str | None]] = {
    "IpAddress": _ip_problem,
    "NotIpAddress": _ip_problem,
    "Numeric": lambda text: None if re.fullmatch(r"-?[0-9]{1,18}(\.[0-9]{1,9})?", text) else "is not a number",
    "Date": _date_problem,
    "Bool": lambda text: None if text in ("true", "false") else "is not true or false",
}


def check_condition_values(template: ScopeTemplate, values: Mapping[str, str]) -> None:
    """Each condition value a parameter or identity value fills must be of the kind its operator compares
    (values not given yet are skipped: called once for the parameters, again with the identity values)."""
    for statement in template.statements:
        for operator, by_key in (statement.conditions or {}).items():
            base, _negated = condition_operator(operator)
            check = next((c for prefix, c in CONDITION_VALUE_CHECKS.items() if base.startswith(prefix)), None)
            if check is None:
                continue
            for raw in (v for value in by_key.values() for v in ([value] if isinstance(value, str) else value)):
                names = PLACEHOLDER.findall(raw)
                problem = check(substitute(raw, values)) if names and set(names) <= set(values) else None
                if problem:
                    if names[0] in template.identity:
                        raise Forbidden(f"identity value '{names[0]}' {problem} for this caller, as the condition "
                                        f"{operator} needs", code="identity_value_invalid",
                                        field=f"identity.{names[0]}")
                    raise _reject(names[0], f"{problem}, as the condition {operator} needs")


def validate_parameters(template: ScopeTemplate, supplied: Mapping[str, Any] | None) -> dict[str, str]:
    """Return every declared parameter's validated string value (defaults filled in)."""
    if supplied is None:
        supplied = {}
    if not isinstance(supplied, Mapping):
        raise InvalidParameter("parameters must be an object", field="parameters")
    bound = sorted(set(supplied) & set(template.identity))
    if bound:
        # NOTE: an identity value comes from who the caller is; a request naming one is refused, not ignored.
        raise InvalidParameter(f"'{bound[0]}' is bound to the caller's identity in template '{template.name}': a "
                               "request cannot set it", code="identity_value_not_settable",
                               field=f"parameters.{bound[0]}")
    unknown = sorted(set(supplied) - set(template.parameters))
    if unknown:
        raise InvalidParameter(f"unknown parameter '{unknown[0]}' for template '{template.name}'",
                               field=f"parameters.{unknown[0]}")
    values: dict[str, str] = {}
    for name, spec in template.parameters.items():
        raw = supplied.get(name, spec.default)
        if raw is None:
            raise InvalidParameter(f"parameter '{name}' is required", code="missing_parameter",
                                   field=f"parameters.{name}")
        values[name] = VALIDATORS[spec.type](name, spec, raw)
    check_condition_values(template, values)
    return values


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}`` placeholders in one string with already-validated values."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def _render_statement(index: int, statement: Statement, values: Mapping[str, str]) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "Sid": statement.sid or f"S{index}",
        "Effect": "Allow",
        "Action": sorted(dict.fromkeys(statement.actions)),
        "Resource": [substitute(resource, values) for resource in dict.fromkeys(statement.resources)],
    }
    if statement.conditions:
        rendered["Condition"] = {
            operator: {
                key: substitute(value, values) if isinstance(value, str) else [substitute(v, values) for v in value]
                for key, value in by_key.items()
            }
            for operator, by_key in statement.conditions.items()
        }
    return rendered


def render_policy(template: ScopeTemplate, values: Mapping[str, str]) -> RenderedPolicy:
    """Render the session policy for validated ``values`` (see :func:`validate_parameters`), with the template's
    identity values among them (:func:`broker.domain.caller_identity.resolve_identity`)."""
    missing = [name for name in template.placeholders() if name not in values]
    if missing:
        missing.sort()
        raise InvalidParameter(f"no value for '{missing[0]}' of template '{template.name}'"
                               + (" (bound to the caller's identity: give the caller)"
                                  if missing[0] in template.identity else ""),
                               code="missing_parameter", field=f"parameters.{missing[0]}")
    document = {
        "Version": POLICY_VERSION,
        "Statement": [_render_statement(i, s, values) for i, s in enumerate(template.statements)],
    }
    text = json.dumps(document, separators=(",", ":"), sort_keys=False, ensure_ascii=True)
    if len(text) > SESSION_POLICY_MAX_CHARS:
        raise PolicyTooLarge(
            f"template '{template.name}' renders a session policy of {len(text)} characters; "
            f"STS accepts at most {SESSION_POLICY_MAX_CHARS}", field="statements",
            details={"size": len(text), "limit": SESSION_POLICY_MAX_CHARS})
    return RenderedPolicy(
        role_arn=substitute(template.role, values),
        document=document,
        json=text,
        digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        identity={name: values[name] for name in template.identity if name in values},
    )
