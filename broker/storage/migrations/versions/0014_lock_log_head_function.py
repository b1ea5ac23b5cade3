"""PostgreSQL: the issuance log's lock and the settings read after it, in one round trip

Every unit of work that appends to the log takes the head row's lock, and the gates that must decide on a
serialized view (the lockdown switches) read after it.  One statement cannot do both: a statement that waited
for the row lock sees the other tables as they were when it began (READ COMMITTED re-reads only the locked
row), so a lockdown committed while it waited would be missed; the broker therefore sent two statements,
both while holding the lock.  ``broker_lock_log_head(keys)`` is a VOLATILE PL/pgSQL function: each query in it
takes a fresh snapshot, so its second query, run once the lock is held, sees every commit made before the lock
was granted.  One round trip under the lock instead of two (``Repository.get_settings``).

SQLite: nothing (its units of work are BEGIN IMMEDIATE, and the head and the settings are one statement).

Revision ID: 0014
Revises: 0013
"""
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

FUNCTION = """
CREATE FUNCTION broker_lock_log_head(keys text[])
RETURNS TABLE (head_seq integer, head_hash varchar, setting_key varchar, setting_value text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked_seq integer;
    locked_hash varchar;
BEGIN
    SELECT h.seq, h.hash INTO locked_seq, locked_hash FROM log_head AS h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- not migrated: no rows, and the caller fails closed
    END IF;
    -- NOTE: a query of its own, so a snapshot of its own, taken with the lock held.
    RETURN QUERY
        SELECT locked_seq, locked_hash, s.key::varchar, s.value
        FROM (SELECT 1) AS one LEFT JOIN broker_settings AS s ON s.key = ANY (keys);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION broker_lock_log_head(text[])")
