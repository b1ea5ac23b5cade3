"""Values bound to the caller's identity: a principal's directory attributes and a request's bound values

``principals.attributes``: a JSON object of the directory entry's attributes (``{"workspace": "ws-a"}``),
which templates read as ``attribute:NAME`` (NULL: none, every principal made before this migration).
``requests.identity``: a JSON object of the identity values the request was rendered with (NULL: none).

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attributes', sa.Text(), nullable=True))
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('identity', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('identity')
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.drop_column('attributes')
