"""the report's cached blocks carry the version of the rules that computed them

``log_report_blocks`` and ``log_report_counts`` (0015) held a block's figures with nothing to say which rules of
``broker audit report`` made them: a release that changes the tally would read blocks an older one filled, and its
report would differ from the walk over the bodies, or fail.  Both primary keys now start with ``rules``
(broker.usecases.audit.REPORT_RULES); a report and a fill read the rows of their own version only.  The tables are
made again, empty: the rows of 0015 were filled by rules that cached some tampered blocks wrongly (a time key
twice on SQLite), so they are not kept as any version; ``broker serve`` fills the blocks again at start (976
blocks of a 1,000,000-entry log took 104 s), and until then a report reads them from their bodies, as before.

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def _create(*, rules: bool) -> None:
    key = [sa.Column('rules', sa.Integer(), autoincrement=False, nullable=False)] if rules else []
    first = ['rules'] if rules else []
    op.create_table(
        'log_report_blocks',
        *key,
        sa.Column('entries', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('filled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('min_time', sa.Text(), nullable=True),
        sa.Column('max_time', sa.Text(), nullable=True),
        sa.Column('figures', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint(*first, 'entries', 'block'),
    )
    key = [sa.Column('rules', sa.Integer(), autoincrement=False, nullable=False)] if rules else []
    op.create_table(
        'log_report_counts',
        *key,
        sa.Column('entries', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('facet', sa.String(length=16), nullable=False),
        sa.Column('principal', sa.Text(), nullable=False),
        sa.Column('template', sa.Text(), nullable=False),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*first, 'entries', 'block', 'facet', 'principal', 'template', 'name'),
    )


def _drop() -> None:
    op.drop_table('log_report_counts')
    op.drop_table('log_report_blocks')


def upgrade() -> None:
    _drop()
    _create(rules=True)


def downgrade() -> None:
    # NOTE: a cache: 0015's tables are made again, empty (rows without a rules version would be read by any release).
    _drop()
    _create(rules=False)
