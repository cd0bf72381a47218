"""Checks on the storage input types (what write_flagged refuses before writing, on a SQLite
file) and the retention age parser."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage.database import dumps_json, make_engine, session_factory, upgrade
from storage.records import FlaggedRecord, ModelVersion, UnstorableRecordError
from storage.repository import parse_age, write_flagged
from tests.support.flagged_records import count_flagged

MakeRecord = Callable[..., FlaggedRecord]
Sessions = sessionmaker[Session]


@pytest.fixture(scope="module")
def sqlite_sessions(tmp_path_factory: pytest.TempPathFactory) -> sessionmaker[Session]:
    """SQLite stores what PostgreSQL would refuse, so a refusal here is write_flagged's own."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('records') / 'latentwatch.db'}")
    upgrade(engine)
    return session_factory(engine)


@pytest.mark.parametrize("name", ["scored_time", "event_time"])
def test_a_naive_time_is_refused_where_the_record_is_made(record: MakeRecord, name: str) -> None:
    with pytest.raises(ValueError, match=f"FlaggedRecord.{name} is a naive datetime"):
        record(1, **{name: datetime(2026, 11, 1, 12, 0)})


def test_nan_scores_are_refused_but_infinity_is_kept(record: MakeRecord) -> None:
    with pytest.raises(ValueError, match=r"FlaggedRecord.p_value is NaN for payments\[0\]@7"):
        record(7, p_value=float("nan"))
    assert record(7, score=float("inf")).score == float("inf")


def test_json_accepts_read_only_mappings_and_refuses_nan() -> None:
    assert (
        dumps_json(MappingProxyType({"a": MappingProxyType({"b": [1.5]})})) == '{"a":{"b":[1.5]}}'
    )
    with pytest.raises(ValueError, match="Out of range float values"):
        dumps_json({"a": float("nan")})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"explanation": {"latent": [object()]}}, "explanation is not storable as JSON"),
        ({"explanation": {"latent": [float("nan")]}}, "explanation is not storable as JSON"),
        ({"record": {"amount": float("inf")}}, "record is not storable as JSON"),
        ({"record": {"note": "a\x00b"}}, "record contains a NUL character"),
        ({"record_id": "a\x00b"}, "record_id contains a NUL character"),
        ({"record_id": "\ud800"}, "record_id is not valid Unicode"),
        ({"record": {"name": "\udc80"}}, "record is not storable as JSON"),
        ({"record": {"amount": np.float64(1.5)}}, "record is not storable as JSON"),
        ({"record": {1: "int key"}}, "record is not storable as JSON"),
        ({"record": {"big": 2**70}}, "record is not storable as JSON"),
        ({"topic": "t" * 256}, "topic is longer than 255 characters"),
        ({"model_version": "v" * 65}, "model_version is longer than 64 characters"),
        (
            {"event_time": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))},
            "event_time 0001-01-01T00:00:00+05:00 has no UTC equivalent",
        ),
    ],
    ids=[
        "object",
        "nan",
        "infinity",
        "nul-json",
        "nul-text",
        "surrogate",
        "surrogate-json",
        "numpy-scalar",
        "int-key",
        "int-beyond-64-bits",
        "long-topic",
        "long-version",
        "time-before-year-1-in-utc",
    ],
)
def test_unstorable_records_are_named(
    record: MakeRecord, change: dict[str, Any], reason: str, sqlite_sessions: Sessions
) -> None:
    """What PostgreSQL would refuse (failing the batch again on every retry) is refused up front
    on both engines, with the record attached so the consumer can dead-letter it."""
    bad = record(3, **change)
    with pytest.raises(UnstorableRecordError) as error:
        write_flagged(sqlite_sessions, [record(1), bad, record(4)])
    assert error.value.record is bad
    assert count_flagged(sqlite_sessions) == 0
    assert str(error.value).startswith(f"flagged record {bad.topic[:255]!r}[0]@3: {reason}")


def test_text_that_only_looks_like_an_escaped_nul_is_storable(
    record: MakeRecord, sqlite_sessions: Sessions
) -> None:
    stored = write_flagged(
        sqlite_sessions, [record(1, record={"path": "C:\\u0000"}, key=b"\\u0000")]
    )
    assert stored == 1


def test_an_unstorable_manifest_is_named(sqlite_sessions: Sessions) -> None:
    manifest = ModelVersion("ffff00001111", {"threshold": float("nan")})
    with pytest.raises(UnstorableRecordError, match="manifest of model version 'ffff00001111'"):
        write_flagged(sqlite_sessions, [], [manifest])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("10m", timedelta(minutes=10)),
        ("36h", timedelta(hours=36)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "30", "d", "-1d", "1.5h", "0d", "30 days", "30D", "1y", "\u0663d", "9999999999999d"],
)
def test_parse_age_names_the_bad_value_and_the_accepted_form(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_age(text)
    assert str(error.value) == (
        f"invalid age {text!r}: expected a positive whole number followed by "
        "s, m, h, d or w (seconds, minutes, hours, days, weeks), e.g. 30d or 12h"
    )
