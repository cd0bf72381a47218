"""stream_counts: records consumed, scored, flagged and rejected per topic and minute.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stream_counts",
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("minute", TIMESTAMP, nullable=False),
        sa.Column("consumed", sa.BigInteger(), nullable=False),
        sa.Column("scored", sa.BigInteger(), nullable=False),
        sa.Column("flagged", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "minute", name="pk_stream_counts"),
    )
    op.create_index("ix_stream_counts_minute", "stream_counts", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_stream_counts_minute", table_name="stream_counts")
    op.drop_table("stream_counts")
