"""Repository behaviour on SQLite and PostgreSQL: idempotent batches, all-or-nothing writes,
model-version bookkeeping, retention."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.database import make_engine, session_factory
from storage.models import FeedbackLabel, FeedbackRow, FlaggedRecordRow
from storage.records import FlaggedRecord, ModelVersion, UnstorableRecordError
from storage.repository import add_feedback, prune_flagged, write_flagged
from tests.support.flagged_records import count_flagged, stored_model_versions

Sessions = sessionmaker[Session]
MakeRecord = Callable[..., FlaggedRecord]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def stored_keys(sessions: Sessions) -> list[tuple[str, int, int]]:
    with sessions() as session:
        rows = session.execute(
            select(FlaggedRecordRow.topic, FlaggedRecordRow.partition, FlaggedRecordRow.offset)
        )
        return sorted((topic, partition, offset) for topic, partition, offset in rows)


def test_write_stores_every_field(sessions: Sessions, record: MakeRecord) -> None:
    # A non-UTC offset and a read-only mapping: stored as the same instant / plain JSON.
    auckland = timezone(timedelta(hours=13))
    original = record(
        41,
        partition=3,
        key=None,
        top_feature=None,
        event_time=datetime(2026, 11, 2, 1, 0, tzinfo=auckland),
        scored_time=T0 + timedelta(microseconds=123),
    )
    assert write_flagged(sessions, [original]) == 1

    with sessions() as session:
        row = session.scalars(select(FlaggedRecordRow)).one()
    stored = {name: getattr(row, name) for name in FlaggedRecord.__dataclass_fields__}
    assert stored == {name: getattr(original, name) for name in FlaggedRecord.__dataclass_fields__}
    assert row.event_time is not None
    assert row.event_time.tzinfo is UTC
    assert row.event_time == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert row.scored_time.tzinfo is UTC


def test_redelivered_batch_is_stored_once(sessions: Sessions, record: MakeRecord) -> None:
    batch = [record(offset) for offset in range(5)]
    assert write_flagged(sessions, batch) == 5
    assert write_flagged(sessions, batch) == 0
    assert count_flagged(sessions) == 5

    # Partly overlapping, out of order, and with the same offset on another partition/topic.
    overlap = [
        record(6),
        record(3),
        record(5),
        record(4),
        record(4, partition=1),
        record(4, topic="refunds"),
    ]
    assert write_flagged(sessions, overlap) == 4
    assert stored_keys(sessions) == sorted(
        [("payments", 0, offset) for offset in range(7)] + [("payments", 1, 4), ("refunds", 0, 4)]
    )


def test_a_reused_offset_with_another_timestamp_is_a_new_record(
    sessions: Sessions, record: MakeRecord
) -> None:
    """A recreated topic (or a broker that lost its log) starts offsets again at 0: those are
    new records, not redeliveries, and must not be dropped as duplicates."""
    assert write_flagged(sessions, [record(0), record(1)]) == 2
    recreated = [record(0, kafka_timestamp=1_900_000_000_000, record_id="new-0")]
    assert write_flagged(sessions, recreated) == 1
    assert write_flagged(sessions, recreated) == 0
    assert count_flagged(sessions) == 3


def test_duplicates_within_one_batch_are_stored_once(
    sessions: Sessions, record: MakeRecord
) -> None:
    assert write_flagged(sessions, [record(1), record(1, score=99.0), record(2)]) == 2
    assert count_flagged(sessions) == 2


def test_concurrent_overlapping_writers_store_each_record_once(
    sessions: Sessions, record: MakeRecord, model: ModelVersion
) -> None:
    first = [record(offset) for offset in range(0, 300)]
    second = [record(offset) for offset in reversed(range(150, 450))]  # opposite order
    start = threading.Barrier(2)

    def write(batch: list[FlaggedRecord]) -> int:
        start.wait()
        return write_flagged(sessions, batch, [model])

    with ThreadPoolExecutor(max_workers=2) as pool:
        inserted = [future.result() for future in [pool.submit(write, b) for b in (first, second)]]

    assert sum(inserted) == 450  # every row counted by exactly one writer
    assert stored_keys(sessions) == [("payments", 0, offset) for offset in range(450)]


def test_model_versions_keep_first_seen_and_move_last_seen_forward(
    sessions: Sessions, record: MakeRecord, model: ModelVersion
) -> None:
    other = ModelVersion("00aa11bb22cc", {"format": 1})
    t1, t2 = T0, T0 + timedelta(hours=1)
    write_flagged(sessions, [record(1)], [model, model], now=t1)  # duplicates are harmless
    write_flagged(sessions, [record(2)], [model, other], now=t2)
    write_flagged(sessions, [record(1)], [model], now=t1 - timedelta(days=1))  # a late retry

    versions = {v.version: v for v in stored_model_versions(sessions)}
    assert list(versions) == [model.version, other.version]  # oldest first
    assert (versions[model.version].first_seen, versions[model.version].last_seen) == (t1, t2)
    assert (versions[other.version].first_seen, versions[other.version].last_seen) == (t2, t2)
    assert versions[model.version].manifest == dict(model.manifest)


def test_models_alone_are_recorded(sessions: Sessions, model: ModelVersion) -> None:
    assert write_flagged(sessions, [], [model], now=T0) == 0
    assert [v.version for v in stored_model_versions(sessions)] == [model.version]
    assert write_flagged(sessions, []) == 0


def test_an_unstorable_record_is_refused_before_anything_is_written(
    sessions: Sessions, record: MakeRecord, model: ModelVersion
) -> None:
    # The kinds of unstorable record are tested without a database in test_storage_records.py.
    good = [record(offset) for offset in range(3)]
    bad = record(3, explanation={"latent": [object()]})
    with pytest.raises(UnstorableRecordError, match=r"\]@3: explanation is not storable"):
        write_flagged(sessions, [*good, bad], [model])
    assert count_flagged(sessions) == 0
    assert stored_model_versions(sessions) == []

    assert write_flagged(sessions, good, [model]) == 3  # the consumer's retry without it


def test_text_that_only_looks_like_an_escaped_nul_is_stored(
    sessions: Sessions, record: MakeRecord
) -> None:
    original = record(1, record={"path": "C:\\u0000\\x"}, record_id="\\u0000")
    assert write_flagged(sessions, [original]) == 1
    with sessions() as session:
        row = session.scalars(select(FlaggedRecordRow)).one()
    assert (row.record, row.record_id) == (original.record, original.record_id)


REFUSE_OFFSET_2000 = {
    "sqlite": [
        """CREATE TRIGGER refuse_2000 BEFORE INSERT ON flagged_records
           WHEN NEW.kafka_offset = 2000 BEGIN SELECT RAISE(ABORT, 'disk full'); END"""
    ],
    "postgresql": [
        """CREATE FUNCTION refuse_2000() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'disk full'; END $$""",
        """CREATE TRIGGER refuse_2000 BEFORE INSERT ON flagged_records
           FOR EACH ROW WHEN (NEW.kafka_offset = 2000) EXECUTE FUNCTION refuse_2000()""",
    ],
}


def test_a_database_failure_mid_batch_writes_nothing(
    engine: Engine, sessions: Sessions, record: MakeRecord, model: ModelVersion
) -> None:
    with engine.begin() as connection:
        for statement in REFUSE_OFFSET_2000[engine.dialect.name]:
            connection.exec_driver_sql(statement)
    batch = [record(offset) for offset in range(2500)]  # 2,000 rows go in before the failure
    with pytest.raises(DBAPIError, match="disk full"):
        write_flagged(sessions, batch, [model])
    assert count_flagged(sessions) == 0
    assert stored_model_versions(sessions) == []


class LostConnectionError(Exception):
    pass


def test_a_failure_after_the_records_writes_nothing(
    engine: Engine, sessions: Sessions, record: MakeRecord, model: ModelVersion
) -> None:
    """The records are sent, then the connection fails on the model upsert that follows."""
    sent: list[str] = []

    def fail_on_model_versions(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)
        if "model_versions" in statement:
            raise LostConnectionError("server closed the connection unexpectedly")

    batch = [record(offset) for offset in range(50)]
    event.listen(engine, "before_cursor_execute", fail_on_model_versions)
    try:
        with pytest.raises(LostConnectionError):
            write_flagged(sessions, batch, [model])
    finally:
        event.remove(engine, "before_cursor_execute", fail_on_model_versions)
    assert any(statement.startswith("INSERT INTO flagged_records") for statement in sent)
    assert count_flagged(sessions) == 0

    assert write_flagged(sessions, batch, [model]) == 50  # the consumer's retry


def test_writing_without_a_schema_raises(engine: Engine, record: MakeRecord) -> None:
    with pytest.raises(DBAPIError):
        write_flagged(session_factory(engine), [record(1)])


def test_writing_to_an_unreachable_server_raises(record: MakeRecord) -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing_listens_here")
    try:
        with pytest.raises(OperationalError):
            write_flagged(session_factory(engine), [record(1)])
    finally:
        engine.dispose()


def test_prune_deletes_old_records_and_their_feedback(
    sessions: Sessions, record: MakeRecord
) -> None:
    cutoff = T0
    old = [
        record(offset, scored_time=cutoff - timedelta(days=1, seconds=offset))
        for offset in range(5)
    ]
    new = [record(10, scored_time=cutoff), record(11, scored_time=cutoff + timedelta(days=1))]
    write_flagged(sessions, [*old, *new])
    with sessions() as session:
        ids = dict(session.execute(select(FlaggedRecordRow.offset, FlaggedRecordRow.id)).all())
    add_feedback(sessions, ids[0], FeedbackLabel.FALSE_ALARM, "known batch job")
    add_feedback(sessions, ids[10], FeedbackLabel.TRUE_ALARM)

    assert prune_flagged(sessions, cutoff, batch_size=2) == 5  # several batches
    assert [key[2] for key in stored_keys(sessions)] == [10, 11]
    with sessions() as session:
        feedback = session.execute(select(FeedbackRow.flagged_id, FeedbackRow.label)).all()
    assert feedback == [(ids[10], "true_alarm")]
    assert prune_flagged(sessions, cutoff) == 0


def test_prune_refuses_a_naive_cutoff() -> None:
    with pytest.raises(ValueError, match="older_than is a naive datetime"):
        prune_flagged(sessionmaker(), datetime(2026, 1, 1))  # refused before any connection


def test_feedback_needs_an_existing_record(sessions: Sessions) -> None:
    # Also proves foreign keys are enforced on SQLite (PRAGMA foreign_keys=ON per connection).
    with pytest.raises(IntegrityError):
        add_feedback(sessions, 12345, FeedbackLabel.TRUE_ALARM)


def test_feedback_label_is_constrained(sessions: Sessions, record: MakeRecord) -> None:
    write_flagged(sessions, [record(1)])
    with sessions() as session:
        flagged_id = session.scalars(select(FlaggedRecordRow.id)).one()
    statement = text(
        "INSERT INTO feedback (flagged_id, label, created_at) VALUES (:id, 'maybe', :at)"
    )
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.execute(statement, {"id": flagged_id, "at": T0})
    with pytest.raises(ValueError, match="'maybe' is not a valid FeedbackLabel"):
        add_feedback(sessions, flagged_id, "maybe")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackRow)) == 0
