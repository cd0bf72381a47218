"""The consumer's database sink on SQLite and PostgreSQL: the model version is upserted at
start-up and then at most once per interval, not with every batch; stream counts ride along
with flagged records or wait at most their interval."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from storage.database import make_engine, session_factory, upgrade
from storage.models import ModelVersionRow, StreamCountRow
from storage.records import StreamCount, UnstorableRecordError
from streams.sql_sink import SqlSink
from tests.support.flagged_records import count_flagged, make_record, stored_model_versions

VERSION = "3f9a1c2b7d10"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Sessions = sessionmaker[Session]


@pytest.fixture
def sink_and_sessions(db_url: str) -> Iterator[tuple[SqlSink, Sessions, FakeClock]]:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = session_factory(engine)
    clock = FakeClock()
    sink = SqlSink(sessions, VERSION, {"format": 1}, model_seen_interval_s=60.0, clock=clock)
    yield sink, sessions, clock
    engine.dispose()


def last_seen(sessions: Sessions) -> datetime:
    (version,) = stored_model_versions(sessions)
    return version.last_seen


def test_model_version_is_upserted_once_per_interval(
    sink_and_sessions: tuple[SqlSink, Sessions, FakeClock],
) -> None:
    sink, sessions, clock = sink_and_sessions
    sink.register_model()
    registered = last_seen(sessions)

    clock.now += 59.0
    assert sink.write([make_record(1)]) == 1
    assert last_seen(sessions) == registered  # within the interval: the row is left alone

    clock.now += 1.0
    assert sink.write([make_record(2)]) == 1
    assert last_seen(sessions) > registered
    assert count_flagged(sessions) == 2


def test_a_deleted_model_row_comes_back_with_the_next_due_batch(
    sink_and_sessions: tuple[SqlSink, Sessions, FakeClock],
) -> None:
    sink, sessions, clock = sink_and_sessions
    sink.register_model()
    with sessions.begin() as session:
        session.execute(delete(ModelVersionRow))

    sink.write([make_record(1)])
    assert stored_model_versions(sessions) == []
    clock.now += 60.0
    sink.write([make_record(2)])
    assert [v.version for v in stored_model_versions(sessions)] == [VERSION]


def stored_counts(sessions: Sessions) -> dict[str, tuple[int, int, int, int]]:
    with sessions() as session:
        return {
            row.topic: (row.consumed, row.scored, row.flagged, row.rejected)
            for row in session.scalars(select(StreamCountRow))
        }


MINUTE = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


def test_stream_counts_ride_with_flagged_records_or_wait_at_most_the_interval(
    sink_and_sessions: tuple[SqlSink, Sessions, FakeClock],
) -> None:
    sink, sessions, clock = sink_and_sessions
    sink.count([StreamCount("t", MINUTE, 100, 99, 0, 1)])
    assert sink.write([]) == 0
    assert stored_counts(sessions) == {}  # no round trip for a batch with nothing flagged

    sink.count([StreamCount("t", MINUTE, 100, 100, 2, 0)])
    assert sink.write([make_record(1)]) == 1
    assert stored_counts(sessions) == {"t": (200, 199, 2, 1)}  # in the records' transaction

    sink.count([StreamCount("t", MINUTE, 50, 50, 0, 0)])
    clock.now += 9.0
    sink.write([])
    assert stored_counts(sessions) == {"t": (200, 199, 2, 1)}
    clock.now += 1.0
    sink.write([])  # ten seconds old: written on their own
    assert stored_counts(sessions) == {"t": (250, 249, 2, 1)}

    sink.count([StreamCount("u", MINUTE, 7, 7, 0, 0)])
    sink.flush()  # at shutdown
    assert stored_counts(sessions)["u"] == (7, 7, 0, 0)
    sink.flush()
    assert stored_counts(sessions)["u"] == (7, 7, 0, 0)  # nothing left to add twice


def test_counts_of_a_failed_write_are_kept_and_written_once(
    sink_and_sessions: tuple[SqlSink, Sessions, FakeClock],
) -> None:
    """The loop counts a batch once and may retry its write: the counts leave the sink only
    with a committed transaction."""
    sink, sessions, _ = sink_and_sessions
    sink.count([StreamCount("t", MINUTE, 10, 10, 1, 0)])
    with pytest.raises(UnstorableRecordError):
        sink.write([make_record(1, record={"note": "a\x00b"})])
    assert stored_counts(sessions) == {}
    sink.write([make_record(2)])
    sink.write([make_record(3)])
    assert stored_counts(sessions) == {"t": (10, 10, 1, 0)}
