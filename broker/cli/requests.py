"""``broker requests pending | mine | show | cancel``, ``broker approve``, ``broker deny``, ``broker grants list``.

HTTP calls to the broker through the SDK's client (``broker.cli.connection``: ``--url``, ``--token`` /
``--token-file`` / ``--token-command``, ``--context``, or their BROKER_* variables); an API error is shown as
``error [code]: message`` with exit code 1 (by ``broker.cli.main``).  ``--format json`` prints the API's JSON
unchanged.  A request or grant id may be given as a unique prefix of at least 4 characters.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from broker.cli.connection import add_api_options, call_api, client_for
from broker.cli.output import add_format_option, emit, one_line, table
from broker.errors import InvalidInput, NotFound
from broker.sdk.errors import Forbidden

FULL_ID_CHARS = 36  # a UUID
MIN_PREFIX = 4
# Columns of `requests pending`: header -> how to read it from a request view.
PENDING_COLUMNS: dict[str, Any] = {
    "ID": lambda r: r["id"],
    "TEMPLATE": lambda r: r["template"],
    "ENV": lambda r: r.get("environment"),
    "AGENT": lambda r: r.get("requester"),
    "ACTS FOR": lambda r: r.get("acts_for"),
    "APPROVALS": lambda r: f"{r.get('approvals_counted', 0)}/{r.get('approvals_required', 0)}",
    "EXPIRES": lambda r: r.get("pending_expires_at"),
    "REASON": lambda r: one_line(r.get("reason"), 40),
}
# Lines of `requests show`: label -> how to read it.
SHOW_FIELDS: dict[str, Any] = {
    "Request": lambda r: r["id"],
    "Status": lambda r: r["status"],
    "Scope": lambda r: f"{r['template']} ({r.get('environment')})",
    "Agent": lambda r: r.get("requester"),
    "Acts for": lambda r: r.get("acts_for"),
    "Reason": lambda r: one_line(r.get("reason"), 200),
    "Parameters": lambda r: ", ".join(f"{k}={v}" for k, v in sorted((r.get("parameters") or {}).items())),
    "Role": lambda r: r.get("role_arn"),
    "TTL": lambda r: f"{r.get('ttl_seconds')} s (starts at redemption)",
    "Approvals": lambda r: f"{r.get('approvals_counted', 0)} of {r.get('approvals_required', 0)} "
                           f"(from {', '.join(r.get('approvers') or []) or '-'})",
    "Created": lambda r: r.get("created_at"),
    "Expires": lambda r: r.get("pending_expires_at"),
    "Redeem by": lambda r: r.get("redeem_by"),
    "Decided": lambda r: r.get("decided_reason"),
    "Binding": lambda r: r.get("binding_digest"),
    "Page": lambda r: (r.get("links") or {}).get("page"),
}


MINE_COLUMNS: dict[str, Any] = {
    "ID": lambda r: r["id"][:8], "STATUS": lambda r: r["status"], "TEMPLATE": lambda r: r["template"],
    "ENV": lambda r: r.get("environment"), "CREATED": lambda r: r.get("created_at"),
    "GRANT": lambda r: (r.get("grant_id") or "")[:8], "REASON": lambda r: one_line(r.get("reason"), 40),
}
GRANT_COLUMNS: dict[str, Any] = {
    "GRANT": lambda g: g["id"][:8], "ACCESS KEY ID": lambda g: g["access_key_id"], "AGENT": lambda g: g["agent"],
    "ACTS FOR": lambda g: g.get("acts_for"), "TEMPLATE": lambda g: g["template"],
    "EXPIRES": lambda g: g["expiration"], "STATUS": lambda g: g["status"],
}


# --- HTTP ----------------------------------------------------------------------------------------

def _unique(prefix: str, ids: list[str], kind: str) -> str:
    matches = sorted({i for i in ids if i.startswith(prefix)})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f"no {kind} you can see starts with {prefix!r}", code=f"{kind}_not_found", field="id")
    raise InvalidInput(f"{prefix!r} names {len(matches)} {kind}s ({', '.join(m[:12] for m in matches[:5])}): "
                       "give more characters", code="ambiguous_id", field="id")


def _checked(given: str, kind: str) -> bool:
    """True when ``given`` is a whole id; False for a prefix to look up; an error when it is neither."""
    if not given or len(given) > 64:
        raise InvalidInput(f"a {kind} id is 1 to 64 characters", code=f"invalid_{kind}_id", field="id")
    if len(given) >= FULL_ID_CHARS:
        return True
    if len(given) < MIN_PREFIX:
        raise InvalidInput(f"give at least {MIN_PREFIX} characters of the {kind} id", code=f"invalid_{kind}_id",
                           field="id")
    return False


def resolve_request_id(args: argparse.Namespace, given: str) -> str:
    """A full request id, from a unique prefix of the ids this principal can list (its own, and pending ones)."""
    if _checked(given, "request"):
        return given
    with client_for(args) as client:
        ids = [r["id"] for r in client.my_requests()]
        try:
            ids += [r["id"] for r in client.pending_requests()]
        except Forbidden:
            pass  # an agent lists only its own
    return _unique(given, ids, "request")


def resolve_grant_id(args: argparse.Namespace, given: str) -> str:
    if _checked(given, "grant"):
        return given
    with client_for(args) as client:
        return _unique(given, [g["id"] for g in client.grants(include_expired=True)], "grant")


def _request_path(request_id: str, suffix: str = "") -> str:
    return f"/v1/requests/{quote(request_id, safe='')}{suffix}"


# --- rendering -----------------------------------------------------------------------------------

def render_pending(requests: list[Mapping[str, Any]]) -> str:
    return table(PENDING_COLUMNS, requests, empty="No requests are waiting for approval.")


def render_request(view: Mapping[str, Any]) -> str:
    width = max(len(label) for label in SHOW_FIELDS) + 1
    lines = [f"{(label + ':').ljust(width)} {value}" for label, read in SHOW_FIELDS.items()
             if (value := read(view)) not in (None, "")]
    approvals = view.get("approvals") or []
    if approvals:
        lines.append("")
        lines.append("Decisions so far:")
        lines += [f"  {a['at']}  {a['approver']}  {a['decision']}  {one_line(a.get('reason'), 80)}"
                  for a in approvals]
    blast = view.get("blast_radius") or {}
    if blast.get("summary"):
        lines.append("")
        lines.append("Blast radius:")
        lines += [f"  - {sentence}" for sentence in blast["summary"]]
        for label, key in (("Destructive", "destructive"), ("Changes permissions", "permission_changing")):
            if blast.get(key):
                lines.append(f"  {label}: {', '.join(map(str, blast[key]))}")
    lines.append("")
    lines.append("Session policy (exactly what would be minted):")
    lines.append(json.dumps(view.get("policy"), indent=2, sort_keys=True))
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------

def _pending(args: argparse.Namespace) -> int:
    data = call_api(args, "GET", "/v1/requests")
    emit(args, data, render_pending(list(data.get("requests") or [])))
    return 0


def _mine(args: argparse.Namespace) -> int:
    data = call_api(args, "GET", "/v1/requests/mine", params={"status": args.status})
    emit(args, data, table(MINE_COLUMNS, list(data.get("requests") or []), empty="You have no requests."))
    return 0


def _show(args: argparse.Namespace) -> int:
    view = call_api(args, "GET", _request_path(resolve_request_id(args, args.id)))
    emit(args, view, render_request(view))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    view = call_api(args, "POST", _request_path(resolve_request_id(args, args.id), "/cancel"))
    emit(args, view, f"request {view['id']} ({view['template']}) is {view['status']}")
    return 0


def _decide(args: argparse.Namespace) -> int:
    if not args.reason or not args.reason.strip():
        raise InvalidInput("a reason is required (--reason)", code="missing_reason", field="reason")
    view = call_api(args, "POST", _request_path(resolve_request_id(args, args.id), "/approvals"),
                    {"decision": args.decision, "reason": args.reason})
    verb = "approved" if args.decision == "approve" else "denied"
    text = (f"You {verb} request {view['id']} ({view['template']}). Status: {view['status']}; "
            f"approvals {view.get('approvals_counted', 0)} of {view.get('approvals_required', 0)}.")
    emit(args, view, text)
    return 0


def _grants(args: argparse.Namespace) -> int:
    data = call_api(args, "GET", "/v1/grants", params={"agent": args.agent, "access_key_id": args.access_key_id,
                                                        "include_expired": "true" if args.all else None})
    emit(args, data, table(GRANT_COLUMNS, list(data.get("grants") or []), empty="No live grants."))
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_api_options(parser)
    add_format_option(parser)


def register(subparsers) -> None:
    requests = subparsers.add_parser("requests", help="credential requests: pending, your own, one in full, cancel")
    sub = requests.add_subparsers(dest="requests_command", metavar="COMMAND", required=True)
    pending = sub.add_parser("pending", help="list requests waiting for approval (approvers)",
                             epilog="example: broker requests pending --format json")
    _add_common(pending)
    pending.set_defaults(func=_pending)
    mine = sub.add_parser("mine", help="your own requests (or your agents'), newest first",
                          epilog="example: broker requests mine --status pending")
    mine.add_argument("--status", default=None, help="only requests in this state (pending, issued, denied, ...)")
    _add_common(mine)
    mine.set_defaults(func=_mine)
    show = sub.add_parser("show", help="one request: agent, human, reason, blast radius, exact policy",
                          epilog="example: broker requests show 3f2a   (a unique prefix is enough)")
    show.add_argument("id", help="request id, or a unique prefix of at least 4 characters")
    _add_common(show)
    show.set_defaults(func=_show)
    cancel = sub.add_parser("cancel", help="withdraw your own pending request",
                            epilog="example: broker requests cancel 3f2a")
    cancel.add_argument("id", help="request id, or a unique prefix of at least 4 characters")
    _add_common(cancel)
    cancel.set_defaults(func=_cancel)
    for decision, name, help_text in (("approve", "approve", "co-sign a pending request"),
                                      ("deny", "deny", "deny a pending request")):
        parser = subparsers.add_parser(name, help=help_text,
                                       epilog=f"example: broker {name} 3f2a --reason 'change ticket CHG-118'")
        parser.add_argument("id", help="request id, or a unique prefix of at least 4 characters")
        parser.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
        _add_common(parser)
        parser.set_defaults(func=_decide, decision=decision)

    grants = subparsers.add_parser("grants", help="issued sessions: access key id, agent, template, expiry")
    grants_sub = grants.add_subparsers(dest="grants_command", metavar="COMMAND", required=True)
    listing = grants_sub.add_parser("list", help="live grants you may see (admins and reviewers: all)",
                                    epilog="example: broker grants list --agent agent:demo --format json")
    listing.add_argument("--agent", default=None, help="only this agent's grants")
    listing.add_argument("--access-key-id", default=None, help="the grant of this AWS access key id")
    listing.add_argument("--all", action="store_true", help="include expired and revoked grants")
    _add_common(listing)
    listing.set_defaults(func=_grants)
