"""The requests table.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "titanic_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("reply", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("deadline", sa.DateTime(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_titanic_requests")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_titanic_requests_idempotency_key")),
    )
    op.create_index("ix_titanic_requests_status_service_due", "titanic_requests",
                    ["status", "service", "due_at"])
    op.create_index("ix_titanic_requests_status_due", "titanic_requests", ["status", "due_at"])
    op.create_index("ix_titanic_requests_status_completed", "titanic_requests",
                    ["status", "completed_at"])


def downgrade() -> None:
    op.drop_index("ix_titanic_requests_status_completed", table_name="titanic_requests")
    op.drop_index("ix_titanic_requests_status_due", table_name="titanic_requests")
    op.drop_index("ix_titanic_requests_status_service_due", table_name="titanic_requests")
    op.drop_table("titanic_requests")
