"""The store's identity: one row with a random UUID, compared by dispatchers at start-up.

Revision ID: 0010_store_identity
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010_store_identity"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "titanic_store",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_titanic_store")),
    )
    op.bulk_insert(table, [{"id": uuid.uuid4(),
                            "created_at": datetime.now(UTC).replace(tzinfo=None)}])


def downgrade() -> None:
    op.drop_table("titanic_store")
