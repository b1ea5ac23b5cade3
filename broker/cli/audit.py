"""``broker audit``: query, export, verify and report on the issuance log.

``verify`` works offline on an export file and the broker's public key.  The other
sub-commands call the broker's HTTP API (the connection options every command takes: ``--url``, ``--token``,
``--token-file``, ``--token-command``, ``--context``); an API error is shown as ``error [code]: message`` with exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from broker.cli import governance
from broker.cli.connection import add_api_options, api_error, client_for
from broker.domain.log import CHECKPOINT_KEY, Checkpoint, load_public_key, parse_since, verify_signature
from broker.errors import BrokerError, InvalidInput, Unavailable
from broker.sdk.client import BrokerClient
from broker.sdk.errors import BrokerAPIError, BrokerUnreachable
from broker.storage.export_files import verify_export_file

EXIT_OK, EXIT_TAMPERED, EXIT_UNUSABLE = 0, 1, 2

# Table columns of `audit query`: header -> entry field.
QUERY_COLUMNS = {
    "SEQ": "seq", "TIME": "time", "TYPE": "type", "ACTOR": "actor", "TEMPLATE": "template",
    "REQUEST ID": "request_id", "ACCESS KEY ID": "access_key_id",
}
# Query filters: option dest -> API parameter.
QUERY_FILTERS = {
    "agent": "agent", "human": "human", "template": "template", "type": "type",
    "request_id": "request_id", "access_key_id": "access_key_id", "since": "since",
    "until": "until", "after_seq": "after_seq", "limit": "limit",
}
# Report sections whose name contains one of these come first, in this order: who refused how often
# (a flooding agent, its suppressed refusals), then each logged refusal, then destructive grants.
REPORT_FIRST = ("refusals_by_principal", "refus", "destructive")


# --- HTTP --------------------------------------------------------------------------------------
# Through the SDK's client (broker.cli.connection): one error decoder for every command.

@contextmanager
def _api(args: argparse.Namespace) -> Iterator[BrokerClient]:
    """The SDK's client for this command; an API error as the ``BrokerError`` main shows, no answer as Unavailable."""
    client = client_for(args)
    try:
        with client:
            yield client
    except BrokerUnreachable as exc:
        raise Unavailable(f"Cannot talk to the broker at {client.url}.") from exc
    except BrokerAPIError as exc:
        raise api_error(exc) from exc


def _get_json(args: argparse.Namespace, path: str, params: Mapping[str, Any]) -> Any:
    with _api(args) as client:
        return client.call("GET", path, params=params)


def _checked_since(text: str | None) -> str | None:
    """Validate a --since/--until value locally (7d, 24h, 30m or ISO); send it as written."""
    if text is not None:
        parse_since(text, datetime.now(UTC))
    return text


# --- audit query ---------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def render_table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> str:
    """A plain-text table: ``columns`` maps header -> field."""
    cells = [[_cell(row.get(field)) for field in columns.values()] for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells])
              for i, header in enumerate(columns)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
             for line in [list(columns), *cells]]
    return "\n".join(lines)


def _query(args: argparse.Namespace) -> int:
    params = {api: getattr(args, dest) for dest, api in QUERY_FILTERS.items()}
    params["since"], params["until"] = _checked_since(args.since), _checked_since(args.until)
    events: list[dict[str, Any]] = []
    while True:
        page = _get_json(args, "/v1/events", params)
        events.extend(page.get("events") or [])
        next_after = page.get("next_after_seq")
        if not (args.all and next_after is not None):
            break
        params["after_seq"] = next_after
    if args.format == "json":
        print(json.dumps(events, indent=2, ensure_ascii=False))
    else:
        print(render_table(events, QUERY_COLUMNS) if events else "No events.")
    if next_after is not None and not args.all:
        print(f"More events: --after-seq {next_after} (or --all).", file=sys.stderr)
    return EXIT_OK


# --- audit export --------------------------------------------------------------------------------

def _export(args: argparse.Namespace) -> int:
    params = {"since": _checked_since(args.since)}
    with _api(args) as client, client.stream("/v1/events/export", params=params) as chunks:
        # Opened only once the broker has answered 2xx: an error leaves no empty file behind.
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
        try:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
        finally:
            if args.output:
                out.close()
    return EXIT_OK


# --- audit verify --------------------------------------------------------------------------------

def _read_trusted(path: str, keys: list) -> list[Checkpoint]:
    """Checkpoints an auditor kept: JSON objects (GET /v1/events/checkpoints/latest, or export
    checkpoint lines), one per line or one per file; each must be signed by one of the keys."""
    with open(path, "rb") as kept:
        text = kept.read()
    checkpoints = []
    for raw in text.splitlines() or [b""]:
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"{path} is not JSON lines of checkpoints.", code="checkpoint_invalid") from exc
        checkpoint = Checkpoint.from_dict(data.get(CHECKPOINT_KEY, data) if isinstance(data, dict) else data)
        if not any(verify_signature(checkpoint, key) for key in keys):
            raise InvalidInput(f"the trusted checkpoint for seq {checkpoint.seq} in {path} is not signed by the "
                               "given key.", code="checkpoint_invalid")
        checkpoints.append(checkpoint)
    if not checkpoints:
        raise InvalidInput(f"{path} holds no checkpoint.", code="checkpoint_invalid")
    return checkpoints


def _anchored(url: str, keys: list) -> list[Checkpoint]:
    """The checkpoints anchored at ``s3://bucket/prefix`` (AWS credentials and endpoint from the environment)."""
    from broker.aws.anchors import S3CheckpointAnchors, parse_anchor_url

    bucket, prefix = parse_anchor_url(url)
    anchored = S3CheckpointAnchors(bucket=bucket, prefix=prefix).checkpoints()
    for checkpoint in anchored:
        if not any(verify_signature(checkpoint, key) for key in keys):
            raise InvalidInput(f"the anchored checkpoint for seq {checkpoint.seq} in {url} is not signed by the "
                               "given key.", code="anchor_invalid")
    if not anchored:
        raise InvalidInput(f"no checkpoint is anchored in {url}.", code="anchor_invalid")
    return anchored


def _verify(args: argparse.Namespace) -> int:
    keys, trusted, anchored = [], [], []
    try:
        for path in args.public_key:
            with open(path, "rb") as pem:
                keys.append(load_public_key(pem.read()))
        for path in args.trusted_checkpoint or ():
            trusted.extend(_read_trusted(path, keys))
        if args.anchors:
            anchored = _anchored(args.anchors, keys)
    except OSError as exc:
        print(f"error: cannot read {exc.filename}.", file=sys.stderr)
        return EXIT_UNUSABLE
    except BrokerError as exc:  # unreadable keys or checkpoints, anchors unavailable
        print(f"error [{exc.code}]: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        # On every CPU for a large file; the report is the one-pass verifier's (broker.storage.export_files).
        report = verify_export_file(args.file, keys, require_genesis=args.complete, trusted=trusted,
                                    anchored=anchored)
    except OSError:
        print(f"error: cannot read the export file {args.file}.", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.format == "json":
        print(json.dumps(asdict(report), indent=2))
    elif report.ok:
        print(f"OK: {report.message}")
    else:
        print(f"TAMPERED [{report.problem}]: {report.message}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_TAMPERED


# --- audit report --------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s"]
    return " ".join(part for part in parts if part and (part != "0s" or seconds == 0))


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and key.endswith("_seconds"):
        return _duration(value)
    if isinstance(value, Mapping):  # a table cell such as suppressed_by_reason: code=count, ...
        return ", ".join(f"{name}={_cell(count)}" for name, count in value.items()) or "-"
    return _cell(value)


def _section_order(key: str) -> tuple[int, str]:
    for rank, word in enumerate(REPORT_FIRST):
        if word in key.lower():
            return rank, key
    return len(REPORT_FIRST), key


def render_report(report: Any, *, indent: str = "") -> str:
    """Readable text for the report JSON: scalars first, then sections (refusals and
    destructive grants before the rest), lists of objects as tables."""
    if not isinstance(report, Mapping):
        return indent + _cell(report)
    lines = [f"{indent}{key.replace('_', ' ')}: {_scalar(key, value)}"
             for key, value in report.items() if not isinstance(value, Mapping | list)]
    for key in sorted((k for k, v in report.items() if isinstance(v, Mapping | list)),
                      key=_section_order):
        value = report[key]
        lines.append(f"\n{indent}{key.replace('_', ' ').upper()}")
        if isinstance(value, Mapping):
            lines.append(render_report(value, indent=indent + "  "))
        elif not value:
            lines.append(f"{indent}  (none)")
        elif all(isinstance(item, Mapping) for item in value):
            headers: dict[str, str] = {}
            for item in value:
                headers.update({field.replace("_", " ").upper(): field for field in item})
            rows = [{field: _scalar(field, item.get(field)) for field in headers.values()}
                    for item in value]
            table = render_table(rows, headers)
            lines.extend(indent + "  " + line for line in table.splitlines())
        else:
            lines.extend(f"{indent}  - {_cell(item)}" for item in value)
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    report = _get_json(args, "/v1/events/report", {"since": _checked_since(args.since)})
    if args.format == "json":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(render_report(report))
    return EXIT_OK


# --- registration ------------------------------------------------------------------------------

def _add_api_options(parser: argparse.ArgumentParser) -> None:
    add_api_options(parser)


def _add_format(parser: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    parser.add_argument("--format", choices=choices, default=choices[0])


def register(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="query, export, verify and report on the log")
    audit.set_defaults(func=lambda _args: (audit.print_help(), EXIT_UNUSABLE)[1])
    commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")

    query = commands.add_parser("query", help="list log events")
    for option in ("agent", "human", "template", "type", "request-id", "access-key-id"):
        query.add_argument(f"--{option}")
    query.add_argument("--since", help="7d, 24h, 30m or an ISO time")
    query.add_argument("--until", help="7d, 24h, 30m or an ISO time")
    query.add_argument("--after-seq", type=int)
    query.add_argument("--limit", type=int)
    query.add_argument("--all", action="store_true", help="follow pages to the end")
    _add_format(query, ("table", "json"))
    _add_api_options(query)
    query.set_defaults(func=_query)

    export = commands.add_parser("export", help="write the log as JSONL with a signed checkpoint")
    export.add_argument("--since", help="7d, 24h, 30m or an ISO time (default: everything)")
    export.add_argument("--output", "-o", help="file to write (default: stdout)")
    _add_api_options(export)
    export.set_defaults(func=_export)

    verify = commands.add_parser("verify", help="check an export offline (exit 1 if tampered)")
    verify.add_argument("file", help="an export from `broker audit export`")
    verify.add_argument("--public-key", required=True, metavar="PEMFILE", action="append",
                        help="the broker's log key (GET /v1/events/public-key); repeat it for keys the log "
                             "was signed with before a rotation")
    verify.add_argument("--complete", action="store_true",
                        help="require the export to start at seq 1 (a full export's signed statement "
                             "requires it anyway)")
    verify.add_argument("--trusted-checkpoint", metavar="FILE", action="append",
                        help="a checkpoint kept from earlier (GET /v1/events/checkpoints/latest): refuse an "
                             "export that does not extend it; repeatable")
    verify.add_argument("--anchors", metavar="s3://BUCKET/PREFIX",
                        help="check the export against every checkpoint anchored there (BROKER_ANCHOR_BUCKET): "
                             "names a fork or a missing tail; AWS credentials from the environment")
    _add_format(verify, ("text", "json"))
    verify.set_defaults(func=_verify)

    report = commands.add_parser("report", help="per agent and template: issued, refused, "
                                                "approvals, time to approve; per principal: refusals, "
                                                "suppressed ones included")
    report.add_argument("--since", default="7d", help="7d, 24h, 30m or an ISO time")
    _add_format(report, ("text", "json"))
    _add_api_options(report)
    report.set_defaults(func=_report)

    governance.register_audit(commands)  # reconcile
