"""Only requests with an owner in the owner index: without CURVE it was all NULLs, kept up to
date at every insert and status change.

Revision ID: 0015_owner_index_partial
Revises: 0014_request_owner
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_owner_index_partial"
down_revision = "0014_request_owner"
branch_labels = None
depends_on = None

INDEX = "ix_titanic_requests_owner_status"
TABLE = "titanic_requests"


def upgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.create_index(INDEX, TABLE, ["owner", "status"],
                    sqlite_where=sa.text("owner IS NOT NULL"),
                    postgresql_where=sa.text("owner IS NOT NULL"))


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.create_index(INDEX, TABLE, ["owner", "status"])
