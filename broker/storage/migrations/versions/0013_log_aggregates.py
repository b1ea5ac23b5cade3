"""a cache of the log's aggregates per closed block of seqs and hour, for the reviewers' figures

The dashboard and ``broker audit report`` added up every entry of their range from the bodies: seconds
at a million entries.  ``log_aggregates`` holds, for each closed block of seqs (``log_aggregate_blocks``
says which are filled), the figures of its entries by hour, derived from the hashed bodies only
(``broker.storage.log_aggregates``).  Blocks are filled on first read (or by a sweep), each in one
transaction with its marker row, so two replicas never count one block twice.  Empty after upgrade: a
missing block is computed from the bodies, never assumed empty.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'log_aggregate_blocks',
        sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('entries', sa.Integer(), nullable=False),
        sa.Column('filled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('block'),
    )
    op.create_table(
        'log_aggregates',
        sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('hour', sa.String(length=13), nullable=False),
        sa.Column('facet', sa.String(length=16), nullable=False),
        sa.Column('type', sa.Text(), nullable=False),
        sa.Column('key', sa.Text(), nullable=False),
        sa.Column('value', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('block', 'hour', 'facet', 'type', 'key', 'value'),
    )
    op.create_index('ix_log_aggregates_facet_hour', 'log_aggregates', ['facet', 'hour'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_log_aggregates_facet_hour', table_name='log_aggregates')
    op.drop_table('log_aggregates')
    op.drop_table('log_aggregate_blocks')
