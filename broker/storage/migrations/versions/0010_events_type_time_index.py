"""an index on the log's (type, time), for the reviewers' dashboard

The dashboard counts entries of some types within a time range (``broker.storage.log_figures``);
without it a range query walks every entry of those types.

Revision ID: 0010
Revises: 0009
"""
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_type_time", "events", ["type", "time"])


def downgrade() -> None:
    op.drop_index("ix_events_type_time", table_name="events")
