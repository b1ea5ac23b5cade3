"""approver sign-in with OIDC: the client address of each flow, to cap outstanding flows per address

Unauthenticated callers begin flows; ``broker.storage.ui_oidc_flows`` caps how many may be
outstanding per client address and in total, counting unexpired rows.  The per-address count runs
on ``(client_address, expires_at)``, the total on the existing ``expires_at`` index.  Flows begun
before this migration have no address (NULL): they count towards the total only, for their
remaining ten minutes at most.

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ui_oidc_flows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client_address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.create_index('ix_ui_oidc_flows_client_address_expires_at', ['client_address', 'expires_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ui_oidc_flows', schema=None) as batch_op:
        batch_op.drop_index('ix_ui_oidc_flows_client_address_expires_at')
        batch_op.drop_column('client_address')
