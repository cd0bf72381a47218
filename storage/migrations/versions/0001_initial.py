"""Initial schema: flagged_records, model_versions, feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Written out explicitly (no metadata.create_all, no imports from storage.models): a migration is
a frozen record of a schema change and must not move when the models do.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "flagged_records",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.Column("kafka_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("record_id", sa.Text(), nullable=True),
        sa.Column("event_time", TIMESTAMP, nullable=True),
        sa.Column("scored_time", TIMESTAMP, nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("severity", sa.Double(), nullable=False),
        sa.Column("p_value", sa.Double(), nullable=False),
        sa.Column("density", sa.Double(), nullable=False),
        sa.Column("density_p_value", sa.Double(), nullable=False),
        sa.Column("reconstruction", sa.Double(), nullable=False),
        sa.Column("reconstruction_p_value", sa.Double(), nullable=False),
        sa.Column("cluster", sa.Integer(), nullable=False),
        sa.Column("cluster_distance", sa.Double(), nullable=False),
        sa.Column("top_feature", sa.Text(), nullable=True),
        sa.Column("explanation", JSON, nullable=False),
        sa.Column("record", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flagged_records"),
        # Idempotency key: a redelivered Kafka record is not stored twice.
        sa.UniqueConstraint(
            "topic",
            "kafka_partition",
            "kafka_offset",
            "kafka_timestamp",
            name="uq_flagged_records_kafka_message",
        ),
    )
    # Newest-first keyset pages (ORDER BY scored_time DESC, id DESC), time ranges, prune.
    op.create_index("ix_flagged_records_scored_time_id", "flagged_records", ["scored_time", "id"])
    op.create_index("ix_flagged_records_score_id", "flagged_records", ["score", "id"])
    op.create_index("ix_flagged_records_event_time", "flagged_records", ["event_time"])
    op.create_index(
        "ix_flagged_records_severity_scored_time", "flagged_records", ["severity", "scored_time"]
    )
    # Equality filters, each followed by the page order.
    for column in ("topic", "model_version", "cluster", "top_feature"):
        op.create_index(
            f"ix_flagged_records_{column}_scored_time_id",
            "flagged_records",
            [column, "scored_time", "id"],
        )

    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_model_versions"),
    )

    op.create_table(
        "feedback",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("flagged_id", ID, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.ForeignKeyConstraint(
            ["flagged_id"],
            ["flagged_records.id"],
            name="fk_feedback_flagged_id_flagged_records",
            ondelete="CASCADE",
        ),
        # op.f(): the name is final, not fed through the models' naming convention again.
        sa.CheckConstraint(
            "label IN ('true_alarm', 'false_alarm')", name=op.f("ck_feedback_label")
        ),
    )
    # Latest feedback per record, and the cascade on delete (PostgreSQL does not index FKs).
    op.create_index("ix_feedback_flagged_id_created_at", "feedback", ["flagged_id", "created_at"])


def downgrade() -> None:
    op.drop_table("feedback")  # its indexes go with it
    op.drop_table("model_versions")
    op.drop_table("flagged_records")
