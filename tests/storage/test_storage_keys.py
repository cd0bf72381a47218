"""Kafka keys are bytes: stored exactly (Java's Long serializer, binary UUIDs, NUL bytes, text
that is not UTF-8) beside a readable form, on SQLite and PostgreSQL; migration 0003 converts
the text keys of existing tables."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

import pytest
from alembic import command
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from storage.database import current_revision, migration_config, upgrade
from storage.models import FlaggedRecordRow
from storage.records import FlaggedRecord, readable_key
from storage.repository import write_flagged

UUID = uuid.UUID("12345678-0000-4000-8000-00000000abcd")
KEYS: list[tuple[bytes | None, str | None]] = [
    (struct.pack(">q", 42), "000000000000002a"),  # Java's LongSerializer
    (struct.pack(">i", -1), "ffffffff"),  # IntegerSerializer
    (UUID.bytes, UUID.hex),
    (b"caf\xc3\xa9", "café"),
    (b"a\x00b", "610062"),  # valid UTF-8, but PostgreSQL text cannot hold NUL
    (b"\xff\xfe", "fffe"),
    (b"", ""),
    (None, None),
]


def test_keys_are_stored_as_their_exact_bytes_with_a_readable_form(
    sessions: sessionmaker[Session], record: Callable[..., FlaggedRecord]
) -> None:
    records = [record(i, key=key) for i, (key, _) in enumerate(KEYS)]
    assert write_flagged(sessions, records) == len(KEYS)
    with sessions() as session:
        rows = session.execute(
            select(FlaggedRecordRow.key, FlaggedRecordRow.key_text).order_by(
                FlaggedRecordRow.offset
            )
        )
        assert [tuple(r) for r in rows] == KEYS


def test_a_key_must_be_bytes(record: Callable[..., FlaggedRecord]) -> None:
    with pytest.raises(TypeError, match=r"FlaggedRecord.key must be bytes or None, got str"):
        record(1, key="text")


def test_readable_key_of_invalid_utf8_is_hex() -> None:
    assert readable_key(b"\xc3\x28") == "c328"


def test_migration_0003_converts_existing_text_keys(engine: Engine) -> None:
    upgrade(engine, "0002")
    insert = text(
        "INSERT INTO flagged_records (topic, kafka_partition, kafka_offset, kafka_timestamp, "
        "key, scored_time, model_version, score, severity, p_value, density, density_p_value, "
        "reconstruction, reconstruction_p_value, cluster, cluster_distance, explanation, record) "
        "VALUES ('t', 0, :offset, 0, :key, '2026-11-01 12:00:00+00', 'v', 1, 1, 1, 1, 1, 1, 1, "
        "0, 1, '{}', '{}')"
    )
    old_keys = ["customer-7", "café", "c\ufffdf", None]  # the third was decoded with replace
    with engine.begin() as connection:
        for offset, key in enumerate(old_keys):
            connection.execute(insert, {"offset": offset, "key": key})

    upgrade(engine, "0003")
    assert current_revision(engine) == "0003"
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT key, key_text FROM flagged_records ORDER BY kafka_offset")
        )
        converted = [(None if k is None else bytes(k), t) for k, t in rows]
    assert converted == [
        (None if k is None else k.encode("utf-8"), k) for k in old_keys
    ]  # the bytes of the text there was: the original of a replaced byte was lost before 0003

    with engine.begin() as connection:  # back to text keys: the readable form
        command.downgrade(migration_config(connection), "0002")
    with engine.connect() as connection:
        keys = [k for (k,) in connection.execute(text("SELECT key FROM flagged_records"))]
    assert sorted(keys, key=str) == sorted(old_keys, key=str)
