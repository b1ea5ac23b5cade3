"""Scope templates: the engineers' interface, validated with pydantic.

A template names one role, the actions it may use on which resources, typed
parameters that fill ``{placeholders}`` in the role ARN, resources and condition
values, TTL limits, who may request it and what approval it needs.

The on-disk format (YAML, one template a file) is a contract: keep the keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker.domain.documents import DuplicateKey, ReviewedYamlLoader
from broker.errors import TemplateError

# STS limits that templates must respect (the broker checks them itself: moto does not).
STS_MIN_DURATION = 900
STS_MAX_DURATION = 43200
DEFAULT_ROLE_MAX_SESSION = 3600

# `{name}` placeholders; `${aws:...}` IAM policy variables are left alone.
PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


# A parameter pattern is matched by RE2 (google-re2): time linear in the value whatever the pattern, so no
# template can make matching backtrack (``^([a-z0-9]+-?)+$`` on 28 characters stalled Python's ``re``).
# RE2 runs the regular part of Python's syntax; what it cannot run (backreferences, lookarounds, ``\Z``)
# is refused when the template loads.  Values reaching a pattern are ASCII IAM name characters (the
# renderer refuses others first), where RE2's and Python's classes (``\d``, ``\w``) agree.
PATTERN_MAX_MEMORY = 8 << 20  # bytes RE2 may use to compile one pattern: a huge pattern is refused


@lru_cache(maxsize=512)
def parameter_pattern(text: str) -> Any:
    """``text`` compiled by RE2 (cached); raises ``ValueError`` saying why RE2 cannot run it."""
    options = re2.Options()
    options.log_errors = False  # the reason is raised, not printed on stderr
    options.max_mem = PATTERN_MAX_MEMORY
    try:
        return re2.compile(text, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"pattern cannot be matched in linear time (RE2: {reason}); backreferences, "
                         "lookarounds and \\Z are not supported") from exc


def _capability_names() -> tuple[str, ...]:
    from broker.domain.risk import CAPABILITIES

    return tuple(CAPABILITIES)


def condition_operator(operator: str) -> tuple[str, bool]:
    """An IAM condition operator's base name (no ``ForAllValues:``/``ForAnyValue:``, no ``IfExists``) and
    whether it is negated (``NotIpAddress``, ``StringNotEquals``, ...)."""
    base = operator.split(":", 1)[1] if ":" in operator else operator
    base = base.removesuffix("IfExists")
    return base, "Not" in base


class Environment(StrEnum):
    DEV = "dev"
    STAGING = "staging"
    PRODUCTION = "production"


def _checked_pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from exc
        parameter_pattern(value)  # and RE2 runs it (full match, as with re.fullmatch)
    return value


def _checked_enum(value: list[str] | None) -> list[str] | None:
    if value is not None and not value:
        raise ValueError("enum must list at least one value")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class ParameterSpec(_Strict):
    """One typed parameter.  Required unless it has a default."""

    type: Literal["string", "aws_account_id", "aws_region", "integer"]
    description: str | None = None
    default: str | int | None = None
    pattern: str | None = None
    enum: list[str] | None = None
    max_length: Annotated[int, Field(ge=1, le=1024)] = 128
    min: int | None = None
    max: int | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        return _checked_pattern(value)

    @field_validator("enum")
    @classmethod
    def _enum_not_empty(cls, value: list[str] | None) -> list[str] | None:
        return _checked_enum(value)

    @model_validator(mode="after")
    def _options_fit_type(self) -> "ParameterSpec":
        if self.type != "integer" and (self.min is not None or self.max is not None):
            raise ValueError("min/max apply to integer parameters only")
        if self.type == "integer" and (self.pattern or self.enum):
            raise ValueError("pattern/enum apply to string parameters only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def is_fixed_list(self) -> bool:
        """An agent can only pick from values the template author wrote down."""
        return self.enum is not None


# Where an identity-bound value comes from: the authenticated caller, never the request (README: *Values bound
# to the caller's identity*).  ``claim:NAME`` reads the caller's verified OIDC token (``claim:a/b`` a nested
# claim: ``kubernetes.io/namespace``), ``attribute:NAME`` its directory entry.
IDENTITY_SOURCE = re.compile(r"^(?:principal|human|(?:claim|attribute):[A-Za-z0-9_.-]{1,64}(?:/[A-Za-z0-9_.-]{1,64}){0,3})$")
SESSION_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/=+\-@]{1,128}$")


class IdentitySessionTag(_Strict):
    """A session tag whose value is the caller's identity value (for ``aws:PrincipalTag/KEY`` conditions)."""

    key: str
    # NOTE: no default: whether the tag survives role chaining is a decision the author writes down.
    transitive: bool = Field(description="true: the tag passes on to roles the session assumes (role chaining); "
                                         "required, so that it is decided on purpose")

    @field_validator("key")
    @classmethod
    def _key_shape(cls, key: str) -> str:
        if not SESSION_TAG_KEY.fullmatch(key) or key.lower().startswith("aws:"):
            raise ValueError("a session tag key is 1..128 of letters, digits and _.:/=+-@, not starting with aws:")
        return key


class IdentityValueSpec(_Strict):
    """A value bound to the caller's identity: filled from who the caller is, never from the request."""

    source: str | list[str] = Field(description="principal (the principal id without its kind: agent:NAME -> "
                                                "NAME), human (the accountable human: human:NAME -> NAME), "
                                                "claim:NAME (the OIDC token's claim) or attribute:NAME (the "
                                                "directory entry's attribute); a list: every one the caller has "
                                                "must agree")
    description: str | None = None
    pattern: str | None = None
    enum: list[str] | None = None
    # The caller's value -> the value used (e.g. a team -> its account id); a value not listed is refused.
    map: dict[str, str] | None = None
    max_length: Annotated[int, Field(ge=1, le=256)] = 64
    session_tag: IdentitySessionTag | None = None

    @field_validator("source")
    @classmethod
    def _source_shape(cls, source: str | list[str]) -> str | list[str]:
        sources = [source] if isinstance(source, str) else source
        if not sources:
            raise ValueError("source must name at least one place the value comes from")
        for one in sources:
            if not IDENTITY_SOURCE.fullmatch(one):
                raise ValueError(f"source {one!r} is not principal, human, claim:NAME or attribute:NAME")
        if len(set(sources)) != len(sources):
            raise ValueError("source lists a place twice")
        return source

    @field_validator("pattern")
    @classmethod
    def _pattern_runs(cls, value: str | None) -> str | None:
        return _checked_pattern(value)

    @field_validator("enum")
    @classmethod
    def _enum_listed(cls, value: list[str] | None) -> list[str] | None:
        return _checked_enum(value)

    @field_validator("map")
    @classmethod
    def _map_listed(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and not value:
            raise ValueError("map must list at least one value")
        return value

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    @property
    def is_fixed_list(self) -> bool:
        """Only values the template author wrote down can come out (a map's values, or an enum)."""
        return self.enum is not None or self.map is not None

    def choices(self) -> list[str] | None:
        """The values this can render as, when they are a fixed list."""
        if self.map is not None:
            return list(dict.fromkeys(self.map.values()))
        return list(self.enum) if self.enum is not None else None

    def words(self, name: str) -> str:
        """``the caller's own workspace (claim workspace)``: what an approver reads for the placeholder."""
        places = " or ".join(s.replace(":", " ", 1) for s in self.sources)
        return f"the caller's own {name} ({places})"


class Statement(_Strict):
    """One Allow statement.  There is no Deny, NotAction or NotResource in templates."""

    sid: str | None = None
    effect: Literal["Allow"] = "Allow"
    actions: list[str] = Field(min_length=1)
    resources: list[str] = Field(min_length=1)
    conditions: dict[str, dict[str, str | list[str]]] | None = None

    @field_validator("actions")
    @classmethod
    def _action_shape(cls, actions: list[str]) -> list[str]:
        for action in actions:
            if action != "*" and not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9*?]+", action):
                raise ValueError(f"action {action!r} is not of the form service:Action")
        return actions

    @field_validator("resources")
    @classmethod
    def _resource_not_empty(cls, resources: list[str]) -> list[str]:
        for resource in resources:
            if not resource:
                raise ValueError("a resource may not be empty")
        return resources


class TtlRule(_Strict):
    default: int = 900
    max: int = 3600

    @model_validator(mode="after")
    def _bounds(self) -> "TtlRule":
        if not STS_MIN_DURATION <= self.default <= self.max <= STS_MAX_DURATION:
            raise ValueError(
                f"ttl must satisfy {STS_MIN_DURATION} <= default <= max <= {STS_MAX_DURATION} (STS's bounds)")
        return self


class ApprovalRule(_Strict):
    approvals: Annotated[int, Field(ge=0, le=10)] = 0
    approvers: list[str] = Field(default_factory=list)
    expires_after: Annotated[int, Field(ge=60, le=7 * 86400)] = 1800
    # How long an approved request may wait to be redeemed.
    redeem_within: Annotated[int, Field(ge=60, le=86400)] = 900
    # A production template may ask for a single approver only if it is read-only and says so here
    # (the guardrails check that every action it grants is List or Read and carries no risk class).
    read_only_single_approver: bool = False

    @model_validator(mode="after")
    def _approvers_for_approvals(self) -> "ApprovalRule":
        if self.approvals > 0 and not self.approvers:
            raise ValueError("an approval rule that needs approvals must name who may approve")
        return self


# Template keys added later, left out of the canonical form while empty (see ScopeTemplate.canonical).
LATER_KEYS = ("identity",)


class ScopeTemplate(_Strict):
    name: str
    description: str
    environment: Environment
    role: str
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    statements: list[Statement] = Field(min_length=1)
    ttl: TtlRule = Field(default_factory=TtlRule)
    requesters: list[str] = Field(min_length=1)
    approval: ApprovalRule = Field(default_factory=ApprovalRule)
    # Every risk class the actions carry must be declared (guardrails check it; broker.domain.risk).
    destructive: bool = Field(False, description="declares the destructive risk class (as capabilities: "
                                                 "[destructive] does)")
    capabilities: list[str] = Field(
        default_factory=list,
        description="one entry per risk class the template's actions carry (see README: Risk classes); "
                    "an undeclared class, or an unknown entry, stops the template from loading",
        json_schema_extra={"items": {"type": "string", "enum": list(_capability_names())}})
    # The target role's MaxSessionDuration; a TTL above it would fail at STS.
    role_max_session: Annotated[int, Field(ge=STS_MIN_DURATION, le=STS_MAX_DURATION)] = DEFAULT_ROLE_MAX_SESSION
    # Extra session tags (fixed values) added to every session minted for this template.
    session_tags: dict[str, str] = Field(default_factory=dict)
    # Values bound to the caller's identity: {name} placeholders like parameters, filled from who the caller is.
    identity: dict[str, IdentityValueSpec] = Field(
        default_factory=dict,
        description="values bound to the caller's identity (README: Values bound to the caller's identity); "
                    "{name} placeholders like parameters, which the request can never set")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        if not TEMPLATE_NAME.fullmatch(name):
            raise ValueError("name must be lowercase letters, digits and '-', at most 63 characters")
        return name

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, parameters: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        for name in parameters:
            if not PARAMETER_NAME.fullmatch(name):
                raise ValueError(f"parameter name {name!r} is not an identifier")
        return parameters

    @field_validator("identity")
    @classmethod
    def _identity_names(cls, identity: dict[str, IdentityValueSpec]) -> dict[str, IdentityValueSpec]:
        for name in identity:
            if not PARAMETER_NAME.fullmatch(name):
                raise ValueError(f"identity value name {name!r} is not an identifier")
        return identity

    @model_validator(mode="after")
    def _placeholders_declared(self) -> "ScopeTemplate":
        both = sorted(set(self.parameters) & set(self.identity))
        if both:
            raise ValueError(f"{both[0]!r} is both a parameter and an identity value")
        used = self.placeholders()
        undeclared = sorted(used - set(self.parameters) - set(self.identity))
        if undeclared:
            raise ValueError(f"placeholders with no parameter: {', '.join(undeclared)}")
        if self.ttl.max > self.role_max_session:
            raise ValueError(
                f"ttl.max {self.ttl.max} exceeds the role's maximum session duration {self.role_max_session}")
        if not self.role.startswith("arn:"):
            raise ValueError("role must be an IAM role ARN")
        for statement in self.statements:
            for operator, by_key in (statement.conditions or {}).items():
                if not condition_operator(operator)[1]:
                    continue
                # NOTE: whatever the agent puts in a negated condition can only make the Allow apply more widely.
                free = sorted(name for name in PLACEHOLDER.findall(" ".join(_condition_strings({operator: by_key})))
                              if not self.value_spec(name).is_fixed_list)
                if free:
                    raise ValueError(f"parameter {free[0]!r} is used in the negated condition {operator}: only a "
                                     "fixed-list (enum) parameter may be, as any other value could widen the statement")
        return self

    def placeholders(self) -> set[str]:
        return set(self._placeholder_names)

    @cached_property
    def _placeholder_names(self) -> frozenset[str]:
        """Every ``{name}`` of the role, resources and condition values, found once per template (rendering asks)."""
        found = set(PLACEHOLDER.findall(self.role))
        for statement in self.statements:
            for text in (*statement.resources, *_condition_strings(statement.conditions)):
                found.update(PLACEHOLDER.findall(text))
        return frozenset(found)

    def role_parameters(self) -> set[str]:
        """The placeholders of the role ARN (parameters or identity values)."""
        return set(PLACEHOLDER.findall(self.role))

    def value_spec(self, name: str) -> "ParameterSpec | IdentityValueSpec":
        """The declaration of a placeholder: a parameter's or an identity value's."""
        return self.parameters[name] if name in self.parameters else self.identity[name]

    def role_choices(self, name: str) -> list[str] | None:
        """The values a role placeholder can take when they are a fixed list (an enum, an identity map)."""
        spec = self.parameters.get(name) or self.identity.get(name)
        if spec is None:
            return None
        return spec.choices() if isinstance(spec, IdentityValueSpec) else (list(spec.enum) if spec.enum else None)

    @property
    def needs_approval(self) -> bool:
        return self.approval.approvals > 0

    def canonical(self) -> bytes:
        """Canonical form: sorted-key, minified JSON of the validated model.  Keys added after a template
        format was in use (``identity``) are left out while empty, so every earlier template keeps its
        version digest (and its owners' signatures)."""
        data = self.model_dump(mode="json")
        for key in LATER_KEYS:
            if not data.get(key):
                data.pop(key, None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @cached_property
    def version_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()


def _condition_strings(conditions: dict[str, dict[str, str | list[str]]] | None) -> list[str]:
    out: list[str] = []
    for by_key in (conditions or {}).values():
        for value in by_key.values():
            out.extend([value] if isinstance(value, str) else value)
    return out


_YAML_LOADER = ReviewedYamlLoader


def parse_template(text: str, *, source: str) -> ScopeTemplate:
    """Parse one template's YAML text; errors name the source and the field."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader (libyaml's when present)
    except DuplicateKey as exc:
        raise TemplateError(f"{source}: {exc.problem}", code="template_invalid",
                            details={"source": source}) from exc
    except yaml.YAMLError as exc:
        raise TemplateError(f"{source}: not valid YAML ({exc.__class__.__name__})", code="template_unreadable",
                            details={"source": source}) from exc
    if not isinstance(data, dict):
        raise TemplateError(f"{source}: a template must be a YAML mapping", code="template_unreadable",
                            details={"source": source})
    return template_from_mapping(data, source=source)


def template_from_mapping(data: dict[str, Any], *, source: str) -> ScopeTemplate:
    try:
        return ScopeTemplate.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(template)"
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(template)", "message": err["msg"]}
            for err in exc.errors()
        ]
        raise TemplateError(f"{source}: {field}: {first['msg']}", field=field,
                            details={"source": source, "problems": problems}) from exc


def template_json_schema() -> dict[str, Any]:
    return ScopeTemplate.model_json_schema()
