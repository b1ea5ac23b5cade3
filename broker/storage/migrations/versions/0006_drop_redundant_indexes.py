"""drop single-column indexes that a composite index already covers

``requests.template``, ``requests.requester`` and ``grants.agent`` are the leading columns of
``ix_requests_template_created``, ``ix_requests_requester_created`` and
``ix_grants_agent_expiration`` (0005): every lookup by them can use those.  Each redundant
index cost a B-tree insert and a page write on every issuance.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_requests_template", table_name="requests")
    op.drop_index("ix_requests_requester", table_name="requests")
    op.drop_index("ix_grants_agent", table_name="grants")


def downgrade() -> None:
    op.create_index("ix_grants_agent", "grants", ["agent"])
    op.create_index("ix_requests_requester", "requests", ["requester"])
    op.create_index("ix_requests_template", "requests", ["template"])
