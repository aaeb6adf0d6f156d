"""A priority for each request, and the service index ordered by it.

The column `priority` (0 for every stored request) orders a service's due requests, higher
first, then by due time; the (status, service, due_at) index becomes (status, service, priority
DESC, due_at), so that a claim still reads a service's requests in the order it takes them,
from the index, without sorting its backlog.

Revision ID: 0018_request_priority
Revises: 0017_drop_status_due_index
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_request_priority"
down_revision = "0017_drop_status_due_index"
branch_labels = None
depends_on = None

TABLE = "titanic_requests"
OLD_INDEX = "ix_titanic_requests_status_service_due"
NEW_INDEX = "ix_titanic_requests_status_service_priority_due"


def upgrade() -> None:
    # A column with a constant default is added without rewriting the rows (PostgreSQL 11+,
    # and SQLite's ADD COLUMN), so a store with a backlog upgrades in moments.
    op.add_column(TABLE, sa.Column("priority", sa.Integer(), nullable=False,
                                   server_default=sa.text("0")))
    op.drop_index(OLD_INDEX, table_name=TABLE)
    op.create_index(NEW_INDEX, TABLE, ["status", "service", sa.text("priority DESC"), "due_at"])


def downgrade() -> None:
    op.drop_index(NEW_INDEX, table_name=TABLE)
    op.create_index(OLD_INDEX, TABLE, ["status", "service", "due_at"])
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("priority")
