"""indexes on the fields of the stored entry body that reviewers filter by

Reviewer queries (``GET /v1/events``, correlate, export ``--since``) filter on the stored body, the
canonical JSON the hash covers, never on the columns copied from it (an edited column must not hide an
entry).  Without these every such query read and parsed every body: seconds at a million entries.
Each index is on the body expression the query uses (``Repository._body_field``), paired with ``seq``
so that a filtered page in seq order is one index range; the database computes it from the body
itself, so it cannot disagree with the body as a column can.

On a large existing log, building them reads every body once (minutes at ten million entries, writes
wait meanwhile): run ``broker migrate`` in a quiet hour.

Revision ID: 0012
Revises: 0011
"""
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# The body fields reviewer queries filter by (broker.storage.repository.EVENT_FILTER_FIELDS, and time).
FIELDS = ("actor", "acts_for", "template", "type", "request_id", "access_key_id", "grant_id", "time")


def _expression(dialect: str, field: str) -> str:
    if dialect == "postgresql":
        # NOTE: JSONB refuses the escape \u0000, which bodies written before U+0000 was kept out of entries may
        # hold (they are chained and never rewritten): the index reads it as \ufffd.  The repository's query
        # (broker.storage.repository._body_field) writes the same expression, or the index is not used.
        return f"jsonb_extract_path_text(CAST(replace(body, '\\u0000', '\\ufffd') AS JSONB), '{field}')"
    return f"json_extract(body, '$.{field}')"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # NOTE: the broker's connections stop any statement after BROKER_DB_STATEMENT_TIMEOUT_MS (migrations are exempt; this says so here too); building
        # an index over a large log takes longer, in this migration's transaction only.
        op.execute("SET LOCAL statement_timeout = 0")
    for field in FIELDS:
        op.execute(f"CREATE INDEX ix_events_body_{field} ON events (({_expression(dialect, field)}), seq)"
                   if dialect == "postgresql" else
                   f"CREATE INDEX ix_events_body_{field} ON events ({_expression(dialect, field)}, seq)")


def downgrade() -> None:
    for field in FIELDS:
        op.execute(f"DROP INDEX ix_events_body_{field}")
