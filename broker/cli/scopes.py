"""``broker scopes``: lint, render, explain and simulate scope templates (offline; for engineers' CI).

Exit codes
  lint      0 no blocking finding (warnings are printed; ``--strict`` makes them count),
            1 findings (a file, template and field are named for each),
            2 unusable input (a path that does not exist, a file that is not readable YAML mapping).
            A template that parses as YAML but fails the schema (e.g. a ``NotAction`` key) is a
            *finding* (exit 1) naming the field, not unusable input.
  render    0 printed the exact session policy (stdout, byte for byte what STS receives);
            1 the parameters are invalid or the rendered policy fails the guardrails.
  explain   0 printed the blast radius (of the template, or of one request with ``-p``).
  simulate  0 allowed, 1 denied, 3 undecidable ("may allow": a condition key or operator the
            evaluator cannot decide; pass ``--context KEY=VALUE`` to decide it), 4 an action the
            action database does not know (named, with "did you mean"), 2 unusable input.
            See :mod:`broker.cli.simulate` (``--boundary``, ``--grant``).

Templates are looked up in ``--scopes DIR``, else ``$BROKER_SCOPES_DIR``, else ``./scopes``.

Accounts: given the broker's accounts configuration (``BROKER_ACCOUNTS``, ``BROKER_ACCOUNTS_FILE``,
``BROKER_CONFIG_FILE``, or ``lint --accounts FILE``) lint refuses a role in an account it does not
name or of another environment, exactly as the broker does at load.  With none, lint says so on
stderr and checks everything else (an author without the deployment's configuration can still lint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from broker.cli import governance
from broker.domain.rendering import SESSION_POLICY_MAX_CHARS
from broker.errors import BrokerError, InvalidInput, TemplateError, TemplateNotFound

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2
EXIT_UNDECIDABLE = 3
DEFAULT_SCOPES_DIR = "scopes"


def default_scopes_dir() -> Path:
    return Path(os.environ.get("BROKER_SCOPES_DIR") or DEFAULT_SCOPES_DIR)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def register(subparsers) -> None:
    scopes = subparsers.add_parser("scopes", help="lint, render, explain and simulate scope templates (offline)")
    sub = scopes.add_subparsers(dest="scopes_command", metavar="COMMAND")

    lint = sub.add_parser("lint", help="check templates against the guardrails (exit 0 clean, 1 findings, 2 unusable)")
    lint.add_argument("paths", nargs="*", type=Path, help="files or folders (default: $BROKER_SCOPES_DIR or ./scopes)")
    lint.add_argument("--format", choices=["text", "json"], default="text")
    lint.add_argument("--strict", action="store_true", help="warnings count as findings too")
    lint.add_argument("--accounts", type=Path, default=None, metavar="FILE",
                      help="accounts configuration (account id -> environment; default: BROKER_ACCOUNTS / "
                           "BROKER_ACCOUNTS_FILE); without any, accounts are not checked")
    lint.add_argument("--owners", type=Path, default=os.environ.get("BROKER_TEMPLATE_OWNERS_FILE") or None,
                      help="template owners file: report templates short of valid signatures (warnings) "
                           "(default $BROKER_TEMPLATE_OWNERS_FILE; unset: signatures are not checked)")
    lint.set_defaults(func=run_lint)

    def with_template(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="template name")
        parser.add_argument("-p", "--param", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
        parser.add_argument("--scopes", type=Path, default=None, help="template folder")
        with_caller(parser)

    def with_caller(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--as", dest="as_principal", default=None, metavar="PRINCIPAL",
                            help="evaluate for this caller (e.g. agent:ws-a-bot): fills the template's values bound "
                                 "to the caller's identity (identity:), as the broker would for that caller")
        parser.add_argument("--acts-for", default=None, metavar="HUMAN", help="the human the caller acts for")
        parser.add_argument("--claim", action="append", type=_key_value, default=[], metavar="NAME=VALUE",
                            help="a claim of the caller's OIDC token (repeatable; a/b=VALUE for a nested claim)")
        parser.add_argument("--attribute", action="append", type=_key_value, default=[], metavar="NAME=VALUE",
                            help="an attribute of the caller's directory entry (repeatable)")

    render = sub.add_parser("render", help="print the exact session policy for these parameters")
    with_template(render)
    render.add_argument("--format", choices=["policy", "json"], default="policy",
                        help="policy: the session policy only; json: with role ARN, size and digest")
    render.set_defaults(func=run_render)

    explain = sub.add_parser("explain", help="the blast radius, in plain words (or JSON)")
    with_template(explain)
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(func=run_explain)

    from broker.cli import simulate as simulate_command

    simulate = sub.add_parser("simulate", help="would this session be allowed to do ACTION on RESOURCE? "
                                               "(exit 0 allowed, 1 denied, 3 undecidable, 4 unknown action, "
                                               "2 unusable input)")
    simulate.add_argument("name", nargs="?", default=None, help="template name (or give --grant)")
    simulate.add_argument("-p", "--param", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    simulate.add_argument("--scopes", type=Path, default=None, help="template folder")
    with_caller(simulate)
    simulate_command.add_arguments(simulate, _key_value)
    simulate.set_defaults(func=run_simulate)

    governance.register_scopes(sub)  # diff, sign, usage
    scopes.set_defaults(func=lambda _args: (scopes.print_help(), EXIT_UNUSABLE)[1])


# ---------------------------------------------------------------------------------------------
# lint

def lint_accounts(accounts_file: Path | None = None):
    """The accounts configuration lint checks against (not configured: nothing to check)."""
    from broker.settings import load_settings, load_target_accounts

    overrides = {"accounts_file": accounts_file} if accounts_file is not None else {}
    return load_target_accounts(load_settings(**overrides), required=False)


def run_lint(args: argparse.Namespace) -> int:
    from broker.aws.action_database import default_action_knowledge
    from broker.storage.template_files import read_template, template_files
    from broker.domain.guardrails import Finding, check_template, template_error_findings, worst_case_policy_size

    started = time.perf_counter()
    paths = args.paths or [default_scopes_dir()]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"error: {missing[0]} does not exist", file=sys.stderr)
        return EXIT_UNUSABLE
    files = template_files(paths)
    if not files:
        # NOTE: fail closed: linting nothing is not a clean result.
        print(f"error: no template files (*.yaml, *.yml) in {', '.join(map(str, paths))}", file=sys.stderr)
        return EXIT_UNUSABLE
    actions = default_action_knowledge()
    accounts = lint_accounts(args.accounts)
    try:
        signing = governance.lint_signing(args.owners, actions)
    except BrokerError as exc:
        print(f"error [{exc.code}]: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_UNUSABLE
    unusable = False
    findings: list[Finding] = []
    names: dict[str, str] = {}
    sizes: list[dict[str, Any]] = []
    for path in files:
        try:
            template = read_template(path)
        except TemplateError as exc:
            if exc.code == "template_unreadable":
                unusable = True
            findings.extend(template_error_findings(exc, source=str(path)))
            continue
        if template.name in names:
            findings.append(Finding("duplicate_template", "error", "name",
                                    f"template name already used by {names[template.name]}",
                                    template=template.name, source=str(path)))
        names.setdefault(template.name, str(path))
        sizes.append({"template": template.name, "source": str(path),
                      "worst_case_policy_size": worst_case_policy_size(template), "limit": SESSION_POLICY_MAX_CHARS})
        findings.extend(f.located(source=str(path))
                        for f in check_template(template, actions=actions, accounts=accounts))
        findings.extend(governance.signature_findings(path, template, signing))
    elapsed = time.perf_counter() - started
    errors = sum(f.blocking for f in findings)
    warnings = len(findings) - errors
    if args.format == "json":
        print(json.dumps({"files": [str(f) for f in files], "templates": sizes,
                          "findings": [f.to_dict() for f in findings],
                          "summary": {"files": len(files), "errors": errors, "warnings": warnings,
                                      "seconds": round(elapsed, 4), "action_database": actions.source,
                                      "accounts_checked": accounts.configured}},
                         indent=2))
    else:
        for finding in findings:
            print(finding)
        print(f"{len(files)} file(s), {errors} error(s), {warnings} warning(s) in {elapsed:.3f}s "
              f"[{actions.source}]", file=sys.stderr)
    if not accounts.configured:
        print("note: no accounts configuration (BROKER_ACCOUNTS, BROKER_ACCOUNTS_FILE or --accounts): the "
              "environment of each role's account was not checked", file=sys.stderr)
    if unusable:
        return EXIT_UNUSABLE
    if errors or (args.strict and warnings):
        return EXIT_FINDINGS
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# render / explain / simulate

def _load_template(args: argparse.Namespace):
    from broker.storage.template_files import load_catalog

    directory = args.scopes or default_scopes_dir()
    catalog = load_catalog(directory)
    try:
        return catalog.get(args.name)
    except TemplateNotFound as exc:
        raise TemplateNotFound(f"no scope template named '{args.name}' in {directory}", field="name") from exc


def _params(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in args.param:
        if key in params:
            raise InvalidInput(f"parameter '{key}' given twice", field=f"parameters.{key}")
        params[key] = value
    return params


def _caller(args: argparse.Namespace):
    """The caller ``--as``/``--claim``/``--attribute`` describe, or None when none is given."""
    from broker.domain.caller_identity import CallerIdentity

    claims, attributes = getattr(args, "claim", []), getattr(args, "attribute", [])
    principal = getattr(args, "as_principal", None)
    if principal is None and not claims and not attributes:
        return None
    principal = principal or "agent:simulated"
    nested: dict[str, object] = {}
    for name, value in claims:
        *path, last = name.split("/")
        place = nested
        for part in path:
            place = place.setdefault(part, {})  # type: ignore[assignment]
        place[last] = value  # type: ignore[index]
    return CallerIdentity(principal=principal, human=getattr(args, "acts_for", None) or principal, claims=nested,
                          attributes=dict(attributes))


def _render_checked(template, params: dict[str, str], caller=None, bound=None):
    """Validate, render and re-check like the broker does before minting; refuse on errors.  The template's
    identity-bound values come from ``caller`` (``--as``/``--claim``) or, for an issued grant, ``bound``."""
    from broker.aws.action_database import default_action_knowledge
    from broker.domain.caller_identity import resolve_identity
    from broker.domain.guardrails import check_rendered, check_template
    from broker.domain.rendering import render_policy, validate_parameters

    actions = default_action_knowledge()
    accounts = lint_accounts()
    values = validate_parameters(template, params)
    if template.identity:
        if bound is None and caller is None:
            raise InvalidInput(f"template '{template.name}' binds {', '.join(template.identity)} to the caller's "
                               "identity: say who the caller is (--as PRINCIPAL, --claim NAME=VALUE, --attribute "
                               "NAME=VALUE)", code="identity_value_missing", field="identity")
        values = {**values, **(dict(bound) if bound is not None else resolve_identity(template, caller))}
    rendered = render_policy(template, values)
    findings = (check_template(template, actions=actions, accounts=accounts)
                + check_rendered(template, rendered, actions=actions, accounts=accounts))
    for finding in findings:
        print(finding, file=sys.stderr)
    return values, rendered, [f for f in findings if f.blocking]


def run_render(args: argparse.Namespace) -> int:
    template = _load_template(args)
    _values, rendered, blocking = _render_checked(template, _params(args), _caller(args))
    if blocking:
        print("refused: the broker would not mint this policy", file=sys.stderr)
        return EXIT_FINDINGS
    if args.format == "json":
        print(json.dumps({"role_arn": rendered.role_arn, "policy": rendered.document, "size": rendered.size,
                          "limit": SESSION_POLICY_MAX_CHARS, "digest": rendered.digest}, indent=2))
    else:
        sys.stdout.write(rendered.json + "\n")
        print(f"# role {rendered.role_arn}; {rendered.size} of {SESSION_POLICY_MAX_CHARS} characters ({rendered.size_ratio:.0%}); "
              f"{rendered.digest}", file=sys.stderr)
    return EXIT_OK


def run_explain(args: argparse.Namespace) -> int:
    from broker.aws.action_database import default_action_knowledge
    from broker.domain.blast_radius import assess

    template = _load_template(args)
    params = _params(args)
    actions = default_action_knowledge()
    caller = _caller(args)
    if params or caller is not None:
        values, rendered, blocking = _render_checked(template, params, caller)
        values = {k: v for k, v in values.items() if k in template.parameters}
        if blocking:
            print("note: the broker would refuse to mint this policy", file=sys.stderr)
        radius = assess(template, actions=actions, rendered=rendered, parameters=values)
    else:
        radius = assess(template, actions=actions)
    print(json.dumps(radius.to_dict(), indent=2) if args.format == "json" else radius.to_text())
    return EXIT_OK


def run_simulate(args: argparse.Namespace) -> int:
    from broker.cli import simulate as simulate_command

    caller = _caller(args)

    def render_checked(template, values, bound=None):
        return _render_checked(template, values, caller, bound)

    return simulate_command.run(args, load_template=_load_template, render_checked=render_checked, params=_params)
