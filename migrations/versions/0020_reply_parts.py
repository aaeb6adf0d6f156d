"""The parts of streamed replies: a table of (request, part number, frames), written as an
18/MDP worker's PARTIALs arrive and read by titanic.wait's follow form.

Revision ID: 0020_reply_parts
Revises: 0019_service_limits
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_reply_parts"
down_revision = "0019_service_limits"
branch_labels = None
depends_on = None

TABLE = "titanic_reply_parts"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("frames", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "seq", name=op.f("pk_titanic_reply_parts")),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
