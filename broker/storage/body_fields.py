"""The one SQL expression for a top-level member of a stored entry body (the canonical JSON the hash covers).

Reviewer queries (``broker.storage.repository``, ``broker.storage.log_aggregates``) filter on it, and the
body indexes of migration 0012 are built on it: a query uses an index only if it writes the same
expression, word for word.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import cast, func, literal_column
from sqlalchemy.dialects.postgresql import JSONB

from broker.storage.models import EventRow

EVENTS = EventRow.__table__
# The body fields queries filter on (each has an index on its expression, migration 0012).
BODY_FIELDS = frozenset({"actor", "acts_for", "template", "type", "request_id", "access_key_id", "grant_id", "time"})


def jsonb_body() -> Any:
    """PostgreSQL: the body as JSONB, the \\u0000 escape (older entries may hold it; JSONB refuses it) read as
    \\ufffd, as in the indexes of migration 0012."""
    return cast(func.replace(EVENTS.c.body, literal_column("'\\u0000'"), literal_column("'\\ufffd'")), JSONB)


def body_field(name: str, *, postgres: bool) -> Any:
    """A top-level string member of the stored entry body, as SQL.

    NOTE: the member's name is written into the SQL, not bound: the expression must be the one the body
    indexes are built on (migration 0012), and a bound name would not match them.  Names come from
    BODY_FIELDS only."""
    if name not in BODY_FIELDS:
        raise ValueError(f"not a body field reviewers filter by: {name!r}")
    if postgres:
        # NOTE: the same expression as the indexes of migration 0012, word for word.
        return func.jsonb_extract_path_text(jsonb_body(), literal_column(f"'{name}'"))
    return func.json_extract(EVENTS.c.body, literal_column(f"'$.{name}'"))
