"""seed the issuance log's head row

Every append locks this row (SELECT ... FOR UPDATE), so it must exist before the first append:
creating it lazily let the first appends of two replicas on a fresh database collide.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

from broker.domain.log import GENESIS_HASH

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text("INSERT INTO log_head (id, seq, hash) SELECT 1, 0, :genesis "
                "WHERE NOT EXISTS (SELECT 1 FROM log_head WHERE id = 1)").bindparams(genesis=GENESIS_HASH)
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM log_head WHERE id = 1 AND seq = 0"))
