"""The requests sent to another site: to which peer, and their UUID there.

Revision ID: 0021_peer_forwards
Revises: 0020_reply_parts
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_peer_forwards"
down_revision = "0020_reply_parts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "titanic_forwards",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("far_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_titanic_forwards"),
    )


def downgrade() -> None:
    op.drop_table("titanic_forwards")
