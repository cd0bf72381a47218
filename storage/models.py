"""Typed ORM models of the four tables. The schema itself is created by the Alembic migrations
in ``storage/migrations``; a test checks that these models and the migrations agree.

Index choice follows the queries users run (see docs/storage.md): newest-first keyset pages
(``ORDER BY scored_time DESC, id DESC``), optionally filtered by a time range, a minimum
severity, a topic, a model version, a cluster or a top feature. Each equality filter gets an
index ``(column, scored_time, id)`` so that the filtered page is an index range scan too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# BIGSERIAL on PostgreSQL; SQLite only auto-increments a column declared exactly INTEGER.
ID_TYPE = BigInteger().with_variant(Integer, "sqlite")
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamp with time zone`` that always reads back as an aware UTC datetime. SQLite
    stores no offset (it would drop it silently), so values are converted to UTC on the way in
    and marked UTC on the way out; stored text then sorts in time order."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given to a timezone-aware column: "
                "pass a timezone-aware datetime, e.g. datetime.now(UTC)"
            )
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class FeedbackLabel(StrEnum):
    TRUE_ALARM = "true_alarm"
    FALSE_ALARM = "false_alarm"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        }
    )


class FlaggedRecordRow(Base):
    """A stored :class:`storage.records.FlaggedRecord`. ``partition``/``offset`` are named
    ``kafka_partition``/``kafka_offset`` in SQL (``offset`` is a reserved word)."""

    __tablename__ = "flagged_records"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column("kafka_partition", Integer)
    offset: Mapped[int] = mapped_column("kafka_offset", BigInteger)
    kafka_timestamp: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)  # the Kafka key's exact bytes
    key_text: Mapped[str | None] = mapped_column(Text)  # readable: UTF-8 text, else hex
    record_id: Mapped[str | None] = mapped_column(Text)
    event_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    scored_time: Mapped[datetime] = mapped_column(UTCDateTime)
    model_version: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Double)
    severity: Mapped[float] = mapped_column(Double)
    p_value: Mapped[float] = mapped_column(Double)
    density: Mapped[float] = mapped_column(Double)
    density_p_value: Mapped[float] = mapped_column(Double)
    reconstruction: Mapped[float] = mapped_column(Double)
    reconstruction_p_value: Mapped[float] = mapped_column(Double)
    cluster: Mapped[int] = mapped_column(Integer)
    cluster_distance: Mapped[float] = mapped_column(Double)
    top_feature: Mapped[str | None] = mapped_column(Text)  # feature names have no length limit
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    record: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)

    __table_args__ = (
        # The idempotency key: a redelivered Kafka record is not stored twice.
        UniqueConstraint(
            "topic",
            "kafka_partition",
            "kafka_offset",
            "kafka_timestamp",
            name="uq_flagged_records_kafka_message",
        ),
        # Newest-first keyset pages, time ranges, and prune (scored_time < cutoff).
        Index("ix_flagged_records_scored_time_id", "scored_time", "id"),
        # Pages sorted by score (the API's sort=score).
        Index("ix_flagged_records_score_id", "score", "id"),
        Index("ix_flagged_records_event_time", "event_time"),
        # "min severity" (optionally within a time range) when few records are that severe.
        Index("ix_flagged_records_severity_scored_time", "severity", "scored_time"),
        Index("ix_flagged_records_topic_scored_time_id", "topic", "scored_time", "id"),
        Index(
            "ix_flagged_records_model_version_scored_time_id", "model_version", "scored_time", "id"
        ),
        Index("ix_flagged_records_cluster_scored_time_id", "cluster", "scored_time", "id"),
        Index("ix_flagged_records_top_feature_scored_time_id", "top_feature", "scored_time", "id"),
    )


class ModelVersionRow(Base):
    """A model version that scored records, with when this database first and last saw it."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)


class FeedbackRow(Base):
    """A user's verdict on a flagged record; the newest one per record is the current one.
    Deleting the record (retention) deletes its feedback."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    flagged_id: Mapped[int] = mapped_column(
        ID_TYPE, ForeignKey("flagged_records.id", ondelete="CASCADE")
    )
    label: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=lambda: datetime.now(UTC))

    __table_args__ = (
        CheckConstraint(
            "label IN ('true_alarm', 'false_alarm')",
            name="label",
        ),
        # Latest feedback per record, and the cascade delete (PostgreSQL does not index FKs).
        Index("ix_feedback_flagged_id_created_at", "flagged_id", "created_at"),
    )


class StreamCountRow(Base):
    """Records consumed, scored, flagged and rejected per topic and minute (of scoring time),
    summed over the consumers that wrote them: the denominator of the flagged share."""

    __tablename__ = "stream_counts"

    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    consumed: Mapped[int] = mapped_column(BigInteger)
    scored: Mapped[int] = mapped_column(BigInteger)
    flagged: Mapped[int] = mapped_column(BigInteger)
    rejected: Mapped[int] = mapped_column(BigInteger)

    # Time ranges over every topic (the primary key serves one topic's range), and prune.
    __table_args__ = (Index("ix_stream_counts_minute", "minute"),)
