"""Alembic environment: run on the connection titanic.store.migrate passes in (no ini, no
logging)."""

from __future__ import annotations

from alembic import context

from titanic.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("titanic migrations run through titanic.store.migrate or `titanic db`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
