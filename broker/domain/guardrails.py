"""Guardrails: the checks that make a dangerous scope template hard to write and impossible to
use silently.

They run when the catalog loads templates (:func:`check_template`), in ``broker scopes lint``,
and again on every rendered session policy before minting (:func:`check_rendered`).  Every
rule is a row of data with a code and a reason, run by one generic loop; an empty rule table
is an error, not a pass.

Declaring risk: every class of the risk taxonomy (:mod:`broker.domain.risk`) that a template's
actions carry, wildcards expanded, must be declared with that class's capability
(``capabilities: [code-execution]``; ``destructive: true`` still declares ``destructive``), and
the template must ask for at least as many co-signers as the class needs.  Production templates
need two approvals, or one if every action is List/Read, none carries a risk class (no secret values,
no credentials) and ``approval.read_only_single_approver: true`` says so.  Given the accounts configuration (:mod:`broker.domain.accounts`), the role's
account must be named and be the template's environment.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.domain.accounts import DEFAULT_TARGET_ROLE_PREFIX, TargetAccounts
from broker.domain.actions import ActionInfo, ActionKnowledge, Risk
from broker.domain.caller_identity import IDENTITY_VALUE
from broker.domain.risk import BY_RISK, CAPABILITIES, ordered, risk_of
from broker.domain.self_scope import statement_confined_by
from broker.domain.sts_rules import MAX_SESSION_TAGS, RESERVED_TAGS
from broker.domain.evaluator import OPERATORS, SET_QUALIFIERS, arn_matches
from broker.domain.rendering import SESSION_POLICY_MAX_CHARS, RenderedPolicy, render_policy
from broker.domain.templates import PLACEHOLDER, Environment, ScopeTemplate
from broker.errors import PolicyTooLarge, TemplateError

Severity = Literal["error", "warning"]

# Roles the broker may hand out start with this name (the broker's own role never does); the
# accounts configuration may name another (BROKER_TARGET_ROLE_PREFIX).
TARGET_ROLE_PREFIX = DEFAULT_TARGET_ROLE_PREFIX
# Warn when a policy uses this share of STS's size limit.
SIZE_WARNING_RATIO = 0.9
PRODUCTION_MIN_APPROVALS = 2

# Role ARNs a template can reach (the product of its role parameters' enums) checked one by one.
MAX_ROLE_CHOICES = 256


@dataclass(frozen=True)
class Finding:
    """One problem with a template or a rendered policy."""

    code: str
    severity: Severity
    field: str
    message: str
    template: str | None = None
    source: str | None = None

    @property
    def blocking(self) -> bool:
        return self.severity == "error"

    def located(self, *, template: str | None = None, source: str | None = None) -> "Finding":
        return Finding(self.code, self.severity, self.field, self.message,
                       template if template is not None else self.template,
                       source if source is not None else self.source)

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.template and f"template '{self.template}'",
                                            self.field) if part)
        return f"{where}: {self.severity} [{self.code}] {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "field": self.field, "message": self.message,
                "template": self.template, "source": self.source}


# ---------------------------------------------------------------------------------------------
# A uniform view of statements, so that the same rules run on templates and rendered policies.

@dataclass(frozen=True)
class StatementView:
    field: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: Mapping[str, Mapping[str, Any]]
    not_elements: tuple[str, ...] = ()          # NotAction / NotResource present (rendered input only)
    unknown_elements: tuple[str, ...] = ()      # keys IAM's grammar does not have ("action", "Actions"; rendered only)
    granted: tuple[ActionInfo, ...] = ()        # every action the patterns expand to
    # NotAction, or a pattern with a wildcard service ("*", "*:Update*"): it grants what the database
    # cannot list here, so it counts as granting every risk class (fail closed).
    grants_everything: bool = False

    def grants(self, names: Iterable[str]) -> tuple[ActionInfo, ...]:
        wanted = set(names)
        return tuple(info for info in self.granted if info.lower in wanted)

    def condition_keys(self) -> set[str]:
        return {key.lower() for by_key in self.conditions.values() for key in by_key}


@dataclass
class Subject:
    """What the rules look at: the template, its statements, and the action knowledge."""

    template: ScopeTemplate
    statements: list[StatementView]
    actions: ActionKnowledge
    rendered: RenderedPolicy | None = None
    accounts: TargetAccounts | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def role_prefix(self) -> str:
        return self.accounts.role_prefix if self.accounts is not None else TARGET_ROLE_PREFIX

    def add(self, code: str, field_: str, message: str, severity: Severity = "error") -> None:
        self.findings.append(Finding(code, severity, field_, message, template=self.template.name))

    def all_granted(self) -> dict[str, ActionInfo]:
        return {info.lower: info for s in self.statements for info in s.granted}


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _any_service(patterns: Iterable[str]) -> bool:
    return any(p.strip("*?") == "" or any(c in p.partition(":")[0] for c in "*?") for p in patterns)


def _expand(actions: ActionKnowledge, patterns: Iterable[str]) -> tuple[ActionInfo, ...]:
    found: dict[str, ActionInfo] = {}
    for pattern in patterns:
        infos = actions.expand(pattern) if any(c in pattern for c in "*?") else (
            (actions.lookup(pattern),) if actions.lookup(pattern) else ())
        for info in infos:
            found[info.lower] = info
    return tuple(found.values())


def _template_views(template: ScopeTemplate, actions: ActionKnowledge) -> list[StatementView]:
    return [
        StatementView(field=f"statements[{i}]", effect=s.effect, actions=tuple(s.actions),
                      resources=tuple(s.resources), conditions=s.conditions or {},
                      granted=_expand(actions, s.actions), grants_everything=_any_service(s.actions))
        for i, s in enumerate(template.statements)
    ]


# The elements of an IAM policy statement (AWS's policy grammar); element names are case-sensitive.
STATEMENT_ELEMENTS = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition",
                                "Principal", "NotPrincipal"})


def _rendered_views(rendered: RenderedPolicy, actions: ActionKnowledge) -> list[StatementView]:
    raw = rendered.document.get("Statement", [])
    statements = [raw] if isinstance(raw, Mapping) else list(raw)
    views = []
    for i, s in enumerate(statements):
        not_elements = tuple(k for k in ("NotAction", "NotResource", "NotPrincipal", "Principal") if k in s)
        acts = _as_list(s.get("Action"))
        unknown = tuple(str(k) for k in s if k not in STATEMENT_ELEMENTS)
        views.append(StatementView(field=f"policy.Statement[{i}]", effect=str(s.get("Effect", "")),
                                   actions=acts, resources=_as_list(s.get("Resource")),
                                   conditions=s.get("Condition") or {}, not_elements=not_elements,
                                   unknown_elements=unknown,
                                   granted=_expand(actions, acts),
                                   grants_everything="NotAction" in s or _any_service(acts)))
    return views


# ---------------------------------------------------------------------------------------------
# Statement rules

def _rule_shape(subject: Subject) -> None:
    """Allow statements only; no NotAction/NotResource; at least one action and resource."""
    for s in subject.statements:
        if s.effect != "Allow":
            subject.add("effect_not_allow", f"{s.field}.Effect", f"only Allow statements are permitted, not {s.effect!r}")
        for element in s.unknown_elements:
            # NOTE: fail closed: what the checks cannot read, they cannot vouch for (and STS refuses it).
            subject.add("statement_element_unknown", f"{s.field}.{element}",
                        f"{element!r} is not an element of an IAM policy statement")
        for element in s.not_elements:
            subject.add("not_element", f"{s.field}.{element}",
                        f"{element} grants everything except what it names; list what is granted instead")
        if not s.actions:
            subject.add("no_actions", f"{s.field}.actions", "a statement must list at least one action")
        if not s.resources:
            subject.add("no_resources", f"{s.field}.resources", "a statement must list at least one resource")


def _rule_actions(subject: Subject) -> None:
    """No '*' action, no 'service:*'; every action and pattern names something AWS documents."""
    for s in subject.statements:
        for j, action in enumerate(s.actions):
            where = f"{s.field}.actions[{j}]"
            service, _, name = action.partition(":")
            if action.strip("*?") == "" or any(c in service for c in "*?"):
                subject.add("action_star", where, f"{action!r} grants every action of every service")
            elif name.strip("*?") == "":
                subject.add("service_star", where, f"{action!r} grants every {service} action; list the ones needed")
            elif not subject.actions.has_service(service):
                subject.add("unknown_service", where, f"{service!r} is not a known AWS service prefix "
                                                      f"({subject.actions.source})")
            elif not (subject.actions.expand(action) if any(c in name for c in "*?")
                      else subject.actions.lookup(action)):
                subject.add("unknown_action", where, f"{action!r} matches no documented {service} action "
                                                     f"({subject.actions.source})")


_ARN = re.compile(r"^arn:[^:]*:[^:]*:[^:]*:[^:]*:.+$", re.DOTALL)


def _type_prefixes(granted: Iterable[ActionInfo]) -> set[str]:
    """Literal prefixes of the resource part of AWS's ARN patterns (``log-group:``, ``service/``, '')."""
    prefixes = {""}
    for info in granted:
        for rt in info.resource_types:
            parts = rt.arn_pattern.split(":", 5)
            if len(parts) == 6:
                prefixes.add(parts[5].split("${", 1)[0])
    return prefixes


# Resource names no template names: a pattern that matches all of them, in AWS's ARN shape of a resource
# type, covers every resource of that type ("log-gr*", "t*", "r*" put the wildcard in the type itself).
PROBE_NAMES = ("zq9-broker-probe", "A0.Other_name/9")
_ARN_VARIABLE = re.compile(r"\$\{[^}]*\}")


def _covers_any_name(resource: str, granted: Iterable[ActionInfo]) -> str | None:
    """The resource type name if ``resource`` matches a resource of that type whatever its name."""
    partition, service, region, account, _rest = resource.split(":", 5)[1:]
    for info in granted:
        for rt in info.resource_types:
            parts = rt.arn_pattern.split(":", 5)
            if len(parts) != 6 or parts[2] != service:
                continue
            head = ["arn", partition, service, region if "${" in parts[3] else parts[3],
                    account if "${" in parts[4] else parts[4]]
            if all(arn_matches(resource, ":".join([*head, _ARN_VARIABLE.sub(name, parts[5])]))
                   for name in PROBE_NAMES):
                return rt.name
    return None


def _rule_resources(subject: Subject) -> None:
    """``*`` only for actions without resource-level permissions; ARNs name something specific."""
    for s in subject.statements:
        scoped = [info.key for info in s.granted if info.supports_resource_level_permissions]
        prefixes = _type_prefixes(s.granted)
        for j, resource in enumerate(s.resources):
            where = f"{s.field}.resources[{j}]"
            if resource == "*":
                if scoped:
                    subject.add("resource_star", where,
                                f"Resource \"*\" is refused for actions that support resource-level permissions: "
                                f"{', '.join(sorted(scoped)[:5])}{' ...' if len(scoped) > 5 else ''}")
                continue
            if not _ARN.fullmatch(resource):
                subject.add("resource_not_arn", where, f"{resource!r} is neither \"*\" nor an ARN")
                continue
            partition, service, _region, account, rest = resource.split(":", 5)[1:]
            if any(c in partition + service for c in "*?"):
                subject.add("resource_wildcard_service", where, "wildcards in the partition or service of an ARN")
            if any(c in account for c in "*?"):
                subject.add("resource_any_account", where, "a wildcard in the account lets the policy reach any account")
            for prefix in sorted(prefixes, key=len, reverse=True):
                if rest.startswith(prefix):
                    if re.sub(r"[*?/:]", "", rest[len(prefix):]) == "":
                        subject.add("resource_all_of_type", where,
                                    f"{resource!r} covers every {prefix.rstrip(':/') or 'resource'} in the account; "
                                    f"name the one needed (use a parameter)")
                    elif (type_name := _covers_any_name(resource, s.granted)) is not None:
                        subject.add("resource_all_of_type", where,
                                    f"{resource!r} matches every {type_name} whatever its name (a wildcard in the "
                                    f"resource type); name the one needed (use a parameter)")
                    break


def _rule_conditions(subject: Subject) -> None:
    """Every condition operator is one the evaluator can prove (fail closed on the rest)."""
    for s in subject.statements:
        for operator in s.conditions:
            qualifier, _, name = operator.rpartition(":")
            base = name.removesuffix("IfExists")
            if (qualifier and qualifier not in SET_QUALIFIERS) or (base not in OPERATORS and name != "Null"):
                subject.add("condition_operator_unknown", f"{s.field}.conditions.{operator}",
                            f"condition operator {operator!r} is not one the broker can evaluate")


# ---------------------------------------------------------------------------------------------
# Risk: every class the actions carry is declared and has its co-signers.

def declared_risks(template: ScopeTemplate) -> set[Risk]:
    declared = {CAPABILITIES[c] for c in template.capabilities if c in CAPABILITIES}
    if template.destructive:
        declared.add(Risk.DESTRUCTIVE)
    return declared


def _declaration(risk: Risk) -> str:
    capability = BY_RISK[risk].capability
    if risk is Risk.DESTRUCTIVE:
        return "declare it with 'destructive: true' (or 'capabilities: [destructive]')"
    return f"declare it with 'capabilities: [{capability}]'"


def template_risk(subject: Subject) -> list:
    """The risk classes the subject's statements grant, most dangerous first (see :func:`risk_of`)."""
    return risk_of((info for s in subject.statements for info in s.granted),
                   everything=any(s.grants_everything for s in subject.statements))


def _rule_risk(subject: Subject) -> None:
    template = subject.template
    for j, capability in enumerate(template.capabilities):
        if capability not in CAPABILITIES:
            subject.add("unknown_capability", f"capabilities[{j}]",
                        f"unknown capability {capability!r}; known: {', '.join(sorted(CAPABILITIES))}")
    declared = declared_risks(template)
    present = template_risk(subject)
    self_scoped = self_scoped_risks(subject)
    for finding in present:
        klass = finding.risk_class
        names = ", ".join(finding.actions)
        if klass.risk not in declared:
            subject.add(f"undeclared_{klass.risk.value.replace('-', '_')}", "statements",
                        f"grants {klass.risk.value} actions ({names}): {klass.sentence}; {_declaration(klass.risk)}")
        if klass.risk in self_scoped:
            continue  # confined to the caller's own resources (see self_scoped_risks)
        if not template.needs_approval:
            subject.add("risk_without_cosigning", "approval.approvals",
                        f"{klass.risk.value} actions ({names}) need human co-signing "
                        f"(approval.approvals >= {klass.approvals})")
        elif template.approval.approvals < klass.approvals:
            subject.add("risk_approvals", "approval.approvals",
                        f"{klass.risk.value} actions ({names}) need {klass.approvals} co-signers "
                        f"({klass.approval_reason}); the template asks for {template.approval.approvals}")
    for risk in ordered(declared - {f.risk_class.risk for f in present}):
        subject.add("declared_risk_unused", "destructive" if risk is Risk.DESTRUCTIVE else "capabilities",
                    f"declares {risk.value} but grants no such action", severity="warning")


# Risk classes a dev template may grant without co-signers when every statement granting them is confined to
# resources bound to the caller's own identity (README: *Self-scoped risk*).  Production always needs them.
SELF_SCOPED_RISKS = frozenset({Risk.DESTRUCTIVE})
SELF_SCOPED_ENVIRONMENTS = frozenset({Environment.DEV})


def self_scoped_risks(subject: Subject) -> frozenset[Risk]:
    """The classes of :data:`SELF_SCOPED_RISKS` whose every granting statement is confined, resource by resource,
    to the caller's own identity value (:mod:`broker.domain.self_scope`): proven from the template's resources
    and, for a rendered policy, again from the exact resources sent to STS.  Never from a flag."""
    template = subject.template
    if template.environment not in SELF_SCOPED_ENVIRONMENTS or not template.identity:
        return frozenset()
    if len(subject.statements) != len(template.statements):
        return frozenset()
    scoped = set()
    for risk in SELF_SCOPED_RISKS:
        granting = [(i, s) for i, s in enumerate(subject.statements)
                    if s.grants_everything or any(f.risk_class.risk is risk for f in risk_of(s.granted))]
        if not granting or any(s.grants_everything for _, s in granting):
            continue
        rendered = subject.rendered
        if all(statement_confined_by(template, i, s.resources if rendered is not None else None,
                                     rendered.identity if rendered is not None else None)
               for i, s in granting):
            scoped.add(risk)
    return frozenset(scoped)


def _rule_approvals(subject: Subject) -> None:
    template = subject.template
    granted = subject.all_granted().values()
    writers = sorted(info.key for info in granted if not info.access_level.read_only)
    if template.approval.read_only_single_approver and writers:
        subject.add("read_only_claim_false", "approval.read_only_single_approver",
                    f"claims to be read-only but grants {', '.join(writers[:5])}")
    if template.environment is not Environment.PRODUCTION:
        return
    # NOTE: reading a secret is a read, but it hands out what outlives the session: in production one
    # co-signer is for reads that carry no risk class, never for secret values or credentials.
    risky = [f.risk_class.risk.value for f in template_risk(subject)]
    read_only = template.approval.read_only_single_approver and not writers
    minimum = 1 if (read_only and not risky) else PRODUCTION_MIN_APPROVALS
    if template.approval.approvals < minimum:
        why = (f" (its reads carry {', '.join(risky)}: a single co-signer is only for reads that carry no risk "
               f"class)" if read_only and risky else "")
        subject.add("production_approvals", "approval.approvals",
                    f"a production template needs at least {minimum} approval(s), it asks for "
                    f"{template.approval.approvals}{why}")


# ---------------------------------------------------------------------------------------------
# Privilege-escalation shapes: data, with the reason for each.

IAM_POLICY_WRITERS = frozenset({
    "iam:createpolicyversion", "iam:setdefaultpolicyversion", "iam:attachrolepolicy", "iam:attachuserpolicy",
    "iam:attachgrouppolicy", "iam:putrolepolicy", "iam:putuserpolicy", "iam:putgrouppolicy",
    "iam:updateassumerolepolicy", "iam:addusertogroup", "iam:putrolepermissionsboundary",
    "iam:deleterolepermissionsboundary", "iam:putuserpermissionsboundary", "iam:deleteuserpermissionsboundary",
    "iam:createaccesskey", "iam:createloginprofile", "iam:updateloginprofile", "iam:createpolicy",
})
ROLE_SWITCHERS = frozenset({"sts:assumerole", "sts:assumerolewithsaml", "sts:assumerolewithwebidentity",
                            "sts:getfederationtoken"})
CODE_RUNNERS = frozenset({
    "lambda:createfunction", "lambda:updatefunctionconfiguration", "ec2:runinstances", "ec2:requestspotinstances",
    "ecs:runtask", "ecs:starttask", "ecs:registertaskdefinition", "ecs:createservice", "glue:createdevendpoint",
    "glue:createjob", "glue:updatejob", "cloudformation:createstack", "cloudformation:updatestack",
    "cloudformation:createchangeset", "datapipeline:createpipeline", "sagemaker:createnotebookinstance",
    "sagemaker:createtrainingjob", "sagemaker:createprocessingjob", "codebuild:createproject",
    "codebuild:updateproject", "states:createstatemachine", "batch:submitjob", "batch:registerjobdefinition",
    "autoscaling:createlaunchconfiguration", "ec2:createlaunchtemplate", "apprunner:createservice",
})
PASS_ROLE = frozenset({"iam:passrole"})


def _passes_any_role(s: StatementView) -> bool:
    return any(r == "*" or re.sub(r"[*?/]", "", r.split(":role", 1)[-1]) == "" for r in s.resources)


# Operators that bind iam:PassedToService to the services they name (no negation, no IfExists, no wildcard).
PASSED_TO_SERVICE_BINDING = frozenset({"StringEquals", "StringEqualsIgnoreCase", "StringLike",
                                       "ForAnyValue:StringEquals", "ForAnyValue:StringEqualsIgnoreCase",
                                       "ForAnyValue:StringLike"})


def _passrole_unbound(s: StatementView) -> bool:
    for operator, by_key in s.conditions.items():
        if operator not in PASSED_TO_SERVICE_BINDING:
            continue
        for key, values in by_key.items():
            if key.lower() == "iam:passedtoservice" and _as_list(values) and not any(
                    c in value for value in _as_list(values) for c in "*?$"):
                return False
    return True


@dataclass(frozen=True)
class EscalationRule:
    code: str
    reason: str
    grants_any: frozenset[str]                                  # the statement grants one of these
    together_with: frozenset[str] = frozenset()                 # ... and the template one of these
    statement_test: Callable[[StatementView], bool] | None = None   # ... and this holds for the statement


ESCALATION_RULES: tuple[EscalationRule, ...] = (
    EscalationRule("iam_policy_write", "lets the session give itself or a principal it controls more permissions "
                   "(write a policy, a policy version, a boundary, a trust policy or a credential)",
                   IAM_POLICY_WRITERS),
    EscalationRule("assume_other_role", "lets the session step into another role, outside the broker's scoping",
                   ROLE_SWITCHERS),
    EscalationRule("passrole_any_role", "iam:PassRole on every role lets the session hand the most powerful role "
                   "in the account to a service", PASS_ROLE, statement_test=_passes_any_role),
    EscalationRule("passrole_without_service", "iam:PassRole without an iam:PassedToService condition that names "
                   "the services (StringEquals, no wildcard) lets the role be passed to any service", PASS_ROLE,
                   statement_test=_passrole_unbound),
    EscalationRule("passrole_and_run_code", "iam:PassRole together with a service that runs code lets that code "
                   "act as the passed role", PASS_ROLE, together_with=CODE_RUNNERS),
)


def _rule_escalation(subject: Subject) -> None:
    if not ESCALATION_RULES:
        raise TemplateError("the escalation rule table is empty", code="guardrails_misconfigured")
    everything = set(subject.all_granted())
    for rule in ESCALATION_RULES:
        for s in subject.statements:
            hits = s.grants(rule.grants_any)
            if not hits:
                continue
            if rule.together_with and not (everything & rule.together_with):
                continue
            if rule.statement_test is not None and not rule.statement_test(s):
                continue
            names = ", ".join(sorted({h.key for h in hits}))
            partners = sorted(everything & rule.together_with)
            extra = f" (with {', '.join(partners)})" if partners else ""
            subject.add(rule.code, f"{s.field}.actions", f"{names}{extra}: {rule.reason}")


# ---------------------------------------------------------------------------------------------
# Role and parameters

def _rule_role(subject: Subject) -> None:
    template = subject.template
    for name in sorted(template.role_parameters()):
        if name in template.identity:
            if not template.identity[name].is_fixed_list:
                subject.add("role_parameter_not_fixed", f"identity.{name}",
                            f"identity value '{name}' is used in the role ARN, so it must go through a map (or an "
                            f"enum): a claim never names an account or role the template does not list")
            continue
        spec = template.parameters.get(name)
        if spec is None or not spec.is_fixed_list:
            subject.add("role_parameter_not_fixed", f"parameters.{name}",
                        f"parameter '{name}' is used in the role ARN, so it must be an enum: an agent never chooses "
                        f"which account or role it lands in")
    role = subject.rendered.role_arn if subject.rendered else template.role
    match = re.fullmatch(r"arn:aws[a-z-]*:iam::([^:]+):role/(?:[^/]+/)*([^/]+)", role)
    if match is None:
        subject.add("role_not_role_arn", "role", f"{role!r} is not an IAM role ARN")
        return
    if any(c in role for c in "*?"):
        subject.add("role_wildcard", "role", "the role ARN may not contain wildcards")
    if not match.group(2).startswith(subject.role_prefix):
        subject.add("role_not_target", "role",
                    f"the role name must start with {subject.role_prefix!r} (roles meant to be handed out)")


def _role_accounts(subject: Subject) -> list[str] | None:
    """Every account the role ARN can name (its role parameters are enums); None if unbounded."""
    template = subject.template
    if subject.rendered is not None:
        roles = [subject.rendered.role_arn]
    else:
        roles = [template.role]
        for name in sorted(template.role_parameters()):
            choices = template.role_choices(name)
            if not choices:
                return None                      # _rule_role refuses it (role_parameter_not_fixed)
            roles = [r.replace("{" + name + "}", value) for r in roles for value in choices]
            if len(roles) > MAX_ROLE_CHOICES:
                return None
    accounts = []
    for role in roles:
        match = re.fullmatch(r"arn:aws[a-z-]*:iam::([^:]+):role/.+", role)
        if match:
            accounts.append(match.group(1))
    return list(dict.fromkeys(accounts))


def _rule_account_environment(subject: Subject) -> None:
    """The role's account is named by the accounts configuration and is the template's environment."""
    if subject.accounts is None or not subject.accounts.configured:
        return
    accounts = _role_accounts(subject)
    if accounts is None:
        if subject.template.role_parameters() and all(
                subject.template.role_choices(n) for n in subject.template.role_parameters()):
            subject.add("role_choices_too_many", "role",
                        f"the role ARN can name more than {MAX_ROLE_CHOICES} roles; list fewer")
        return
    wanted = subject.template.environment
    for account in accounts:
        environment = subject.accounts.environment_of(account)
        if environment is None:
            subject.add("account_unknown", "role",
                        f"the role is in account {account}, which the accounts configuration "
                        f"({subject.accounts.source}) does not name; name its environment there")
        elif environment is not wanted:
            subject.add("environment_mismatch", "environment",
                        f"the template says {wanted.value} but its role is in account {account}, a "
                        f"{environment.value} account")


def _worst_case_values(template: ScopeTemplate) -> dict[str, str]:
    longest = {"aws_account_id": 12, "aws_region": 20, "integer": 19}
    values = {}
    for name, spec in template.parameters.items():
        if spec.enum:
            size = max(len(v) for v in spec.enum)
        else:
            size = longest.get(spec.type, spec.max_length)
        values[name] = "x" * size
    for name, spec in template.identity.items():
        choices = spec.choices()
        values[name] = "x" * (max(len(v) for v in choices) if choices else spec.max_length)
    return values


def worst_case_policy_size(template: ScopeTemplate) -> int:
    """Characters of the session policy with every parameter at its longest allowed value."""
    try:
        return render_policy(template, _worst_case_values(template)).size
    except PolicyTooLarge as exc:
        return int(exc.details.get("size", SESSION_POLICY_MAX_CHARS + 1))


def _rule_size(subject: Subject) -> None:
    """The rendered policy fits STS's limit; say how close it is."""
    if subject.rendered is not None:
        size, what = subject.rendered.size, "the rendered session policy"
    else:
        size, what = worst_case_policy_size(subject.template), "the session policy (longest parameter values)"
    ratio = size / SESSION_POLICY_MAX_CHARS
    if size > SESSION_POLICY_MAX_CHARS:
        subject.add("policy_too_large", "statements",
                    f"{what} can reach {size} characters; STS accepts {SESSION_POLICY_MAX_CHARS}")
    elif ratio >= SIZE_WARNING_RATIO:
        subject.add("policy_near_limit", "statements",
                    f"{what} uses {size} of {SESSION_POLICY_MAX_CHARS} characters ({ratio:.0%})", severity="warning")


# ---------------------------------------------------------------------------------------------
# Rendered policy: nothing wider than the template.

def _wildcards(text: str) -> int:
    return text.count("*") + text.count("?")


def _rule_not_widened(subject: Subject) -> None:
    assert subject.rendered is not None
    template_statements = subject.template.statements
    if len(subject.statements) != len(template_statements):
        subject.add("policy_widened", "policy.Statement", "the rendered policy has a different number of statements")
        return
    for view, original in zip(subject.statements, template_statements, strict=True):
        if set(view.actions) != set(original.actions):
            subject.add("policy_widened", f"{view.field}.Action", "rendered actions differ from the template's")
        if len(view.resources) != len(dict.fromkeys(original.resources)):
            subject.add("policy_widened", f"{view.field}.Resource", "rendered resources differ from the template's")
            continue
        for j, (rendered, written) in enumerate(zip(view.resources, dict.fromkeys(original.resources), strict=True)):
            literal = PLACEHOLDER.sub("", written)
            if _wildcards(rendered) != _wildcards(literal) or rendered.count("$") != literal.count("$"):
                subject.add("policy_widened", f"{view.field}.Resource[{j}]",
                            "a parameter value added a wildcard or policy variable to a resource")


def _rule_identity(subject: Subject) -> None:
    """Identity values: session tags STS accepts and the broker does not set, mapped values that are safe, and
    every value used somewhere."""
    template = subject.template
    taken = {key.lower() for key in (*RESERVED_TAGS, *template.session_tags)}
    used = template.placeholders()
    for name, spec in template.identity.items():
        where = f"identity.{name}"
        for value in (spec.map or {}).values():
            if not IDENTITY_VALUE.fullmatch(value) or ".." in value:
                subject.add("identity_map_value_unsafe", f"{where}.map",
                            f"the mapped value {value!r} is not letters, digits and _.-+=@ only")
        if spec.session_tag is not None:
            key = spec.session_tag.key
            if key.lower() in taken:
                subject.add("identity_session_tag_taken", f"{where}.session_tag.key",
                            f"session tag {key!r} is already set (by the broker, session_tags or another identity "
                            f"value); name another")
            taken.add(key.lower())
        elif name not in used:
            subject.add("identity_value_unused", where,
                        f"identity value '{name}' is used in no resource, condition, role or session tag",
                        severity="warning")
    if len(taken) > MAX_SESSION_TAGS:
        subject.add("too_many_session_tags", "session_tags", f"STS accepts at most {MAX_SESSION_TAGS} session tags")


TEMPLATE_RULES: tuple[Callable[[Subject], None], ...] = (
    _rule_shape, _rule_actions, _rule_resources, _rule_conditions, _rule_risk, _rule_approvals,
    _rule_escalation, _rule_role, _rule_account_environment, _rule_size, _rule_identity,
)
RENDERED_RULES: tuple[Callable[[Subject], None], ...] = (
    _rule_shape, _rule_actions, _rule_resources, _rule_conditions, _rule_risk, _rule_escalation, _rule_role,
    _rule_account_environment, _rule_size, _rule_not_widened,
)


def _run(rules: Sequence[Callable[[Subject], None]], subject: Subject) -> list[Finding]:
    # NOTE: fail closed: a check with no rules is a broken check, not a clean template.
    if not rules:
        raise TemplateError("guardrail rule table is empty", code="guardrails_misconfigured")
    for rule in rules:
        rule(subject)
    return subject.findings


def check_template(template: ScopeTemplate, *, actions: ActionKnowledge,
                   accounts: TargetAccounts | None = None) -> list[Finding]:
    """Every guardrail finding for a parsed template (errors block loading and minting).  Without
    ``accounts`` (lint with no configuration) the role's account is not checked."""
    return _run(TEMPLATE_RULES, Subject(template, _template_views(template, actions), actions, accounts=accounts))


def check_rendered(template: ScopeTemplate, rendered: RenderedPolicy, *, actions: ActionKnowledge,
                   accounts: TargetAccounts | None = None) -> list[Finding]:
    """Re-check the exact session policy about to be sent to STS (errors refuse minting)."""
    return _run(RENDERED_RULES, Subject(template, _rendered_views(rendered, actions), actions, rendered=rendered,
                                        accounts=accounts))


class RenderedChecks:
    """``check_rendered``, remembered for the most recent distinct inputs.

    The key is (template version digest, role ARN, policy digest): the two digests are sha256 of
    canonical forms, so an equal key means the same template and the same exact session policy
    for the same role, and the same findings.  Findings are frozen; the list handed out is a copy.
    """

    def __init__(self, actions: ActionKnowledge, *, maxsize: int = 1024, accounts: TargetAccounts | None = None) -> None:
        self._actions = actions
        self._accounts = accounts
        self._maxsize = maxsize
        self._seen: OrderedDict[tuple[str, str, str], tuple[Finding, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, template: ScopeTemplate, rendered: RenderedPolicy) -> list[Finding]:
        key = (template.version_digest, rendered.role_arn, rendered.digest)
        with self._lock:
            findings = self._seen.get(key)
            if findings is not None:
                self._seen.move_to_end(key)
                return list(findings)
        findings = tuple(check_rendered(template, rendered, actions=self._actions, accounts=self._accounts))
        with self._lock:
            self._seen[key] = findings
            while len(self._seen) > self._maxsize:
                self._seen.popitem(last=False)
        return list(findings)


def template_error_findings(exc: TemplateError, *, source: str) -> list[Finding]:
    """Turn a parse/validation error (pydantic's, via ``parse_template``) into findings naming the field."""
    problems = exc.details.get("problems") or [{"field": exc.field or "(template)", "message": exc.message}]
    # pydantic writes list positions as ".0"; the guardrails write "[0]": use one form.
    return [Finding(code=exc.code, severity="error", field=re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", p["field"]),
                    message=p["message"], source=source)
            for p in problems]
