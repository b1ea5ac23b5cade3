"""indexes for the rate limits and the live-grant budget

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_requests_requester_created", "requests", ["requester", "created_at"])
    op.create_index("ix_requests_template_created", "requests", ["template", "created_at"])
    op.create_index("ix_grants_agent_expiration", "grants", ["agent", "expiration"])


def downgrade() -> None:
    op.drop_index("ix_grants_agent_expiration", table_name="grants")
    op.drop_index("ix_requests_template_created", table_name="requests")
    op.drop_index("ix_requests_requester_created", table_name="requests")
