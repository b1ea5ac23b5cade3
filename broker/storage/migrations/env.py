from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import broker.storage.models  # noqa: F401  - registers the tables
import broker.storage.ui_sessions  # noqa: F401  - approver web sessions
import broker.storage.ui_oidc_flows  # noqa: F401  - approver sign-in with OIDC: pending flows

target_metadata = SQLModel.metadata
engine = context.config.attributes.get("engine")
if engine is None:  # pragma: no cover - alembic CLI use
    from broker.settings import load_settings
    from broker.storage.engine import build_engine

    engine = build_engine(load_settings().database_url)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # NOTE: a migration may rewrite a big table: the request path's statement and idle limits
            # (broker.storage.engine.PostgresSessionLimits) do not bind it; lock waits still do.
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        context.run_migrations()
    connection.commit()
