"""Reads and writes of flagged records. Every function takes the session factory it works with;
each call is one transaction, so a failed call has written nothing and can simply be retried.

The HTTP query API (filters, cursors) is built on the models and indexes in ``storage.models``;
this module keeps to what the consumer and the CLI need.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from storage.database import JSONText, dumps_json
from storage.models import (
    Base,
    FeedbackLabel,
    FeedbackRow,
    FlaggedRecordRow,
    ModelVersionRow,
    StreamCountRow,
)
from storage.records import (
    FlaggedRecord,
    ModelScore,
    ModelVersion,
    RunCount,
    StreamCount,
    UnstorableRecordError,
)

# What a stored record holds: its fields, and the readable form of its key.
_RECORD_FIELDS = (*(field.name for field in fields(FlaggedRecord)), "key_text")
_FLAGGED = Base.metadata.tables["flagged_records"]
_MODEL_VERSIONS = Base.metadata.tables["model_versions"]
_STREAM_COUNTS = Base.metadata.tables["stream_counts"]
_MODEL_SCORES = Base.metadata.tables["model_scores"]
_RUN_COUNTS = Base.metadata.tables["run_counts"]
# Python attribute -> SQL column, where they differ ("offset" is a reserved word).
_SQL_NAMES = {"partition": "kafka_partition", "offset": "kafka_offset"}
# SQL names of the unique constraint that makes redelivery idempotent.
_IDEMPOTENCY_KEY = ("topic", "kafka_partition", "kafka_offset", "kafka_timestamp")
# Column widths (models.py) that PostgreSQL enforces and SQLite does not.
_MAX_LENGTHS = {"topic": 255, "model_version": 64}
# A NUL character as JSON escapes it: \u0000 after an odd number of backslashes (after an even
# number, it is an escaped backslash followed by the text "u0000").
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE_PATTERN = re.compile(r"([0-9]+)([smhdw])")


def write_flagged(
    session_factory: sessionmaker[Session],
    records: Sequence[FlaggedRecord],
    models: Sequence[ModelVersion] = (),
    *,
    counts: Sequence[StreamCount] = (),
    scores: Sequence[ModelScore] = (),
    run_counts: Sequence[RunCount] = (),
    now: datetime | None = None,
) -> int:
    """Store a batch in one transaction and return how many records were new.

    Records already stored (same topic, partition, offset, Kafka timestamp) are skipped by the
    database, so the consumer can retry a whole batch after any failure. ``models`` are
    upserted: a new version gets ``first_seen = last_seen = now``, a known one only moves
    ``last_seen`` forward. ``counts`` are added to the stored counts of their topic and minute;
    ``scores`` (shadow and backfill rows, stored once each) and ``run_counts`` likewise.
    A record no database would store raises :class:`UnstorableRecordError` before anything is
    written; infrastructure errors propagate as SQLAlchemy exceptions, with nothing written.
    """
    if not records and not models and not counts and not scores and not run_counts:
        return 0
    _check_models(models)  # the records are checked as their rows are built
    seen_at = now if now is not None else datetime.now(UTC)
    # Sorted so that concurrent writers take row locks in one order (PostgreSQL would otherwise
    # deadlock on two batches that overlap in opposite orders).
    ordered = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    unique_models = {model.version: model for model in models}
    inserted = 0
    with session_factory() as session:
        rows = [_flagged_row(r) for r in ordered]  # each checked: nothing written if one fails
        with session.begin():
            if rows:
                # One executemany (pipelined by psycopg), not one round trip per record; its
                # rowcount is the number of rows actually inserted, on both engines.
                insert = _flagged_insert(session.get_bind().dialect.name)
                result = session.execute(
                    insert, rows, execution_options={"preserve_rowcount": True}
                )
                inserted = result.rowcount  # type: ignore[attr-defined]
            if unique_models:
                # After the records: the shared model_versions row stays locked for a short time.
                upsert = _insert(session, _MODEL_VERSIONS)
                upsert_models = upsert.on_conflict_do_update(
                    index_elements=["version"],
                    set_={"last_seen": upsert.excluded.last_seen},
                    where=ModelVersionRow.last_seen < upsert.excluded.last_seen,
                )
                session.execute(
                    upsert_models,
                    [
                        {
                            "version": version,
                            "first_seen": seen_at,
                            "last_seen": seen_at,
                            "manifest": unique_models[version].manifest,
                        }
                        for version in sorted(unique_models)
                    ],
                )
            if counts:
                _add_counts(session, counts)
            if scores:
                add_scores(session, scores)
            if run_counts:
                add_run_counts(session, run_counts)
    return inserted


def add_scores(session: Session, scores: Sequence[ModelScore]) -> None:
    """Shadow and backfill rows, each stored once (a redelivered batch adds nothing). A record
    no database would store as JSON is kept without it: its scores still count."""
    rows = []
    for s in sorted(scores, key=lambda s: (s.run, s.topic, s.partition, s.offset)):
        row = {_SQL_NAMES.get(f.name, f.name): getattr(s, f.name) for f in fields(ModelScore)}
        if s.record is not None:
            try:
                _check_json(s.record, "record")
            except UnstorableRecordError:
                row["record"] = None
        rows.append(row)
    insert = _insert(session, _MODEL_SCORES).on_conflict_do_nothing(
        index_elements=[
            "run",
            "model_version",
            "topic",
            "kafka_partition",
            "kafka_offset",
            "kafka_timestamp",
        ]
    )
    session.execute(insert, rows)


def add_run_counts(session: Session, counts: Sequence[RunCount]) -> None:
    merged: dict[tuple[str, str, str, datetime], list[int]] = {}
    for c in counts:
        total = merged.setdefault((c.run, c.model_version, c.topic, c.minute), [0, 0, 0])
        for i, n in enumerate((c.scored, c.flagged, c.live_flagged)):
            total[i] += n
    upsert = _insert(session, _RUN_COUNTS)
    upsert = upsert.on_conflict_do_update(
        index_elements=["run", "model_version", "topic", "minute"],
        set_={
            n: _RUN_COUNTS.c[n] + upsert.excluded[n] for n in ("scored", "flagged", "live_flagged")
        },
    )
    session.execute(
        upsert,
        [
            dict(
                zip(
                    (
                        "run",
                        "model_version",
                        "topic",
                        "minute",
                        "scored",
                        "flagged",
                        "live_flagged",
                    ),
                    (*key, *merged[key]),
                    strict=True,
                )
            )
            for key in sorted(merged)
        ],
    )


def _add_counts(session: Session, counts: Sequence[StreamCount]) -> None:
    """Add to the (topic, minute) rows, creating them as needed: several consumers of a group
    write the same rows. Merged and sorted first, so rows are locked once and in one order."""
    merged: dict[tuple[str, datetime], list[int]] = {}
    for c in counts:
        total = merged.setdefault((c.topic, c.minute), [0, 0, 0, 0])
        for i, n in enumerate((c.consumed, c.scored, c.flagged, c.rejected)):
            total[i] += n
    session.execute(
        _counts_upsert(session.get_bind().dialect.name),
        [
            {"topic": key[0], "minute": key[1], **dict(zip(_COUNTS, merged[key], strict=True))}
            for key in sorted(merged)
        ],
    )


_COUNTS = ("consumed", "scored", "flagged", "rejected")


@cache
def _counts_upsert(dialect: str) -> postgresql.Insert | sqlite.Insert:
    """Built once per dialect: building the SET expressions costs more than executing them."""
    upsert = _dialect_insert(dialect, _STREAM_COUNTS)
    return upsert.on_conflict_do_update(
        index_elements=["topic", "minute"],
        set_={name: _STREAM_COUNTS.c[name] + upsert.excluded[name] for name in _COUNTS},
    )


def _check_models(models: Sequence[ModelVersion]) -> None:
    for model in models:
        if len(model.version) > _MAX_LENGTHS["model_version"]:
            raise UnstorableRecordError(f"model version {model.version[:80]!r} is too long")
        _check_json(model.manifest, f"manifest of model version {model.version!r}")


def _storable_json(record: FlaggedRecord) -> tuple[JSONText, JSONText]:
    """Refuse, naming the culprit, what PostgreSQL would reject in one record (and SQLite might
    store): JSON that is not JSON (NaN, numpy scalars, objects), NUL characters, unpaired
    surrogates, over-long names. Return its explanation and original record as the JSON text
    to store: written once, for the check and the database alike."""
    for name, limit in _MAX_LENGTHS.items():
        if len(getattr(record, name)) > limit:
            message = f"{_where(record, name)} is longer than {limit} characters"
            raise UnstorableRecordError(message, record)
    for name in ("topic", "record_id", "model_version", "top_feature"):
        _check_text(getattr(record, name), name, record)
    for name in ("event_time", "scored_time"):
        _check_time(getattr(record, name), name, record)
    return (
        _check_json(record.explanation, "explanation", record),
        _check_json(record.record, "record", record),
    )


def _where(record: FlaggedRecord | None, what: str) -> str:
    """What failed, for the message: only built when something did (it costs an f-string)."""
    if record is None:
        return what
    return f"flagged record {record.topic[:255]!r}[{record.partition}]@{record.offset}: {what}"


def _check_text(text: str | None, what: str, record: FlaggedRecord | None = None) -> None:
    if text is None:
        return
    if "\x00" in text:
        raise UnstorableRecordError(f"{_where(record, what)} contains a NUL character", record)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = f"{_where(record, what)} is not valid Unicode ({exc.reason})"
        raise UnstorableRecordError(message, record) from exc


def _check_time(value: datetime | None, what: str, record: FlaggedRecord) -> None:
    if value is None:
        return
    try:
        value.astimezone(UTC)  # times are stored in UTC
    except OverflowError as exc:
        raise UnstorableRecordError(
            f"{_where(record, what)} {value.isoformat()} has no UTC equivalent (out of range)",
            record,
        ) from exc


def _check_json(value: object, what: str, record: FlaggedRecord | None = None) -> JSONText:
    try:
        text = dumps_json(value)
    except (TypeError, ValueError) as exc:  # ValueError: NaN, infinity, circular reference
        raise UnstorableRecordError(
            f"{_where(record, what)} is not storable as JSON ({exc}): use plain Python types "
            "and finite numbers",
            record,
        ) from exc
    if "\\u0000" in text and _JSON_NUL.search(text):  # the substring test is the fast path
        raise UnstorableRecordError(
            f"{_where(record, what)} contains a NUL character (\\u0000)", record
        )
    _check_text(text, what, record)
    return text


def _insert(session: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT with ON CONFLICT support for the session's database."""
    return _dialect_insert(session.get_bind().dialect.name, table)


def _dialect_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"storage supports SQLite and PostgreSQL, not {dialect}")


@cache
def _flagged_insert(dialect: str) -> postgresql.Insert | sqlite.Insert:
    """The idempotent INSERT of flagged records: a redelivered record is skipped."""
    return _dialect_insert(dialect, _FLAGGED).on_conflict_do_nothing(
        index_elements=_IDEMPOTENCY_KEY
    )


def _flagged_row(record: FlaggedRecord) -> dict[str, Any]:
    """A record's row, checked (UnstorableRecordError), its JSON encoded once for the check
    and the database alike."""
    row = {_SQL_NAMES.get(name, name): getattr(record, name) for name in _RECORD_FIELDS}
    row["explanation"], row["record"] = _storable_json(record)
    return row


def prune_flagged(
    session_factory: sessionmaker[Session], older_than: datetime, *, batch_size: int = 10_000
) -> int:
    """Delete records scored before ``older_than`` (their feedback goes with them) and the
    stream counts of the minutes before it; return how many records. Deletes ``batch_size``
    records per transaction so that a large backlog does not hold a long lock that stalls the
    consumer's writes."""
    if older_than.utcoffset() is None:
        raise ValueError(
            f"older_than is a naive datetime ({older_than.isoformat()}): pass a timezone-aware "
            "one, e.g. datetime.now(UTC) - parse_age('30d')"
        )
    deleted = 0
    while True:
        old_ids = (
            select(FlaggedRecordRow.id)
            .where(FlaggedRecordRow.scored_time < older_than)
            .limit(batch_size)
            .scalar_subquery()
        )
        with session_factory.begin() as session:
            result = session.execute(
                delete(FlaggedRecordRow)
                .where(FlaggedRecordRow.id.in_(old_ids))
                .execution_options(synchronize_session=False)
            )
        count: int = result.rowcount  # type: ignore[attr-defined]
        deleted += count
        if count < batch_size:
            break
    with session_factory.begin() as session:  # one row per topic and minute: small
        session.execute(delete(StreamCountRow).where(StreamCountRow.minute < older_than))
    return deleted


def add_feedback(
    session_factory: sessionmaker[Session],
    flagged_id: int,
    label: FeedbackLabel | str,
    note: str | None = None,
    *,
    now: datetime | None = None,
) -> int:
    """Record a user's verdict on a flagged record and return the feedback id. A flagged_id
    that does not exist raises ``sqlalchemy.exc.IntegrityError`` (foreign key)."""
    row = FeedbackRow(
        flagged_id=flagged_id,
        label=FeedbackLabel(label).value,
        note=note,
        created_at=now if now is not None else datetime.now(UTC),
    )
    with session_factory.begin() as session:
        session.add(row)
    return row.id


def parse_age(text: str) -> timedelta:
    """A retention age such as ``30d`` (``latentwatch db prune --older-than 30d``).

    >>> parse_age("36h")
    datetime.timedelta(days=1, seconds=43200)
    """
    match = _AGE_PATTERN.fullmatch(text.strip())
    if match is not None and int(match.group(1)) > 0:
        try:
            return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            pass  # more than 999,999,999 days
    raise ValueError(
        f"invalid age {text!r}: expected a positive whole number followed by "
        "s, m, h, d or w (seconds, minutes, hours, days, weeks), e.g. 30d or 12h"
    )
