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
    Boolean,
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


class RegisteredModelRow(Base):
    """A model directory in the model store, known to every consumer of the deployment.
    Its role per topic (live, shadow, retired) is not stored here: it follows from the
    ``model_events`` of that topic (storage/registry.py)."""

    __tablename__ = "registered_models"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    location: Mapped[str] = mapped_column(Text)  # where the store keeps the directory
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    registered_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the model's training time
    source: Mapped[str | None] = mapped_column(Text)  # training data: a file, or topic:<name>
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)  # of the training data
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)  # from the manifest


class ModelEventRow(Base):
    """One change of a model's role on a topic (promote, shadow, unshadow, rollback, retire),
    who made it and when: the registry's history, replayed to know the current roles."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(255))  # the topic (or group) the role applies to
    version: Mapped[str] = mapped_column(
        String(64), ForeignKey("registered_models.version", ondelete="CASCADE")
    )
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # 1, 2, ... per scope: a change is recorded as the one after the roles it was decided on,
    # so of two changes decided on the same roles only the first is stored
    seq: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(
            "action IN ('promote', 'shadow', 'unshadow', 'rollback', 'retire')", name="action"
        ),
        Index("ix_model_events_scope_id", "scope", "id"),
        UniqueConstraint("scope", "seq"),
    )


class ModelScoreRow(Base):
    """A record scored by a model that is not the live one: the shadow model beside the live
    one (``run`` = 'shadow'), or a backfill run (``run`` = its name). Never a live flag: the
    live flags are ``flagged_records`` alone. Shadow rows are kept for records either model
    flagged, with both models' scores; backfill rows for the records the run's model flags."""

    __tablename__ = "model_scores"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    run: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column("kafka_partition", Integer)
    offset: Mapped[int] = mapped_column("kafka_offset", BigInteger)
    kafka_timestamp: Mapped[int] = mapped_column(BigInteger)
    record_id: Mapped[str | None] = mapped_column(Text)
    scored_time: Mapped[datetime] = mapped_column(UTCDateTime)
    score: Mapped[float] = mapped_column(Double)
    severity: Mapped[float] = mapped_column(Double)
    p_value: Mapped[float] = mapped_column(Double)
    flagged: Mapped[bool] = mapped_column(Boolean)
    live_version: Mapped[str | None] = mapped_column(String(64))
    live_score: Mapped[float | None] = mapped_column(Double)
    live_flagged: Mapped[bool | None] = mapped_column(Boolean)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)

    __table_args__ = (
        UniqueConstraint(
            "run",
            "model_version",
            "topic",
            "kafka_partition",
            "kafka_offset",
            "kafka_timestamp",
            name="uq_model_scores_message",
        ),
        Index(
            "ix_model_scores_run_model_version_scored_time", "run", "model_version", "scored_time"
        ),
    )


class RunCountRow(Base):
    """Records a non-live model scored and flagged per run, topic and minute (and how many of
    them the live model flagged): the denominators of a comparison's flag rates."""

    __tablename__ = "run_counts"

    run: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    scored: Mapped[int] = mapped_column(BigInteger)
    flagged: Mapped[int] = mapped_column(BigInteger)
    live_flagged: Mapped[int] = mapped_column(BigInteger)


class BackfillRunRow(Base):
    """A named re-scoring of a topic's time range by one model: where each partition starts
    and ends, and how far it got (saved with each batch's rows, so a restart resumes)."""

    __tablename__ = "backfill_runs"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(255))
    time_from: Mapped[datetime] = mapped_column(UTCDateTime)
    time_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)  # partition -> end offset
    positions: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)  # partition -> next offset
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
