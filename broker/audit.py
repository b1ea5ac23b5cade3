"""Reviewers' use cases over the issuance log: query, checkpoints, export, correlation, report."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain import log as issuance_log
from broker.domain.principals import Principal, Role
from broker.errors import Forbidden, InvalidInput, NotFound, StorageUnavailable
from broker.ports import Clock
from broker.storage.engine import Database

EVENT_FILTERS = ("agent", "human", "template", "type", "request_id", "access_key_id", "grant_id")
PAGE_MAX = 1000


def require_reviewer(principal: Principal) -> None:
    if not (principal.has_role(Role.REVIEWER) or principal.has_role(Role.ADMIN)):
        raise Forbidden("reading the issuance log needs the reviewer role", code="role_required")


@dataclass
class AuditLog:
    database: Database
    signer: issuance_log.CheckpointSigner
    clock: Clock

    def query(self, *, principal: Principal, filters: Mapping[str, Any], after_seq: int = 0, limit: int = 100,
              since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
        require_reviewer(principal)
        if not 1 <= limit <= PAGE_MAX:
            raise InvalidInput(f"limit must be between 1 and {PAGE_MAX}", code="invalid_limit", field="limit")
        with self.database.transaction() as repo:
            events = repo.query_events(filters=filters, after_seq=after_seq, limit=limit + 1, since=since,
                                       until=until)
        more = len(events) > limit
        events = events[:limit]
        return {"events": events, "next_after_seq": events[-1]["seq"] if more and events else None}

    def checkpoint(self) -> issuance_log.Checkpoint:
        """Sign the current head (idempotent for an unchanged head).

        Two replicas may sign the same head at once; the loser's insert conflicts, and the
        second attempt finds the winner's checkpoint.
        """
        try:
            return self._checkpoint_once()
        except StorageUnavailable:
            return self._checkpoint_once()

    def latest_checkpoint(self, *, principal: Principal) -> issuance_log.Checkpoint:
        """The newest signed checkpoint, as stored (reading takes none)."""
        require_reviewer(principal)
        with self.database.transaction() as repo:
            latest = repo.latest_checkpoint()
        if latest is None:
            raise NotFound("no checkpoint has been signed yet", code="checkpoint_not_found")
        return latest

    def _checkpoint_once(self) -> issuance_log.Checkpoint:
        with self.database.transaction() as repo:
            seq, head = repo.log_head()
            latest = repo.latest_checkpoint()
            if latest is not None and latest.seq == seq and latest.key_id == self.signer.key_id:
                return latest
            checkpoint = self.signer.sign(seq, head, issuance_log.log_time(self.clock.now()))
            repo.add_checkpoint(checkpoint)
            return checkpoint

    def export(self, *, principal: Principal, since: datetime | None = None) -> Iterator[bytes]:
        """JSONL: entries (from ``since``) up to a fresh checkpoint, then the checkpoint line."""
        require_reviewer(principal)
        checkpoint = self.checkpoint()
        after = 0
        while True:
            with self.database.transaction() as repo:
                page = repo.query_events(filters={}, after_seq=after, limit=PAGE_MAX, since=since)
            page = [entry for entry in page if entry["seq"] <= checkpoint.seq]
            for entry in page:
                yield issuance_log.entry_line(entry) + b"\n"
            if len(page) < PAGE_MAX:
                break
            after = page[-1]["seq"]
        yield issuance_log.canonical_json({issuance_log.CHECKPOINT_KEY: checkpoint.to_dict()}) + b"\n"

    def correlate(self, *, principal: Principal, access_key_id: str | None = None,
                  source_identity: str | None = None) -> dict[str, Any]:
        """From what CloudTrail shows (access key id or SourceIdentity) to request, template and approvals."""
        require_reviewer(principal)
        if not access_key_id and not source_identity:
            raise InvalidInput("give an access_key_id or a source_identity", code="missing_filter")
        with self.database.transaction() as repo:
            grants = repo.find_grants(access_key_id=access_key_id or None, source_identity=source_identity or None)
            if not grants:
                raise NotFound("no grant matches", code="grant_not_found")
            results = []
            for grant in grants[-50:]:
                request = repo.get_request(grant.request_id)
                results.append({
                    "grant": {"id": grant.id, "access_key_id": grant.access_key_id, "role_arn": grant.role_arn,
                              "source_identity": grant.source_identity, "session_name": grant.session_name,
                              "issued_at": issuance_log.log_time(grant.issued_at),
                              "expiration": issuance_log.log_time(grant.expiration),
                              "revoked_at": grant.revoked_at and issuance_log.log_time(grant.revoked_at)},
                    "request": None if request is None else {
                        "id": request.id, "template": request.template, "template_digest": request.template_digest,
                        "requester": request.requester, "acts_for": request.acts_for, "reason": request.reason,
                        "policy_digest": request.policy_digest, "status": request.status},
                    "approvals": [{"approver": a.approver, "decision": a.decision, "reason": a.reason,
                                   "at": issuance_log.log_time(a.created_at)}
                                  for a in repo.approvals_for(grant.request_id)],
                    "events": repo.query_events(filters={"request_id": grant.request_id}, limit=PAGE_MAX),
                })
        return {"matches": results}

    def report(self, *, principal: Principal, since: datetime) -> dict[str, Any]:
        require_reviewer(principal)
        rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
            lambda: {"issued": 0, "refused": 0, "approvals": 0, "denied": 0, "pending": 0, "waits": []})
        opened: dict[str, datetime] = {}
        refusals: list[dict[str, Any]] = []
        destructive: list[dict[str, Any]] = []
        after = 0
        while True:
            with self.database.transaction() as repo:
                page = repo.query_events(filters={}, after_seq=after, limit=PAGE_MAX, since=since)
            for entry in page:
                key = (entry.get("actor") if entry["type"] in ("requested", "refused", "issued", "pending")
                       else (entry.get("details") or {}).get("requester") or entry.get("actor") or "?",
                       entry.get("template") or "?")
                stats = rows[key]
                kind = entry["type"]
                when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
                if kind == "issued":
                    stats["issued"] += 1
                    if (entry.get("details") or {}).get("destructive"):
                        destructive.append(entry)
                elif kind == "refused":
                    stats["refused"] += 1
                    refusals.append({"seq": entry["seq"], "time": entry["time"], "actor": entry.get("actor"),
                                     "template": entry.get("template"), "reason_code": entry.get("reason_code")})
                elif kind == "pending":
                    stats["pending"] += 1
                    opened[entry["request_id"]] = when
                elif kind == "cosigned":
                    stats["approvals"] += 1
                elif kind == "denied":
                    stats["denied"] += 1
                elif kind == "approved" and entry.get("request_id") in opened:
                    stats["approvals"] += 1
                    stats["waits"].append((when - opened[entry["request_id"]]).total_seconds())
            if len(page) < PAGE_MAX:
                break
            after = page[-1]["seq"]
        summary = []
        for (agent, template), stats in sorted(rows.items()):
            waits = stats.pop("waits")
            summary.append({"agent": agent, "template": template, **stats,
                            "median_time_to_approve_seconds": statistics.median(waits) if waits else None})
        summary.sort(key=lambda r: (-r["refused"], -r["denied"], r["agent"], r["template"]))
        return {"since": issuance_log.log_time(since), "refusals": refusals,
                "destructive_grants": [{"seq": e["seq"], "time": e["time"], "template": e.get("template"),
                                        "request_id": e.get("request_id"), "actor": e.get("actor"),
                                        "access_key_id": e.get("access_key_id")} for e in destructive],
                "by_agent_and_template": summary}
