"""a cache of ``broker audit report``'s figures per closed block of seqs

The report added up every entry of its window from the bodies: seconds over 7 and 30 days of a large log
(issue 21).  ``log_report_blocks`` holds, for each closed block of seqs, the report's figures of its entries
(``broker.usecases.audit``: its list rows and the steps of its requests, which the report replays in seq
order so that each request still counts once), and ``log_report_counts`` what its entries add whatever their
order (summed in SQL over a window's blocks), derived from the hashed bodies only.  A block is written once (primary key: the block size and the block), by a background fill; a block not filled,
or not wholly in a report's window, is read from its bodies as before.  Empty after upgrade.

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'log_report_blocks',
        sa.Column('entries', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('filled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('min_time', sa.Text(), nullable=True),
        sa.Column('max_time', sa.Text(), nullable=True),
        sa.Column('figures', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('entries', 'block'),
    )
    op.create_table(
        'log_report_counts',
        sa.Column('entries', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('facet', sa.String(length=16), nullable=False),
        sa.Column('principal', sa.Text(), nullable=False),
        sa.Column('template', sa.Text(), nullable=False),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('entries', 'block', 'facet', 'principal', 'template', 'name'),
    )


def downgrade() -> None:
    op.drop_table('log_report_counts')
    op.drop_table('log_report_blocks')
