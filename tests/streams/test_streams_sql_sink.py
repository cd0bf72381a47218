"""The consumer's database sink on SQLite and PostgreSQL: the model version is upserted at
start-up and then at most once per interval, not with every batch."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from flagged_records import make_record
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from storage.database import make_engine, session_factory, upgrade
from storage.models import ModelVersionRow
from storage.repository import count_flagged, list_model_versions
from streams.sql_sink import SqlSink

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
    (version,) = list_model_versions(sessions)
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
    assert list_model_versions(sessions) == []
    clock.now += 60.0
    sink.write([make_record(2)])
    assert [v.version for v in list_model_versions(sessions)] == [VERSION]
