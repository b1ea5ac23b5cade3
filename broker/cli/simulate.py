"""``broker scopes simulate``: would this session be allowed to do ACTION on RESOURCE?

Offline, with the broker's evaluator (:mod:`broker.domain.evaluator`): the session policy
rendered from a template (``NAME -p KEY=VALUE``), or from one issued grant (``--grant ID``),
intersected with the role's own policies (``--role-policy FILE``, repeatable: e.g. the output of
``aws iam get-role-policy`` for the ``broker-revocations`` deny) and a permissions boundary
(``--boundary FILE``).  An explicit deny in any of them wins; each must allow.

``--grant ID`` (a grant id, a unique prefix of one, or its access key id) fills the request
context from the grant's ``issued`` entry in the issuance log: its SourceIdentity, session tags
(``aws:PrincipalTag/...``), ``aws:userid`` (exact with ``--role-id``, else known by its session
name only), ``aws:TokenIssueTime``, ``aws:PrincipalArn``/``Account``/``Type``.  The entry comes from
an export file (``--log FILE``, ``broker audit export`` or ``GET /v1/events/export``; ``-`` reads
stdin) or, without ``--log``, from a running broker's API (``GET /v1/events?grant_id=``) with a
reviewer's token (``--url``/``BROKER_URL``, ``--token``/``BROKER_TOKEN``).

Exit codes: 0 allowed, 1 denied, 3 undecidable ("may allow": pass ``--context KEY=VALUE``),
2 unusable input (a file, a grant that is not in the log, a template changed since the grant),
4 an action the action database does not know (named, with "did you mean").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from broker.cli.connection import call_api
from broker.errors import BrokerError, InvalidInput
from broker.sdk.client import DEFAULT_URL

EXIT_ALLOWED, EXIT_DENIED, EXIT_UNUSABLE, EXIT_UNDECIDABLE, EXIT_UNKNOWN_ACTION = 0, 1, 2, 3, 4


def add_arguments(simulate: argparse.ArgumentParser, key_value) -> None:
    simulate.add_argument("--action", required=True, help="one IAM action, e.g. s3:GetObject")
    simulate.add_argument("--resource", required=True, help="the resource ARN the call acts on (or *)")
    simulate.add_argument("--role-policy", type=Path, action="append", default=[],
                          help="the role's identity policy (JSON file: a policy, a list of them, or the output of "
                               "aws iam get-role-policy); repeatable.  Without it only the session policy is checked")
    simulate.add_argument("--boundary", type=Path, default=None,
                          help="the role's permissions boundary (JSON policy file); it must allow too")
    simulate.add_argument("--context", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                          help="a condition key's value in the request (repeat a key for several values; "
                               "overrides what --grant fills in)")
    simulate.add_argument("--context-complete", action="store_true",
                          help="keys not given (nor filled from --grant) are absent from the request (not unknown)")
    simulate.add_argument("--grant", default=None, metavar="ID",
                          help="simulate this issued grant (id, unique id prefix or access key id): its template, "
                               "parameters and request context come from the issuance log")
    simulate.add_argument("--log", type=Path, default=None, metavar="FILE",
                          help="with --grant: an issuance log export (JSON lines; - for stdin). Without it the "
                               "grant is read from the broker's API (--url, --token)")
    simulate.add_argument("--role-id", default=None, metavar="AROA...",
                          help="with --grant: the role's unique id (aws iam get-role), so aws:userid is exact")
    # NOTE: the broker connection options of every command, but --context is the request's IAM context here:
    # the broker context comes from BROKER_CONTEXT or the current one (broker context use).
    simulate.add_argument("--url", default=None,
                          help=f"with --grant and no --log: broker URL (env BROKER_URL; else the context; else "
                               f"{DEFAULT_URL})")
    simulate.add_argument("--token", default=None,
                          help="with --grant and no --log: a reviewer's API key or OIDC token (env BROKER_TOKEN)")
    simulate.add_argument("--token-file", default=None, help="file holding the token (env BROKER_TOKEN_FILE)")
    simulate.add_argument("--token-command", default=None,
                          help="command printing an OIDC token (env BROKER_TOKEN_COMMAND)")
    simulate.add_argument("--format", choices=["text", "json"], default="text")


def run(args: argparse.Namespace, *, load_template, render_checked, params) -> int:
    try:
        return _simulate(args, load_template=load_template, render_checked=render_checked, params=params)
    except BrokerError as exc:
        # NOTE: not exit 1: that means "denied".  Anything we could not use is 2.
        print(f"error [{exc.code}]: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_UNUSABLE


def _simulate(args: argparse.Namespace, *, load_template, render_checked, params) -> int:
    from broker.aws.action_database import default_action_knowledge
    from broker.domain.evaluator import AccessRequest, Outcome, PolicyKind, PolicySet, evaluate
    from broker.domain.simulation import check_action, session_context

    problem = check_action(args.action, default_action_knowledge())
    if problem is not None:
        if args.format == "json":
            print(json.dumps({"outcome": "unknown_action", **problem.to_dict()}, indent=2))
        else:
            print(f"unknown action: {problem.message}", file=sys.stderr)
        return EXIT_UNKNOWN_ACTION if problem.kind != "action_pattern" else EXIT_UNUSABLE

    grant = _grant(args) if args.grant else None
    if grant is None and not args.name:
        raise InvalidInput("name a template (NAME -p KEY=VALUE) or an issued grant (--grant ID)", field="name")
    if grant is not None:
        if args.name and args.name != grant.template:
            raise InvalidInput(f"grant {grant.grant_id} was issued from template {grant.template!r}, not "
                               f"{args.name!r}", field="name")
        if args.param:
            raise InvalidInput("with --grant the parameters come from the log; drop -p", field="parameters")
        args.name = grant.template
    template = load_template(args)
    values = {k: str(v) for k, v in grant.parameters.items()} if grant is not None else params(args)
    _values, rendered, blocking = render_checked(template, values,
                                                 bound=grant.identity if grant is not None else None)
    if blocking:
        print("note: the broker would refuse to mint this policy; simulating it anyway", file=sys.stderr)
    sets = [PolicySet.of(PolicyKind.SESSION, rendered.document, name="session")]
    role_documents = [doc for path in args.role_policy for doc in read_policy(path, field="role_policy")]
    if role_documents:
        sets.insert(0, PolicySet.of(PolicyKind.IDENTITY, *role_documents, name="role"))
    if args.boundary is not None:
        sets.insert(1 if role_documents else 0, PolicySet.of(
            PolicyKind.PERMISSIONS_BOUNDARY, *read_policy(args.boundary, field="boundary"), name="boundary"))
    context: dict[str, Any] = {}
    absent: frozenset[str] = frozenset()
    if grant is not None:
        if rendered.digest != grant.policy_digest:
            raise InvalidInput(f"the policy rendered now ({rendered.digest}) is not the one grant {grant.grant_id} "
                               f"was issued with ({grant.policy_digest})", code="template_changed", field="grant")
        filled = session_context(grant, template, rendered.role_arn, role_id=args.role_id)
        context, absent = dict(filled.context), filled.absent
    given: dict[str, list[str]] = {}
    for key, value in args.context:
        given.setdefault(key, []).append(value)
    for key, values_ in given.items():
        for known in [k for k in context if k.lower() == key.lower()]:
            del context[known]
        context[key] = values_
    absent = frozenset(a for a in absent if a.lower() not in {k.lower() for k in given})
    request = AccessRequest(action=args.action, resource=args.resource, context=context, absent=absent,
                            context_complete=args.context_complete)
    decision = evaluate(sets, request)
    if args.format == "json":
        body = decision.to_dict() | {"role_policy_checked": bool(role_documents),
                                     "boundary_checked": args.boundary is not None, "policy_digest": rendered.digest}
        if grant is not None:
            body["grant"] = {"id": grant.grant_id, "template": grant.template, "access_key_id": grant.access_key_id,
                             "context": {k: v if isinstance(v, (str, list)) else str(v) for k, v in context.items()},
                             "notes": list(grant.notes)}
        print(json.dumps(body, indent=2))
    else:
        print(f"{decision.outcome.value}: {decision.reason}")
        if grant is not None:
            print(f"grant {grant.grant_id} ({grant.template}, {grant.requester}); context from the log: "
                  + ", ".join(f"{k}={v if isinstance(v, str) else v}" for k, v in sorted(context.items())),
                  file=sys.stderr)
            for note in grant.notes:
                print(f"note: {note}", file=sys.stderr)
        if not role_documents:
            print("note: only the session policy was checked; pass --role-policy FILE to intersect with the "
                  "role's own policy", file=sys.stderr)
    return {Outcome.ALLOWED: EXIT_ALLOWED, Outcome.DENIED: EXIT_DENIED,
            Outcome.UNDECIDABLE: EXIT_UNDECIDABLE}[decision.outcome]


def read_policy(path: Path, *, field: str) -> list[dict[str, Any]]:
    """A policy document from a file: a document, a list of them, or what the AWS CLI prints for
    ``iam get-role-policy`` (``PolicyDocument``) and ``iam get-policy-version`` (``PolicyVersion.Document``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path}: not a readable JSON policy ({exc.__class__.__name__})", field=field) from exc
    if isinstance(data, dict) and isinstance(data.get("PolicyVersion"), dict):
        data = data["PolicyVersion"].get("Document")
    elif isinstance(data, dict) and "PolicyDocument" in data:
        data = data["PolicyDocument"]
    if isinstance(data, str):  # IAM's API returns documents URL-encoded
        try:
            data = json.loads(unquote(data))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}: the policy document is not JSON", field=field) from exc
    documents = data if isinstance(data, list) else [data]
    if not documents or not all(isinstance(d, dict) and "Statement" in d for d in documents):
        raise InvalidInput(f"{path}: expected a policy document (or a list of them) with a Statement", field=field)
    return documents


# --------------------------------------------------------------------------------------------- grants

def _grant(args: argparse.Namespace):
    from broker.domain.simulation import find_grant

    return find_grant(_log_entries(args.log) if args.log is not None else _api_entries(args), args.grant)


def _log_entries(path: Path) -> list[dict[str, Any]]:
    """Entries of an export file (the checkpoint line and blank lines skipped)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not a readable issuance log export ({exc.__class__.__name__})",
                           field="log") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}: line {number} is not JSON", field="log") from exc
        if isinstance(entry, dict) and "checkpoint" not in entry:
            entries.append(entry)
    return entries


def _api_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The grant's entries from the broker (a reviewer may read the log): by grant id, else by access key id."""
    connection = argparse.Namespace(url=args.url, token=args.token, token_file=args.token_file,
                                    token_command=args.token_command, context=None)
    for filter_name in ("grant_id", "access_key_id"):
        page = call_api(connection, "GET", f"/v1/events?{filter_name}={_quote(args.grant)}&limit=1000")
        entries = page.get("events") if isinstance(page, dict) else None
        if entries:
            return [e for e in entries if isinstance(e, dict)]
    return []


def _quote(value: str) -> str:
    from urllib.parse import quote
    return quote(value, safe="")
