"""Drop the (status, due_at) index: the claims of any service probe each service's due requests
in the (status, service, due_at) index instead, after finding the services by a skip scan of it.

It was written at every insert and status change of every request for a query the dispatcher
never runs (a claim across all services), and held a third of the index entries each request
writes.

Revision ID: 0017_drop_status_due_index
Revises: 0016_partial_indexes
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0017_drop_status_due_index"
down_revision = "0016_partial_indexes"
branch_labels = None
depends_on = None

INDEX = "ix_titanic_requests_status_due"
TABLE = "titanic_requests"


def upgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)


def downgrade() -> None:
    op.create_index(INDEX, TABLE, ["status", "due_at"])
