"""Tables.  No secret column exists: secret access keys and session tokens are never stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class PrincipalRow(SQLModel, table=True):
    __tablename__ = "principals"
    id: str = Field(primary_key=True, max_length=200)
    roles: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON list
    groups: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON list
    acts_for: str | None = Field(default=None, max_length=200)
    disabled: bool = False
    created_at: datetime
    # JSON object: the directory entry's attributes, read by templates as attribute:NAME (NULL: none).
    attributes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"
    key_id: str = Field(primary_key=True, max_length=64)
    token_hash: str = Field(max_length=128)
    principal_id: str = Field(index=True, max_length=200)
    created_at: datetime
    revoked: bool = False
    # NULL: the key never expires.  An expired key is refused (api_key_expired) like a revoked one.
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=200)


class RequestRow(SQLModel, table=True):
    __tablename__ = "requests"
    # Rate limits count an agent's (and a template's) requests in the last minute.
    __table_args__ = (
        Index("ix_requests_requester_created", "requester", "created_at"),
        Index("ix_requests_template_created", "template", "created_at"),
    )
    id: str = Field(primary_key=True, max_length=64)
    template: str = Field(max_length=100)  # indexed by ix_requests_template_created
    template_digest: str = Field(max_length=100)
    environment: str = Field(max_length=20)
    parameters: str = Field(sa_column=Column(Text, nullable=False))  # JSON object (validated values)
    role_arn: str = Field(max_length=2048)
    policy: str = Field(sa_column=Column(Text, nullable=False))  # the exact rendered session policy
    policy_digest: str = Field(max_length=100)
    ttl_seconds: int
    session_tags: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of [key, value]
    source_identity: str = Field(max_length=64)
    session_name: str = Field(max_length=64)
    grant_id: str = Field(max_length=64)
    binding_digest: str = Field(max_length=100)
    requester: str = Field(max_length=200)  # indexed by ix_requests_requester_created
    acts_for: str | None = Field(default=None, max_length=200)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    source_ip: str | None = Field(default=None, max_length=64)
    status: str = Field(index=True, max_length=20)
    approvals_required: int = 0
    created_at: datetime
    updated_at: datetime
    pending_expires_at: datetime | None = None
    approved_at: datetime | None = None
    redeem_by: datetime | None = None
    issued_at: datetime | None = None
    decided_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # JSON object: the values bound to the caller's identity the request was rendered with (NULL: none).
    identity: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ApprovalRow(SQLModel, table=True):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver", name="uq_approval_once_per_human"),)
    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(index=True, max_length=64)
    approver: str = Field(max_length=200)
    decision: str = Field(max_length=10)
    binding_digest: str = Field(max_length=100)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime


class GrantRow(SQLModel, table=True):
    __tablename__ = "grants"
    # The live-grant budget counts an agent's unexpired grants.
    __table_args__ = (Index("ix_grants_agent_expiration", "agent", "expiration"),)
    id: str = Field(primary_key=True, max_length=64)
    request_id: str = Field(index=True, max_length=64, unique=True)
    template: str = Field(index=True, max_length=100)
    agent: str = Field(max_length=200)  # indexed by ix_grants_agent_expiration
    acts_for: str | None = Field(default=None, max_length=200)
    role_arn: str = Field(max_length=2048)
    access_key_id: str = Field(index=True, max_length=128)
    source_identity: str = Field(index=True, max_length=64)
    session_name: str = Field(max_length=64)
    policy_digest: str = Field(max_length=100)
    environment: str = Field(max_length=20)
    issued_at: datetime
    expiration: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=200)


class MintIntentRow(SQLModel, table=True):
    """Written before the STS call; resolved after.  An unresolved intent at start-up is an orphan."""

    __tablename__ = "mint_intents"
    grant_id: str = Field(primary_key=True, max_length=64)
    request_id: str = Field(index=True, max_length=64)
    role_arn: str = Field(max_length=2048)
    source_identity: str = Field(max_length=64)
    created_at: datetime
    resolved: bool = Field(default=False, index=True)


class EventRow(SQLModel, table=True):
    """One issuance-log entry.  ``body`` is the entry's canonical JSON (what was hashed)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_time", "time"),
        Index("ix_events_type", "type"),
        # The dashboard's range counts by type (broker.storage.log_figures).
        Index("ix_events_type_time", "type", "time"),
    )
    seq: int = Field(primary_key=True)
    event_id: str = Field(max_length=64, unique=True)
    time: datetime
    type: str = Field(max_length=32)
    request_id: str | None = Field(default=None, index=True, max_length=64)
    grant_id: str | None = Field(default=None, max_length=64)
    actor: str | None = Field(default=None, index=True, max_length=200)
    acts_for: str | None = Field(default=None, index=True, max_length=200)
    template: str | None = Field(default=None, index=True, max_length=100)
    access_key_id: str | None = Field(default=None, index=True, max_length=128)
    body: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class LogHeadRow(SQLModel, table=True):
    """The single row every append locks: it serializes appends across replicas."""

    __tablename__ = "log_head"
    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(max_length=64)


class CheckpointRow(SQLModel, table=True):
    """One signed checkpoint, in the order they were signed (``position``, 1, 2, ...).

    Insert-only: migration 0009's triggers refuse UPDATE and DELETE (and TRUNCATE), and nothing in
    the broker issues them.  ``prev_checkpoint`` is the hash of the checkpoint before (NULL for
    format-1 rows signed before 0009) and unique, so two checkpoints cannot name one predecessor.
    """

    __tablename__ = "checkpoints"
    position: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(index=True)
    head_hash: str = Field(max_length=64)
    time: str = Field(max_length=40)
    key_id: str = Field(max_length=32)
    signature: str = Field(max_length=200)
    prev_checkpoint: str | None = Field(default=None, max_length=64, unique=True)
    hash: str = Field(max_length=64, unique=True)


class SettingRow(SQLModel, table=True):
    """Small operational switches (lockdowns), changed only through logged use cases."""

    __tablename__ = "broker_settings"
    key: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: datetime


# --- new rows on the issuance path ------------------------------------------------------------
# The use cases write broker.domain.records' plain values (CredentialRequest, Grant, MintIntent, Approval):
# building a table model instance costs ~50 us (SQLAlchemy instrumentation on every field), and the
# repository inserts the plain values with Core.  Their fields are the tables' (tests/storage hold them equal).


class LogAggregateBlockRow(SQLModel, table=True):
    """A closed block of the log (seqs ``block * BLOCK + 1 .. (block + 1) * BLOCK``) whose aggregates are in
    ``log_aggregates`` (broker.storage.log_aggregates): written in the same transaction as its rows, once.
    ``min_time`` and ``max_time``: the least and greatest body time of its entries, as SQL compares the body
    time (None: no entry has one); the time windows of the reviewers' queries skip the blocks outside them."""

    __tablename__ = "log_aggregate_blocks"
    block: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    entries: int
    filled_at: datetime
    min_time: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    max_time: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class LogAggregateRow(SQLModel, table=True):
    """One figure of one closed block and one hour, derived from the entries' hashed bodies only
    (broker.storage.log_aggregates says which facets there are)."""

    __tablename__ = "log_aggregates"
    __table_args__ = (Index("ix_log_aggregates_facet_hour", "facet", "hour"),)
    block: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    hour: str = Field(sa_column=Column(String(13), primary_key=True))
    facet: str = Field(sa_column=Column(String(16), primary_key=True))
    type: str = Field(sa_column=Column(Text, primary_key=True))
    key: str = Field(sa_column=Column(Text, primary_key=True))
    value: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    n: int = Field(sa_column=Column(BigInteger, nullable=False))


class LogReportBlockRow(SQLModel, table=True):
    """A closed block of the log (seqs ``block * entries + 1 .. (block + 1) * entries``) whose figures for
    ``broker audit report`` are computed once, from its entries' hashed bodies, by the report's own per-entry
    rules (broker.usecases.audit.ReportTally): ``figures`` is the JSON of its list rows and its requests' steps,
    in seq order, its counts are in ``log_report_counts`` (None: the block is read from its bodies at every
    report, e.g. one of its bodies does not parse).  ``min_time`` and ``max_time``: the least and
    greatest body time of its entries, as SQL compares the body time; a report uses ``figures`` only for a
    block wholly in its window."""

    __tablename__ = "log_report_blocks"
    # The version of the report's rules that computed the row (broker.usecases.audit.REPORT_RULES): rows of another
    # are not read (migration 0016).
    rules: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    # The block size (broker.storage.report_blocks.BLOCK) the row was computed for: rows of another are not read.
    entries: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    block: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    filled_at: datetime
    min_time: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    max_time: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    figures: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class LogReportCountRow(SQLModel, table=True):
    """A count a closed block of ``log_report_blocks`` adds to ``broker audit report`` whatever the order of the
    entries (a row of ``by_agent_and_template``, an approver's, a refuser's), so that a report sums the blocks of
    its window in SQL: ``facet`` (``row``, ``approver``, ``refuser``), the principal, the template (``""`` but
    for rows), the figure's name and how many."""

    __tablename__ = "log_report_counts"
    rules: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    entries: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    block: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    facet: str = Field(sa_column=Column(String(16), primary_key=True))
    principal: str = Field(sa_column=Column(Text, primary_key=True))
    template: str = Field(sa_column=Column(Text, primary_key=True))
    name: str = Field(sa_column=Column(Text, primary_key=True))
    n: int = Field(sa_column=Column(BigInteger, nullable=False))
