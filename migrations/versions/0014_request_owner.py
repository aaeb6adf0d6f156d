"""The owner of a request: the CURVE public key that submitted it, as the broker authenticated it.

Revision ID: 0014_request_owner
Revises: 0010_store_identity
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_request_owner"
down_revision = "0010_store_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("titanic_requests") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=40), nullable=True))
    op.create_index("ix_titanic_requests_owner_status", "titanic_requests", ["owner", "status"])


def downgrade() -> None:
    op.drop_index("ix_titanic_requests_owner_status", table_name="titanic_requests")
    with op.batch_alter_table("titanic_requests") as batch:
        batch.drop_column("owner")
