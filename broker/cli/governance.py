"""Template governance commands: ``broker scopes diff / sign / usage`` and ``broker audit reconcile``.

Exit codes
  scopes diff        0 narrows or same (nothing any agent could get grows), 1 widens (a new template, a
                     grant no old one covers, a risk class gained, fewer approvals, more approvers or
                     requesters, a longer TTL, a looser parameter, ...), 2 unusable input.
  scopes sign        0 signature written, 2 unusable input (template, key).
  scopes usage       0 report printed (and with ``--suggest`` the tightened template written), 1 no
                     tightened template could be made (nothing used, or it would not lint clean),
                     2 unusable input (CloudTrail files, log export).
  audit reconcile    0 complete (both ways), 1 gaps (an AssumeRole no entry accounts for, an ``issued``
                     entry CloudTrail never saw, or a mismatch), 2 unusable input.

``OLD`` / ``NEW`` of ``diff`` are folders, template files, or git revisions with a path
(``HEAD~1:scopes``, ``main:scopes/s3-read-prefix.yaml``).  The issuance log comes from an export file
(``--log FILE``, checked first with ``--public-key``), else from the broker's API (``BROKER_URL``,
``BROKER_TOKEN``: a reviewer's key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.cli.connection import add_api_options
from broker.errors import BrokerError, InvalidInput

EXIT_OK, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2


def _scopes_dir(args: argparse.Namespace) -> Path:
    return args.scopes or Path(os.environ.get("BROKER_SCOPES_DIR") or "scopes")


def _fail(exc: BrokerError) -> int:
    print(f"error [{exc.code}]: {exc.diagnostics()}", file=sys.stderr)
    return EXIT_UNUSABLE


# --------------------------------------------------------------------------------------------- lint

def lint_signing(owners_file: Path | None, actions):
    """The signing rule and the risk check lint applies, or None when no owners file is given."""
    from broker.runtime.template_loading import risk_needs_cosigning, signing_rule

    if owners_file is None:
        return None
    return signing_rule(Path(owners_file)), risk_needs_cosigning(actions)


def signature_findings(path: Path, template, signing) -> list:
    """Warnings for a template short of valid owners' signatures (``--strict`` makes them count)."""
    from broker.domain.guardrails import Finding
    from broker.storage.template_files import verify_signatures

    if signing is None:
        return []
    rule, risky = signing
    try:
        verdict = verify_signatures(path.parent, template, rule, risky=risky)
    except BrokerError as exc:
        return [Finding("signature_unreadable", "warning", "signatures", exc.diagnostics(), template=template.name,
                        source=str(path))]
    if verdict.satisfied:
        return []
    return [Finding("template_signatures_missing", "warning", "signatures",
                    verdict.message() + "; `broker serve` will refuse it (sign with `broker scopes sign`)",
                    template=template.name, source=str(path))]


# --------------------------------------------------------------------------------------------- diff

def run_diff(args: argparse.Namespace) -> int:
    from broker.aws.action_database import default_action_knowledge
    from broker.domain.template_diff import diff_catalogs
    from broker.storage.template_files import templates_at

    try:
        old, new = templates_at(args.old), templates_at(args.new)
    except BrokerError as exc:
        return _fail(exc)
    diff = diff_catalogs(old, new, actions=default_action_knowledge())
    print(json.dumps(diff.to_dict(), indent=2) if args.format == "json" else diff.to_text())
    return EXIT_FINDINGS if diff.widens else EXIT_OK


# --------------------------------------------------------------------------------------------- sign

def run_sign(args: argparse.Namespace) -> int:
    from broker.domain.log import load_signing_key
    from broker.domain.template_signatures import sign_template, signature_file_name
    from broker.storage.template_files import read_template, write_signature

    try:
        template = read_template(args.template)
        key = load_signing_key(args.key.read_bytes())
    except OSError:
        print(f"error: cannot read the key file {args.key}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BrokerError as exc:
        return _fail(exc)
    signature = sign_template(template, owner=args.owner, key=key)
    path = write_signature(args.template.parent, signature)
    print(f"signed {template.name} {template.version_digest} as {args.owner} (key {signature.key_id}): {path}")
    print(f"(a change to the template invalidates this signature; {signature_file_name(template.name, args.owner)} "
          "is relative to the template folder)", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------------------------- log input

def log_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issuance log: an export file (verified first when --public-key is given), or the API's export."""
    if args.log is not None:
        try:
            data = args.log.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read the log export {args.log}", code="log_export_unreadable") from exc
    else:
        data = _export_from_api(args)
    lines = data.splitlines(keepends=True)
    if args.public_key is not None:
        from broker.domain.log import load_public_key, verify_export

        try:
            pem = args.public_key.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read the public key {args.public_key}", code="public_key_invalid",
                               field="public_key") from exc
        report = verify_export(lines, load_public_key(pem))
        if not report.ok:
            raise InvalidInput(f"the log export does not verify [{report.problem}]: {report.message}",
                               code="log_export_tampered")
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"log export line {number} is not JSON", code="log_export_unreadable") from exc
        # NOTE: an export also holds its checkpoint (and export statement) lines: entries are the lines with a seq.
        if isinstance(item, dict) and "seq" in item and "type" in item:
            entries.append(item)
    return entries


def _export_from_api(args: argparse.Namespace) -> bytes:
    from broker.cli.connection import resolve
    from broker.sdk.errors import BrokerAPIError

    try:
        connection = resolve(args)
        with connection.client() as client:
            return "".join(line + "\n" for line in client.export_events()).encode("utf-8")
    except BrokerAPIError as exc:
        raise InvalidInput(f"the log export could not be fetched from the broker ({exc}); pass --log FILE "
                           "or a reviewer's token", code="log_export_unreadable") from exc


def _window(args: argparse.Namespace) -> tuple[datetime, datetime]:
    from broker.domain.log import parse_since

    now = datetime.now(UTC)
    since = parse_since(args.since, now)
    until = parse_since(args.until, now) if args.until else now
    return since, until


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cloudtrail", type=Path, nargs="+", required=True, metavar="PATH",
                        help="CloudTrail log files or folders (e.g. what `aws s3 sync` fetched), *.json(.gz)")
    parser.add_argument("--log", type=Path, default=None, metavar="EXPORT",
                        help="an export from `broker audit export` (default: fetch it from the broker's API)")
    parser.add_argument("--public-key", type=Path, default=None, metavar="PEMFILE",
                        help="verify the export with the broker's log key first")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    # Without --log, the export comes from the API as a reviewer: the same connection options as every command.
    add_api_options(parser)


# --------------------------------------------------------------------------------------------- usage

def run_usage(args: argparse.Namespace) -> int:
    from broker.aws.action_database import default_action_knowledge
    from broker.domain.template_diff import compare_templates
    from broker.storage.cloudtrail_files import read_trail
    from broker.storage.template_files import load_catalog, template_yaml
    from broker.usecases.template_usage import measure, suggest

    actions = default_action_knowledge()
    try:
        template = load_catalog(_scopes_dir(args)).get(args.name)
        trail = read_trail(args.cloudtrail)
        entries = log_entries(args)
    except BrokerError as exc:
        return _fail(exc)
    usage = measure(template, entries=entries, trail=trail, actions=actions)
    print(json.dumps(usage.to_dict(), indent=2) if args.format == "json" else usage.to_text())
    if args.suggest is None:
        return EXIT_OK
    try:
        tightened = suggest(template, usage, actions=actions)
    except BrokerError as exc:
        print(f"no suggestion [{exc.code}]: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_FINDINGS
    header = (f"# Tightened by `broker scopes usage {template.name} --suggest` from {usage.sessions_with_calls} "
              f"session(s) and {usage.calls} CloudTrail call(s) ({usage.first} .. {usage.last}).\n"
              f"# Review it, then lint, diff, sign and reload it like any other change.\n")
    args.suggest.write_text(header + template_yaml(tightened), encoding="utf-8")
    change = compare_templates(template, tightened, actions=actions)
    print(f"\nwrote {args.suggest}; against the current version:\n{change.to_text()}", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------------------------- reconcile

def run_reconcile(args: argparse.Namespace) -> int:
    from broker.domain.evaluator import arn_matches
    from broker.storage.cloudtrail_files import read_trail
    from broker.storage.template_files import load_catalog, template_roles
    from broker.usecases.cloudtrail_reconcile import reconcile

    try:
        since, until = _window(args)
        roles = list(args.role)
        if not roles:
            roles = template_roles(load_catalog(_scopes_dir(args)).all())
        trail = read_trail(args.cloudtrail)
        entries = log_entries(args)
        result = reconcile(entries=entries, trail=trail, since=since, until=until, target_roles=roles,
                           is_target_role=lambda arn: any(arn_matches(pattern, arn) for pattern in roles))
    except BrokerError as exc:
        return _fail(exc)
    print(json.dumps(result.to_dict(), indent=2) if args.format == "json" else result.to_text())
    return EXIT_OK if result.complete else EXIT_FINDINGS


# --------------------------------------------------------------------------------------------- registration

def register_scopes(sub) -> None:
    """``broker scopes diff / sign / usage`` (called by broker.cli.scopes)."""
    diff = sub.add_parser("diff", help="what changed between two template folders, files or git revisions "
                                       "(exit 0 narrows or same, 1 widens, 2 unusable)")
    diff.add_argument("old", help="folder, file, or REV:PATH (e.g. HEAD~1:scopes)")
    diff.add_argument("new", help="folder, file, or REV:PATH")
    diff.add_argument("--format", choices=["text", "json"], default="text")
    diff.set_defaults(func=run_diff)

    sign = sub.add_parser("sign", help="sign a template's version digest with a template owner's Ed25519 key")
    sign.add_argument("template", type=Path, help="the template file")
    sign.add_argument("--key", type=Path, required=True, help="the owner's Ed25519 private key (PEM)")
    sign.add_argument("--owner", required=True, help="the owner's name, as in the owners file")
    sign.set_defaults(func=run_sign)

    usage = sub.add_parser("usage", help="per statement: granted actions and resources used, never used, denied "
                                         "(from CloudTrail, for sessions the log says came from TEMPLATE)")
    usage.add_argument("name", help="template name")
    usage.add_argument("--scopes", type=Path, default=None, help="template folder")
    usage.add_argument("--suggest", type=Path, default=None, metavar="FILE",
                       help="write a tightened template (unused actions removed, wildcards narrowed) here")
    _add_log_options(usage)
    usage.set_defaults(func=run_usage)


def register_audit(commands) -> None:
    """``broker audit reconcile`` (called by broker.cli.audit)."""
    rec = commands.add_parser("reconcile", help="every AssumeRole of a target role in CloudTrail against the log, "
                                                "both ways (exit 0 complete, 1 gaps, 2 unusable)")
    rec.add_argument("--since", default="24h", help="window start: 7d, 24h, 30m or an ISO time (default 24h)")
    rec.add_argument("--until", default=None, help="window end (default now)")
    rec.add_argument("--role", action="append", default=[], metavar="ARN_PATTERN",
                     help="a target role (wildcards allowed); default: every role the templates name")
    rec.add_argument("--scopes", type=Path, default=None, help="template folder (for the default target roles)")
    _add_log_options(rec)
    rec.set_defaults(func=run_reconcile)
