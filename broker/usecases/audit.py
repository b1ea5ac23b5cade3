"""Reviewers' use cases over the issuance log: query, checkpoints, export, correlation, report."""

from __future__ import annotations

import itertools
import json
import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.domain import log as issuance_log
from broker.domain.events import CARRYING_TYPES, REFUSAL_TYPES, RISK_FILTERS, EventType
from broker.domain.principals import Principal, Role
from broker.errors import Forbidden, InvalidInput, NotFound
from broker.ports import Clock, Store
from broker.usecases.refusal_budget import (UNATTRIBUTED, carried_announcements,
                             carried_refusals)
from broker.usecases.checkpoints import Checkpointer
from broker.domain.times import parse_time

log = logging.getLogger("broker.audit")

EVENT_FILTERS = ("agent", "human", "template", "type", "request_id", "access_key_id", "grant_id")
PAGE_MAX = 1000
CHECKPOINT_PAGE = 1000  # an export's read of checkpoints: 100,000 entries' worth at one per 100


def require_reviewer(principal: Principal) -> None:
    if not (principal.has_role(Role.REVIEWER) or principal.has_role(Role.ADMIN)):
        raise Forbidden("reading the issuance log needs the reviewer role", code="role_required")


@dataclass
class RefusalFigures:
    """One principal's refusals in a report: every refusal counted once (see broker.usecases.refusal_budget)."""

    one_by_one: int = 0          # `refused` entries
    announced: int = 0           # `refusals_suppressed` entries: one refusal each, one per window
    counted_announced: int = 0   # of those, the ones a carried count has reached the log for
    suppressed_by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, entry: Mapping[str, Any]) -> None:
        details = entry.get("details") or {}
        if entry["type"] == EventType.REFUSED:
            self.one_by_one += 1
        elif entry["type"] == EventType.REFUSALS_SUPPRESSED:
            self.announced += 1
            self.suppressed_by_reason[_reason(entry)] += 1
        self.suppressed_by_reason.update(carried_refusals(details))
        self.counted_announced += carried_announcements(details)

    def view(self, principal_id: str) -> dict[str, Any]:
        suppressed = sum(self.suppressed_by_reason.values())
        return {"principal": principal_id, "refused": self.one_by_one + suppressed,
                "logged_one_by_one": self.one_by_one, "suppressed": suppressed,
                "suppressed_by_reason": dict(sorted(self.suppressed_by_reason.items())),
                "suppression_windows": self.announced,
                "windows_awaiting_count": max(0, self.announced - self.counted_announced)}


def _reason(entry: Mapping[str, Any]) -> str:
    code = entry.get("reason_code")
    return code if isinstance(code, str) and code else UNATTRIBUTED


def unverified_seqs(entries: list[dict[str, Any]]) -> list[int]:
    """The seqs of entries whose stored body does not match its own hash (edited in the database)."""
    bad = [entry.get("seq") for entry in entries if issuance_log.entry_hash(entry) != entry.get("hash")]
    if bad:
        log.warning("reviewer query: stored entries seq %s do not match their hashes", bad[:20])
    return bad


# Where a request's rows must agree with its log entries: row attribute -> entry field (of `issued`).
_GRANT_FIELDS = {"id": "grant_id", "access_key_id": "access_key_id"}
_REQUEST_FIELDS = {"template": "template", "template_digest": "template_digest", "policy_digest": "policy_digest",
                   "requester": "actor"}


def _disagreements(grant: Any, request: Any, approvals: list[Any], events: list[dict[str, Any]]) -> list[str]:
    """What the database rows of one request say that its log entries do not (empty: they agree)."""
    found = [f"entry seq {seq} does not match its hash" for seq in unverified_seqs(events)]
    issued = next((entry for entry in events if entry.get("type") == EventType.ISSUED), None)
    if issued is not None:
        for row, fields, what in ((grant, _GRANT_FIELDS, "grant"), (request, _REQUEST_FIELDS, "request")):
            if row is None:
                found.append(f"the {what} row of the issued entry (seq {issued['seq']}) is missing")
                continue
            found += [f"{what}.{attribute} is {getattr(row, attribute)!r}, the issued entry says {issued.get(field)!r}"
                      for attribute, field in fields.items() if getattr(row, attribute) != issued.get(field)]
    elif grant is not None:
        found.append(f"grant {grant.id} has no issued entry in the log")
    for decision, kind in (("approve", EventType.COSIGNED), ("deny", EventType.DENIED)):
        rows = sorted(a.approver for a in approvals if a.decision == decision)
        logged = sorted(entry.get("actor") or "" for entry in events if entry.get("type") == kind)
        if rows != logged:
            found.append(f"approvals ({decision}) by {rows} in the database, {logged} in the log")
    return found


# Entries that move a request to a state; the last one in the range is where the request stands.
REQUEST_STATES = (EventType.PENDING, EventType.APPROVED, EventType.DENIED, EventType.EXPIRED, EventType.CANCELLED,
                  EventType.REDEEMING, EventType.ISSUED, EventType.FAILED)
# Decisions (and refused decisions) a person other than the requester takes on a request.
DECISIONS = (EventType.COSIGNED, EventType.DENIED, EventType.REFUSED)


def _agent_row() -> dict[str, Any]:
    return {"issued": 0, "refused": 0, "approvals": 0, "cosignatures": 0, "denied": 0, "pending": 0, "waits": []}


# The figures a row of ``by_agent_and_template`` adds up entry by entry, whatever the entry's request did before.
_ENTRY_COUNTS = ("refused", "cosignatures", "issued")
# A request's step for ReportTally.follow: (type, request id, (agent, template), time or None).
Step = tuple[Any, Any, tuple[Any, Any], Any]
# An approved entry's step without a time (a cached block's entries all have one: never in its figures' JSON).
_NO_TIME: Any = object()


# The version of the rules by which a closed block's figures are cached for the report (log_report_blocks and
# log_report_counts hold it in their primary keys): ReportTally's, and what decides which blocks are cached and
# what of them is kept (AuditLog.fill_report_blocks, block_counts' limits, the steps left out).  Bump it with any
# change to them: the rows of another version are then not read (their blocks are read from their bodies) and the
# blocks are filled again.  tests/storage/test_report_blocks.py pins a digest of these rules' code and fails when
# it changes without a bump.
REPORT_RULES = 1


class ReportTally:
    """The report's figures over entries read oldest first; every request counts once in each figure.

    Each entry adds, on its own (:meth:`count`), its refusal, co-signature, denial and issue counts and its
    rows of the lists, and hands back the step its request takes (:meth:`follow`: each request approved and
    denied once, the wait from its ``pending`` entry, where it stands at the end), which needs the steps before
    it.  So a closed block's figures can be added up once (:meth:`block_figures`) and a report adds them
    (:meth:`add_block`), replaying the block's steps in seq order, as if it had read the block's entries."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(_agent_row)
        self.approvers: dict[str, Counter[str]] = defaultdict(Counter)
        self.refusers: dict[str, RefusalFigures] = defaultdict(RefusalFigures)
        self.refusals: list[dict[str, Any]] = []
        self.destructive: list[dict[str, Any]] = []
        self.high_risk: list[dict[str, Any]] = []
        self._opened: dict[str, datetime] = {}
        self._approved: set[str] = set()
        self._denied: set[str] = set()
        self._state: dict[str, tuple[tuple[str, str], str]] = {}

    def add(self, entry: Mapping[str, Any]) -> None:
        step = self.count(entry)
        if step is not None:
            self.follow(step)

    def count(self, entry: Mapping[str, Any]) -> Step | None:
        """What the entry adds on its own; the step of its request, if it takes one (see :meth:`follow`)."""
        kind = entry["type"]
        if kind in CARRYING_TYPES:
            self.refusers[entry.get("actor") or "?"].add(entry)
        if kind == EventType.REFUSALS_SUPPRESSED_SUMMARY:
            return None  # a count only: no template, no request
        details = entry.get("details") or {}
        request_id = entry.get("request_id")
        actor = entry.get("actor") or "?"
        requester = details.get("requester") if request_id else None
        # A request's entries belong to its agent, whoever wrote them; others belong to their actor.
        key = (requester or actor, entry.get("template") or "?")
        by_someone_else = requester is not None and actor != requester
        if kind in REFUSAL_TYPES:
            self.refusals.append({"seq": entry["seq"], "time": entry["time"], "actor": entry.get("actor"),
                                  "template": entry.get("template"), "reason_code": entry.get("reason_code"),
                                  "type": kind})
            if by_someone_else:
                self.approvers[actor]["refused"] += 1  # a refused decision: the decider's, not the agent's
            else:
                self.rows[key]["refused"] += 1
        elif kind == EventType.COSIGNED:
            self.rows[key]["cosignatures"] += 1
            self.approvers[actor]["approved"] += 1
        elif kind == EventType.DENIED:
            self.approvers[actor]["denied"] += 1
        elif kind == EventType.ISSUED:
            self.rows[key]["issued"] += 1
            self._note_risk(entry, details)
        if kind in (EventType.DENIED, EventType.APPROVED, EventType.PENDING) or (request_id
                                                                                and kind in REQUEST_STATES):
            # NOTE: a pending entry's time is read here, an approved one's only if it is ever needed (as before).
            time = entry["time"] if kind == EventType.PENDING else entry.get("time", _NO_TIME) \
                if kind == EventType.APPROVED else None
            return (kind, request_id, key, time)
        return None

    def follow(self, step: Step) -> None:
        """A request's step, after every step before it: its first denial and first approval (with the wait
        from its last ``pending`` entry before it) count, and its last step says whether it is still pending."""
        kind, request_id, key, time = step
        if kind == EventType.DENIED:
            if request_id not in self._denied:
                self._denied.add(request_id)
                self.rows[key]["denied"] += 1
        elif kind == EventType.APPROVED and request_id not in self._approved:
            self._approved.add(request_id)
            self.rows[key]["approvals"] += 1
            if request_id in self._opened:
                if time is _NO_TIME:
                    raise KeyError("time")  # NOTE: as the walk before the cache, which read entry["time"]
                self.rows[key]["waits"].append((parse_time(time) - self._opened[request_id]).total_seconds())
        elif kind == EventType.PENDING:
            self._opened[request_id] = parse_time(time)
        if request_id and kind in REQUEST_STATES:
            self._state[request_id] = (key, kind)

    def _note_risk(self, entry: Mapping[str, Any], details: Mapping[str, Any]) -> None:
        risks = [str(r) for r in details.get("risks") or [] if isinstance(r, str)]
        environment = details.get("environment")
        shown = {"seq": entry["seq"], "time": entry["time"], "template": entry.get("template"),
                 "request_id": entry.get("request_id"), "actor": entry.get("actor"),
                 "access_key_id": entry.get("access_key_id"), "risks": risks, "environment": environment}
        if "destructive" in risks:
            self.destructive.append(shown)
        elif risks or environment == "production":
            self.high_risk.append(shown)

    def block_figures(self, steps: list[Step]) -> dict[str, Any]:
        """This tally's list rows (a block's entries, each through :meth:`count` only) and their requests'
        ``steps`` in seq order, as JSON values (:meth:`add_block` adds them to a report)."""
        return {"refusals": self.refusals, "destructive": self.destructive, "high_risk": self.high_risk,
                "steps": [[kind, request_id, list(key), time] for kind, request_id, key, time in steps]}

    def block_counts(self) -> list[tuple[str, str, str, str, int]] | None:
        """What this tally's entries add whatever their order, as (facet, principal, template, name, n)
        (:meth:`add_counts` adds them, summed over blocks); None when one of them could not be stored and summed
        as it is, on either database (:func:`_countable`): a principal or template that is not a text (a sum in
        SQL could not keep it apart from its equals: 1 and 1.0), or one the database would refuse."""
        counts = [("row", agent, template, name, stats[name]) for (agent, template), stats in self.rows.items()
                  for name in _ENTRY_COUNTS if stats[name]]
        counts += [("approver", who, "", name, n) for who, tally in self.approvers.items() for name, n in tally.items()]
        for who, figures in self.refusers.items():
            named = [("refuser", who, "", name, getattr(figures, name))
                     for name in ("one_by_one", "announced", "counted_announced") if getattr(figures, name)]
            named += [("refuser", who, "", f"reason:{code}", n) for code, n in figures.suppressed_by_reason.items()]
            counts += named or [("refuser", who, "", "one_by_one", 0)]  # a refuser with nothing to count is listed
        return counts if all(_countable(count) for count in counts) else None

    def add_counts(self, counts: list[tuple[str, str, str, str, int]]) -> None:
        """Counts of blocks (:meth:`block_counts`, summed), as if their entries were read here."""
        for facet, who, template, name, n in counts:
            if facet == "row":
                self.rows[(who, template)][name] += n
            elif facet == "approver":
                self.approvers[who][name] += n
            elif name.startswith("reason:"):
                self.refusers[who].suppressed_by_reason[name.removeprefix("reason:")] += n
            else:
                refuser = self.refusers[who]
                setattr(refuser, name, getattr(refuser, name) + n)

    def add_block(self, figures: Mapping[str, Any]) -> None:
        """A block's list rows and steps (:meth:`block_figures`), as if its entries were read here (its counts
        come apart, :meth:`add_counts`)."""
        self.refusals.extend(figures["refusals"])
        self.destructive.extend(figures["destructive"])
        self.high_risk.extend(figures["high_risk"])
        for kind, request_id, key, time in figures["steps"]:
            self.follow((kind, request_id, tuple(key), time))  # type: ignore[arg-type]

    def view(self) -> dict[str, Any]:
        for key, state in self._state.values():
            if state == "pending":
                self.rows[key]["pending"] += 1
        summary = []
        for (agent, template), stats in sorted(self.rows.items()):
            waits = stats.pop("waits")
            summary.append({"agent": agent, "template": template, **stats,
                            "median_time_to_approve_seconds": statistics.median(waits) if waits else None})
        summary.sort(key=lambda r: (-r["refused"], -r["denied"], r["agent"], r["template"]))
        by_principal = sorted((figures.view(refuser) for refuser, figures in self.refusers.items()),
                              key=lambda r: (-r["suppressed"], -r["refused"], r["principal"]))
        approvers = [{"approver": who, "approved": counts["approved"], "denied": counts["denied"],
                      "refused": counts["refused"]} for who, counts in sorted(self.approvers.items())]
        return {"refused_total": sum(r["refused"] for r in by_principal),
                "suppressed_total": sum(r["suppressed"] for r in by_principal),
                "refusals_by_principal": by_principal, "refusals": self.refusals,
                "destructive_grants": self.destructive, "high_risk_grants": self.high_risk,
                "approvers": approvers, "by_agent_and_template": summary}


# What log_report_counts holds, on either database: the UTF-8 bytes of a count's principal, template and name
# together well under PostgreSQL's bound of an index row (2,704 bytes: its primary key holds them), and a count
# under 2**32, so that its sum over every block of a log (seqs are 32-bit: at most 2**31 blocks) stays within the
# 64 bits that SQLite's sum keeps (past them the report's sum fails) and that the column holds.
COUNT_NAME_BYTES = 2000
COUNT_BOUND = 2**32


def _text_bytes(value: Any) -> int | None:
    """The UTF-8 size of a text that either database stores and compares as Python does (PostgreSQL refuses a
    NUL, SQLite's JSON functions end a text at one; a lone surrogate has no UTF-8 form); None for any other."""
    if not isinstance(value, str) or "\x00" in value:
        return None
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _countable(count: tuple[str, Any, Any, Any, int]) -> bool:
    """A count of ReportTally.block_counts that log_report_counts stores, and a report sums, as it is."""
    _, principal, template, name, n = count
    sizes = [_text_bytes(principal), _text_bytes(template), _text_bytes(name)]
    return None not in sizes and sum(sizes) <= COUNT_NAME_BYTES and 0 <= n < COUNT_BOUND  # type: ignore[arg-type]


def _plain_id(request_id: Any) -> bool:
    """A request id the body index looks up as Python compares it: a text the database takes (no NUL, no lone
    surrogate), with no escape the index reads apart (PostgreSQL's reads \\u0000 as \\ufffd, inside \\\\u0000 too)."""
    return _text_bytes(request_id) is not None and "\\" not in request_id


@dataclass
class AuditLog:
    database: Store
    signer: issuance_log.CheckpointSigner
    clock: Clock
    # Signs checkpoints, only over a log that extends the last one (broker.usecases.checkpoints).
    checkpointer: Checkpointer | None = None
    # How many checkpoints an export reads at a time (it holds no more of them).
    checkpoint_page: int = CHECKPOINT_PAGE

    def __post_init__(self) -> None:
        if self.checkpoint_page < 1:
            raise ValueError("checkpoint_page must be at least 1")
        if self.checkpointer is None:
            self.checkpointer = Checkpointer(database=self.database, signer=self.signer, clock=self.clock)

    def query(self, *, principal: Principal, filters: Mapping[str, Any], after_seq: int = 0, limit: int = 100,
              since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
        require_reviewer(principal)
        risk = filters.get("risk")
        if risk is not None and risk not in RISK_FILTERS:
            raise InvalidInput(f"risk must be one of {', '.join(RISK_FILTERS)}", code="invalid_risk", field="risk")
        if not 1 <= limit <= PAGE_MAX:
            raise InvalidInput(f"limit must be between 1 and {PAGE_MAX}", code="invalid_limit", field="limit")
        with self.database.transaction() as repo:
            events = repo.query_events(filters=filters, after_seq=after_seq, limit=limit + 1, since=since,
                                       until=until)
        more = len(events) > limit
        events = events[:limit]
        return {"events": events, "next_after_seq": events[-1]["seq"] if more and events else None,
                "unverified_seqs": unverified_seqs(events)}

    def checkpoint(self) -> issuance_log.Checkpoint:
        """Sign the current head (idempotent for an unchanged head); CheckpointRefused when the log does
        not extend the last signed checkpoint."""
        assert self.checkpointer is not None
        return self.checkpointer.checkpoint()

    def latest_checkpoint(self, *, principal: Principal) -> issuance_log.Checkpoint:
        """The newest signed checkpoint, as stored (reading takes none)."""
        require_reviewer(principal)
        with self.database.transaction() as repo:
            latest = repo.latest_checkpoint()
        if latest is None:
            raise NotFound("no checkpoint has been signed yet", code="checkpoint_not_found")
        return latest

    def export(self, *, principal: Principal, since: datetime | None = None) -> Iterator[bytes]:
        """JSONL (docs/log-format.md, section 8): the entries (from ``since``) up to a fresh checkpoint, every
        checkpoint after the entry it signs, then the signed export statement and the final checkpoint."""
        require_reviewer(principal)
        final = self.checkpoint()
        entries = self._entries_up_to(final.seq, since=since)
        first = next(entries, None)
        first_seq = first["seq"] if first is not None else final.seq + 1
        checkpoints = self._checkpoints_before(final, from_seq=first_seq if since is not None else 0)
        statement = self.signer.sign_export(final, first_seq=first_seq,
                                            since=issuance_log.log_time(since) if since is not None else None,
                                            time=issuance_log.log_time(self.clock.now()))
        all_entries = entries if first is None else itertools.chain([first], entries)
        yield from issuance_log.chained_export_lines(all_entries, checkpoints, statement, final=final)

    def _checkpoints_before(self, final: issuance_log.Checkpoint, *,
                            from_seq: int) -> Iterator[issuance_log.Checkpoint]:
        """The checkpoints signing seq ``from_seq`` to ``final``'s, in the order they were signed, up to ``final``
        (left out: it ends the export, after the statement, even if a replica has signed a newer one), read a page
        at a time as the export reaches them: the export holds one page of them, whatever the log's size."""
        after = 0
        while True:
            with self.database.read() as repo:
                page = repo.checkpoint_page(from_seq=from_seq, up_to_seq=final.seq, after_position=after,
                                            limit=self.checkpoint_page)
            for _, checkpoint in page:
                if checkpoint == final:
                    return
                yield checkpoint
            if len(page) < self.checkpoint_page:
                return
            after = page[-1][0]

    def _entries_up_to(self, last_seq: int, *, since: datetime | None) -> Iterator[dict[str, Any]]:
        after = 0
        while True:
            with self.database.transaction() as repo:
                page = repo.query_events(filters={}, after_seq=after, limit=PAGE_MAX, since=since)
            page = [entry for entry in page if entry["seq"] <= last_seq]
            yield from page
            if len(page) < PAGE_MAX:
                break
            after = page[-1]["seq"]

    def correlate(self, *, principal: Principal, access_key_id: str | None = None,
                  source_identity: str | None = None) -> dict[str, Any]:
        """From what CloudTrail shows (access key id or SourceIdentity) to request, template and approvals.

        The log decides what matches an access key id: an ``issued`` entry naming it is found even if the
        grant row was edited or removed.  (SourceIdentity is not in the entries: it is looked up in the grants.)
        Each match says where the database rows disagree with the log's entries (``mismatches``).
        """
        require_reviewer(principal)
        if not access_key_id and not source_identity:
            raise InvalidInput("give an access_key_id or a source_identity", code="missing_filter")
        with self.database.transaction() as repo:
            grants = repo.find_grants(access_key_id=access_key_id or None, source_identity=source_identity or None)
            logged = (repo.query_events(filters={"type": EventType.ISSUED.value, "access_key_id": access_key_id},
                                        limit=50)
                      if access_key_id else [])
            request_ids = list(dict.fromkeys([grant.request_id for grant in grants[-50:]]
                                             + [entry["request_id"] for entry in logged if entry.get("request_id")]))
            if not request_ids:
                raise NotFound("no grant matches", code="grant_not_found")
            results = [self._match(repo, request_id) for request_id in request_ids[-50:]]
        return {"matches": results}

    @staticmethod
    def _match(repo: Any, request_id: str) -> dict[str, Any]:
        grant, request = repo.grant_for_request(request_id), repo.get_request(request_id)
        approvals = repo.approvals_for(request_id)
        events = repo.query_events(filters={"request_id": request_id}, limit=PAGE_MAX)
        mismatches = _disagreements(grant, request, approvals, events)
        return {
            "grant": None if grant is None else {
                "id": grant.id, "access_key_id": grant.access_key_id, "role_arn": grant.role_arn,
                "source_identity": grant.source_identity, "session_name": grant.session_name,
                "issued_at": issuance_log.log_time(grant.issued_at),
                "expiration": issuance_log.log_time(grant.expiration),
                "revoked_at": grant.revoked_at and issuance_log.log_time(grant.revoked_at)},
            "request": None if request is None else {
                "id": request.id, "template": request.template, "template_digest": request.template_digest,
                "requester": request.requester, "acts_for": request.acts_for, "reason": request.reason,
                "policy_digest": request.policy_digest, "status": request.status},
            "approvals": [{"approver": a.approver, "decision": a.decision, "reason": a.reason,
                           "at": issuance_log.log_time(a.created_at)} for a in approvals],
            "events": events,
            "log_agrees": not mismatches,
            "mismatches": mismatches,
        }

    def fill_report_blocks(self, *, limit: int | None = None) -> int:
        """Add up the closed blocks of the log not cached yet for the report (at most ``limit``), each from its
        entries' bodies by :class:`ReportTally`'s rules; how many were written.  Run in the background with the
        dashboard's cache (broker.runtime.container), so that a report seldom reads a closed block's bodies.

        A block is cached without figures (a report reads it from its bodies, as before) when one of its bodies
        does not parse or an entry breaks the tally: whatever a report did on it, it still does."""
        with self.database.read() as repo:
            missing = repo.missing_report_blocks(rules=REPORT_RULES)[:limit]
        written = 0
        for block in missing:
            with self.database.read() as repo:
                entries, low, high = repo.report_block_entries(block)
                cached = None if entries is None else self._block_figures(repo, block, entries)
            figures, counts = (None, []) if cached is None else (json.dumps(cached[0]), cached[1])
            try:
                with self.database.transaction() as repo:
                    written += repo.save_report_block(block, rules=REPORT_RULES, min_time=low, max_time=high,
                                                      figures=figures, counts=counts)
            except (InvalidInput, OverflowError, UnicodeError):
                if figures is None:
                    raise
                # NOTE: a count the database cannot store (block_counts refuses those it knows of: this is for any
                # other) rolled the block back; retried as it is, every later block would wait behind it for good.
                # The block is cached without figures instead: a report reads it from its bodies, as before.
                log.warning("report cache: block %s kept out (a count the database cannot store)", block)
                with self.database.transaction() as repo:
                    written += repo.save_report_block(block, rules=REPORT_RULES, min_time=low, max_time=high,
                                                      figures=None, counts=[])
        return written

    @staticmethod
    def _block_figures(repo: Any, block: int,
                       entries: list[dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, str, str, str, int]]] | None:
        # NOTE: every body time of the block is a text to SQL (repo.report_block_entries), as its window compares it.
        tally, steps = ReportTally(), []
        try:
            for entry in entries:
                step = tally.count(entry)
                if step is not None:
                    steps.append(step)
        except Exception:  # noqa: BLE001 - the entry breaks the report however it is read: left to the walk
            log.warning("report cache: block %s kept out (an entry breaks the tally)", block, exc_info=True)
            return None
        counts = tally.block_counts()
        if counts is None:
            return None
        # NOTE: a state step other than pending, approved or denied matters only to a request with a pending
        # entry before it (whether it is still pending at the end of a window): the others are left out.  Kept
        # whenever the look-up could miss one (not a plain string request id): a step too many changes nothing.
        looked_up = sorted({step[1] for step in steps if _plain_id(step[1])})
        pending = repo.pending_request_ids(looked_up, through_block=block) if looked_up else set()
        kept = [step for step in steps if step[0] in (EventType.DENIED, EventType.APPROVED, EventType.PENDING)
                or pending is None or not _plain_id(step[1]) or step[1] in pending]
        return tally.block_figures(kept), counts

    def report(self, *, principal: Principal, since: datetime) -> dict[str, Any]:
        """Figures over the entries logged since ``since``.

        Per agent and template (``by_agent_and_template``), each request counts once: ``pending``
        is the requests still waiting for co-signers at the end of the range, ``approvals`` the
        requests that were approved (however many co-signed), ``cosignatures`` the approvals given,
        ``denied`` the denied requests.  Rows are the agents' (the requester of a request's
        entries); approvers are counted as approvers in ``approvers`` (approvals given, denials,
        refused decisions), never as agent rows.  ``destructive_grants`` lists the grants whose
        ``issued`` entry declares the destructive risk, ``high_risk_grants`` the other risky ones
        (permission-changing, or production).

        Refusals include the ones the refusal budget counted instead of logging (broker.usecases.refusal_budget):
        ``refused_total`` is every refusal, ``suppressed_total`` those without a ``refused`` entry of
        their own, and ``refusals_by_principal`` shows them per principal, flooders first.  A
        suppressed count is in the figures of the entry that carries it (the principal's next
        refusal, or a ``refusals_suppressed_summary``), even if the refusals began before ``since``;
        ``windows_awaiting_count`` says how many windows announced in the range still lack theirs.
        The per-template rows count refusals that have an entry (``refused`` or
        ``refusals_suppressed``): the budget does not record a suppressed refusal's template.
        """
        require_reviewer(principal)
        tally = ReportTally()
        with self.database.read() as repo:
            # NOTE: the closed blocks wholly in the window come from their cached figures (fill_report_blocks);
            # the rest of the window's seqs (the open tail, a block across ``since``, a block not filled) is read
            # from the bodies, in seq order around them.
            segments = repo.report_segments(since, rules=REPORT_RULES)
            first = repo.first_seq_since(since) if segments[0][2] is None else None
            if segments[0][2] is None and first is None:
                segments = []  # no entry from ``since`` on at all
            # NOTE: the counts of exactly the blocks whose figures were read (a fill may add one meanwhile); a
            # cached segment is one block, seqs ``block * size + 1 .. (block + 1) * size``.
            cached = [after // (up_to - after) for after, up_to, figures in segments if figures is not None]
            tally.add_counts(repo.report_counts(cached, rules=REPORT_RULES) if cached else [])
        for after, up_to, figures in segments:
            if figures is not None:
                tally.add_block(json.loads(figures))
                continue
            if after == segments[0][0] and first is not None:
                # NOTE: the walk in seq order starts at the window's first entry (from the time index), not at the
                # log's: a 7-day report over a 30-day log does not read the 23 days of bodies before it.
                after = max(after, first - 1)
            while up_to is None or after < up_to:
                # NOTE: a read, not a transaction: no SQLite write lock (issuance waited on it) and no BEGIN/COMMIT.
                with self.database.read() as repo:
                    page = repo.query_events(filters={}, after_seq=after, limit=PAGE_MAX, since=since, up_to=up_to)
                for entry in page:
                    tally.add(entry)
                if len(page) < PAGE_MAX:
                    break
                after = page[-1]["seq"]
        return {"since": issuance_log.log_time(since), **tally.view()}
