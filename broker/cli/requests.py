"""``broker requests pending|show``, ``broker approve``, ``broker deny``: co-signing from a terminal.

HTTP calls to the broker (``--url`` or ``BROKER_URL``, ``--token`` or ``BROKER_TOKEN``); an API
error is shown as ``error [code]: message`` with exit code 1 (by ``broker.cli.main``).
``--format json`` prints the API's JSON unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from broker.errors import BrokerError, InvalidInput, Unavailable

DEFAULT_URL = "http://127.0.0.1:8080"
HTTP_TIMEOUT = httpx.Timeout(30.0)
# Columns of `requests pending`: header -> how to read it from a request view.
PENDING_COLUMNS: dict[str, Any] = {
    "ID": lambda r: r["id"],
    "TEMPLATE": lambda r: r["template"],
    "ENV": lambda r: r.get("environment"),
    "AGENT": lambda r: r.get("requester"),
    "ACTS FOR": lambda r: r.get("acts_for"),
    "APPROVALS": lambda r: f"{r.get('approvals_counted', 0)}/{r.get('approvals_required', 0)}",
    "EXPIRES": lambda r: r.get("pending_expires_at"),
    "REASON": lambda r: _one_line(r.get("reason"), 40),
}
# Lines of `requests show`: label -> how to read it.
SHOW_FIELDS: dict[str, Any] = {
    "Request": lambda r: r["id"],
    "Status": lambda r: r["status"],
    "Scope": lambda r: f"{r['template']} ({r.get('environment')})",
    "Agent": lambda r: r.get("requester"),
    "Acts for": lambda r: r.get("acts_for"),
    "Reason": lambda r: _one_line(r.get("reason"), 200),
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


def _one_line(text: Any, limit: int) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- HTTP ----------------------------------------------------------------------------------------

def call_api(args: argparse.Namespace, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """One JSON call; the API's ``{"error": {...}}`` becomes a BrokerError with its code and status."""
    headers = {"Accept": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=HTTP_TIMEOUT,
                          trust_env=False) as client:
            response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise Unavailable(f"Cannot talk to the broker at {args.url}.", code="broker_unreachable") from exc
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            failure = BrokerError(str(error["message"]), code=str(error["code"]))
        except (ValueError, KeyError, TypeError):
            failure = BrokerError(f"The broker answered HTTP {response.status_code}.", code="http_error")
        failure.status = response.status_code
        raise failure
    try:
        return response.json()
    except ValueError as exc:
        raise Unavailable("The broker's answer is not JSON.", code="broker_unreachable") from exc


def _request_path(request_id: str, suffix: str = "") -> str:
    if not request_id or len(request_id) > 64:
        raise InvalidInput("a request id is 1 to 64 characters", code="invalid_request_id", field="id")
    return f"/v1/requests/{quote(request_id, safe='')}{suffix}"


# --- rendering -----------------------------------------------------------------------------------

def render_pending(requests: list[Mapping[str, Any]]) -> str:
    if not requests:
        return "No requests are waiting for approval."
    cells = [[str(read(r) or "-") for read in PENDING_COLUMNS.values()] for r in requests]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(PENDING_COLUMNS)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in [list(PENDING_COLUMNS), *cells])


def render_request(view: Mapping[str, Any]) -> str:
    width = max(len(label) for label in SHOW_FIELDS) + 1
    lines = [f"{(label + ':').ljust(width)} {value}" for label, read in SHOW_FIELDS.items()
             if (value := read(view)) not in (None, "")]
    approvals = view.get("approvals") or []
    if approvals:
        lines.append("")
        lines.append("Decisions so far:")
        lines += [f"  {a['at']}  {a['approver']}  {a['decision']}  {_one_line(a.get('reason'), 80)}"
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


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.format == "json" else text)


# --- commands ------------------------------------------------------------------------------------

def _pending(args: argparse.Namespace) -> int:
    data = call_api(args, "GET", "/v1/requests")
    requests = list(data.get("requests") or [])
    _emit(args, data, render_pending(requests))
    return 0


def _show(args: argparse.Namespace) -> int:
    view = call_api(args, "GET", _request_path(args.id))
    _emit(args, view, render_request(view))
    return 0


def _decide(args: argparse.Namespace) -> int:
    if not args.reason or not args.reason.strip():
        raise InvalidInput("a reason is required (--reason)", code="missing_reason", field="reason")
    view = call_api(args, "POST", _request_path(args.id, "/approvals"),
                    {"decision": args.decision, "reason": args.reason})
    verb = "approved" if args.decision == "approve" else "denied"
    text = (f"You {verb} request {view['id']} ({view['template']}). Status: {view['status']}; "
            f"approvals {view.get('approvals_counted', 0)} of {view.get('approvals_required', 0)}.")
    _emit(args, view, text)
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("BROKER_URL", DEFAULT_URL),
                        help="broker URL (env BROKER_URL, default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("BROKER_TOKEN"),
                        help="your API key or OIDC token (env BROKER_TOKEN)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def register(subparsers) -> None:
    requests = subparsers.add_parser("requests", help="credential requests waiting for co-signers")
    sub = requests.add_subparsers(dest="requests_command", metavar="COMMAND", required=True)
    pending = sub.add_parser("pending", help="list requests waiting for approval (approvers)")
    _add_common(pending)
    pending.set_defaults(func=_pending)
    show = sub.add_parser("show", help="one request: agent, human, reason, blast radius, exact policy")
    show.add_argument("id")
    _add_common(show)
    show.set_defaults(func=_show)
    for decision, name, help_text in (("approve", "approve", "co-sign a pending request"),
                                      ("deny", "deny", "deny a pending request")):
        parser = subparsers.add_parser(name, help=help_text)
        parser.add_argument("id")
        parser.add_argument("--reason", required=True, help="why (recorded in the issuance log)")
        _add_common(parser)
        parser.set_defaults(func=_decide, decision=decision)
