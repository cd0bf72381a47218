"""Decoding a Kafka message into a record, or into a rejection with a reason code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.messages import DecodePolicy, Message, PlainMessage, Rejection, decode
from streams.scoring import parse_event_time


def msg(value: bytes | None, headers: tuple[tuple[str, bytes | None], ...] = ()) -> Message:
    return PlainMessage("t", 0, 7, 1_790_000_000_000, b"k", value, headers)


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (None, "not_json", "message has no value"),
        (b"\xff\xfe{}", "not_utf8", "not UTF-8: invalid start byte at byte 0"),
        (b"{'single': 'quotes'}", "not_json", "not valid JSON"),
        (b"", "not_json", "not valid JSON"),
        (b'{"a": NaN}', "non_finite_number", "NaN or Infinity"),
        (b'{"a": -Infinity}', "non_finite_number", "NaN or Infinity"),
        (b"[1, 2]", "not_an_object", "got list"),
        (b'"text"', "not_an_object", "got str"),
        (b"x" * 2000, "oversized", "2000 bytes, more than the limit of 1000"),
    ],
)
def test_bad_messages_become_rejections(value: bytes | None, reason: str, detail: str) -> None:
    result = decode(msg(value), DecodePolicy(max_bytes=1000))
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert detail in result.detail


def test_a_string_containing_nan_is_still_json() -> None:
    assert decode(msg(b'{"a": "NaN", "b": 1}'), DecodePolicy()) == {"a": "NaN", "b": 1}


def test_required_fields() -> None:
    policy = DecodePolicy(required_fields=("id", "amount"))
    result = decode(msg(b'{"id": "x", "amount": null}'), policy)
    assert isinstance(result, Rejection)
    assert (result.reason, result.detail) == (
        "missing_required",
        "missing required field(s): amount",
    )
    assert decode(msg(b'{"id": "x", "amount": 3}'), policy) == {"id": "x", "amount": 3}


def test_schema_versions_from_header_or_field() -> None:
    policy = DecodePolicy(schema_versions=("2", "3"))
    assert decode(msg(b'{"a": 1}', (("schema-version", b"3"),)), policy) == {"a": 1}
    assert decode(msg(b'{"a": 1, "schema_version": 2}'), policy) == {"a": 1, "schema_version": 2}
    assert decode(msg(b'{"a": 1}'), policy) == {"a": 1}  # unversioned records are accepted
    rejected = decode(msg(b'{"a": 1}', (("schema-version", b"9"),)), policy)
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "unknown_schema_version"
    assert rejected.detail == "schema version 9 is not one of 2, 3"
    field = decode(msg(b'{"a": 1, "schema_version": "1"}'), policy)
    assert isinstance(field, Rejection) and field.reason == "unknown_schema_version"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T10:00:00+01:00", datetime(2026, 11, 21, 9, tzinfo=UTC)),
        ("2026-11-21T10:00:00", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        (1_795_000_000, datetime.fromtimestamp(1_795_000_000, UTC)),
        (1_795_000_000_500, datetime.fromtimestamp(1_795_000_000.5, UTC)),
        ("yesterday", None),
        (True, None),
        (None, None),
        (1e300, None),
        ("0001-01-01T00:00:00+05:00", None),  # no UTC equivalent: the record keeps no time
        ("9999-12-31T23:00:00-05:00", None),
    ],
)
def test_event_times(value: object, expected: datetime | None) -> None:
    assert parse_event_time(value) == expected
