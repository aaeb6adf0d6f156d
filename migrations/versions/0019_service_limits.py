"""Limits per service, kept in the store so that every dispatcher on it honours them together.

A row per limited service: at most `max_in_flight` of its requests dispatched at once, and
claims paced by a token bucket of `rate` per second holding at most `burst`, whose `tokens`
and `refilled_at` every claim updates in its own transaction.

Revision ID: 0019_service_limits
Revises: 0018_request_priority
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_service_limits"
down_revision = "0018_request_priority"
branch_labels = None
depends_on = None

TABLE = "titanic_service_limits"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("rate", sa.Float(), nullable=True),
        sa.Column("burst", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_titanic_service_limits")),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
