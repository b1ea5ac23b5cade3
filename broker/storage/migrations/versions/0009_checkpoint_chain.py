"""issuance log: checkpoints that chain (each names its predecessor), insert-only checkpoints and events

Checkpoints were keyed by seq and written with an upsert, so one could be overwritten.  They are
now numbered in the order they were signed (``position``), carry their own hash and the hash of
the checkpoint before (``prev_checkpoint``, unique; NULL for the format-1 rows kept from before),
and triggers refuse UPDATE, DELETE and TRUNCATE on ``checkpoints`` and ``events`` on both
databases.  Whoever owns the database can drop a trigger: the triggers stop accidents and casual
edits; the checkpoint chain, trusted checkpoints and anchors are what detect the rest.

Revision ID: 0009
Revises: 0008
"""
import hashlib
import json

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

INSERT_ONLY = ('checkpoints', 'events')
_MESSAGE = 'the issuance log is insert-only: % rows are never updated or deleted'


def _hash(row: dict) -> str:
    # docs/log-format.md: sha256(0x02 || canonical JSON of the checkpoint's fields), format 1 rows.
    fields = {key: row[key] for key in ('seq', 'head_hash', 'time', 'key_id', 'signature')}
    canonical = json.dumps(fields, sort_keys=True, separators=(',', ':'), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(b'\x02' + canonical.encode('utf-8')).hexdigest()


def _create_checkpoints() -> sa.Table:
    table = op.create_table(
        'checkpoints',
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('head_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('time', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('prev_checkpoint', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint('position'),
        sa.UniqueConstraint('prev_checkpoint'),
        sa.UniqueConstraint('hash'),
    )
    op.create_index(op.f('ix_checkpoints_seq'), 'checkpoints', ['seq'], unique=False)
    return table


def _insert_only_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("CREATE FUNCTION broker_insert_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   f"RAISE EXCEPTION '{_MESSAGE}', TG_TABLE_NAME; END $$")
        for table in INSERT_ONLY:
            op.execute(f"CREATE TRIGGER {table}_insert_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION broker_insert_only()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION broker_insert_only()")
        return
    for table in INSERT_ONLY:
        message = _MESSAGE.replace('%', table)
        for action in ('UPDATE', 'DELETE'):
            op.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


def _drop_triggers() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for table in INSERT_ONLY:
        names = (f'{table}_insert_only', f'{table}_no_truncate') if postgres else (
            f'{table}_no_update', f'{table}_no_delete')
        for name in names:
            op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS broker_insert_only()")


def upgrade() -> None:
    bind = op.get_bind()
    old = [dict(row._mapping) for row in bind.execute(sa.text(
        "SELECT seq, head_hash, time, key_id, signature FROM checkpoints ORDER BY seq"))]
    op.drop_table('checkpoints')
    table = _create_checkpoints()
    if old:
        op.bulk_insert(table, [{**row, 'position': position, 'prev_checkpoint': None, 'hash': _hash(row)}
                               for position, row in enumerate(old, start=1)])
    _insert_only_triggers()


def downgrade() -> None:
    _drop_triggers()
    bind = op.get_bind()
    rows = [dict(row._mapping) for row in bind.execute(sa.text(
        "SELECT seq, head_hash, time, key_id, signature FROM checkpoints ORDER BY position"))]
    op.drop_index(op.f('ix_checkpoints_seq'), table_name='checkpoints')
    op.drop_table('checkpoints')
    table = op.create_table(
        'checkpoints',
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('head_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('time', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )
    latest = {row['seq']: row for row in rows}  # format 1 kept one checkpoint per seq
    if latest:
        op.bulk_insert(table, list(latest.values()))
