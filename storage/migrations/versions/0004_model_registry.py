"""The model lifecycle: registered models and their role changes per topic, scores of shadow
models and backfill runs (never live flags), their per-minute counts, and backfill progress.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registered_models",
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("registered_at", TIMESTAMP, nullable=False),
        sa.Column("registered_by", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("window_start", TIMESTAMP, nullable=True),
        sa.Column("window_end", TIMESTAMP, nullable=True),
        sa.Column("summary", JSON, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_registered_models"),
    )
    op.create_table(
        "model_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "action IN ('promote', 'shadow', 'unshadow', 'rollback', 'retire')",
            name="ck_model_events_action",
        ),
        sa.ForeignKeyConstraint(
            ["version"],
            ["registered_models.version"],
            name="fk_model_events_version_registered_models",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_model_events"),
    )
    op.create_index("ix_model_events_scope_id", "model_events", ["scope", "id"])
    op.create_table(
        "model_scores",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("run", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.Column("kafka_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("record_id", sa.Text(), nullable=True),
        sa.Column("scored_time", TIMESTAMP, nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("severity", sa.Double(), nullable=False),
        sa.Column("p_value", sa.Double(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("live_version", sa.String(64), nullable=True),
        sa.Column("live_score", sa.Double(), nullable=True),
        sa.Column("live_flagged", sa.Boolean(), nullable=True),
        sa.Column("record", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_scores"),
        sa.UniqueConstraint(
            "run",
            "model_version",
            "topic",
            "kafka_partition",
            "kafka_offset",
            "kafka_timestamp",
            name="uq_model_scores_message",
        ),
    )
    op.create_index(
        "ix_model_scores_run_model_version_scored_time",
        "model_scores",
        ["run", "model_version", "scored_time"],
    )
    op.create_table(
        "run_counts",
        sa.Column("run", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("minute", TIMESTAMP, nullable=False),
        sa.Column("scored", sa.BigInteger(), nullable=False),
        sa.Column("flagged", sa.BigInteger(), nullable=False),
        sa.Column("live_flagged", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run", "model_version", "topic", "minute", name="pk_run_counts"),
    )
    op.create_table(
        "backfill_runs",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("time_from", TIMESTAMP, nullable=False),
        sa.Column("time_to", TIMESTAMP, nullable=True),
        sa.Column("ends", JSON, nullable=False),
        sa.Column("positions", JSON, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_backfill_runs"),
    )


def downgrade() -> None:
    op.drop_table("backfill_runs")
    op.drop_table("run_counts")
    op.drop_index("ix_model_scores_run_model_version_scored_time", table_name="model_scores")
    op.drop_table("model_scores")
    op.drop_index("ix_model_events_scope_id", table_name="model_events")
    op.drop_table("model_events")
    op.drop_table("registered_models")
