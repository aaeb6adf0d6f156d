"""Partial indexes: each index holds only the requests its queries look for.

- the idempotency key's uniqueness moves from a UNIQUE constraint, whose index held a NULL entry
  for every request stored without a key, to a unique index of the requests that have one;
- the index for purging holds only finished requests (those with a completion time), so storing
  a request does not write it.

Storing a request writes two indexes fewer. On SQLite the table is rebuilt to drop the UNIQUE
constraint (its rows are copied over, in the same transaction).

Revision ID: 0016_partial_indexes
Revises: 0015_owner_index_partial
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_partial_indexes"
down_revision = "0015_owner_index_partial"
branch_labels = None
depends_on = None

TABLE = "titanic_requests"
UNIQUE_KEY = "uq_titanic_requests_idempotency_key"
OWNER = "ix_titanic_requests_owner_status"


def _owner_index() -> None:
    """The owner index as 0015 made it (dropped around SQLite's table rebuild, so that the
    rebuild need not carry its predicate over)."""
    op.create_index(OWNER, TABLE, ["owner", "status"],
                    sqlite_where=sa.text("owner IS NOT NULL"),
                    postgresql_where=sa.text("owner IS NOT NULL"))


def _partial(name: str, columns: list[str], where: str, *, unique: bool = False) -> None:
    op.create_index(name, TABLE, columns, unique=unique, sqlite_where=sa.text(where),
                    postgresql_where=sa.text(where))


def upgrade() -> None:
    for name in ("ix_titanic_requests_status_completed", OWNER):
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_constraint(UNIQUE_KEY, type_="unique")
    _partial("ix_titanic_requests_idempotency_key", ["idempotency_key"],
             "idempotency_key IS NOT NULL", unique=True)
    _partial("ix_titanic_requests_finished", ["status", "completed_at"],
             "completed_at IS NOT NULL")
    _owner_index()


def downgrade() -> None:
    for name in ("ix_titanic_requests_idempotency_key", "ix_titanic_requests_finished", OWNER):
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.create_unique_constraint(UNIQUE_KEY, ["idempotency_key"])
    op.create_index("ix_titanic_requests_status_completed", TABLE, ["status", "completed_at"])
    _owner_index()
