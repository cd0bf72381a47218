"""Counts of flagged records per time bucket and per topic, beside the stream counts of what was
consumed and scored, for the API's /stats. Takes an open Session and the typed filter of
storage.queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    cast,
    func,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.models import (
    FlaggedRecordRow,
    StreamCountRow,
)
from storage.queries import EPOCH, FlaggedFilter, QueryError, filter_conditions, time_column

_BUCKET_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


@dataclass(frozen=True)
class Bucket:
    start: datetime  # the bucket is [start, start + bucket_seconds)
    count: int  # matching flagged records
    # Records consumed and scored in the bucket (stream_counts), None where those counts cannot
    # answer the query: buckets of less than a minute, or times that are event times.
    consumed: int | None = None
    scored: int | None = None

    @property
    def flagged_share(self) -> float | None:
        """Matching flagged records per scored record."""
        return self.count / self.scored if self.scored else None


@dataclass(frozen=True)
class TopicCount:
    topic: str
    count: int
    share_of_flagged: float  # this topic's part of the matching flagged records, 0..1
    consumed: int | None = None
    scored: int | None = None

    @property
    def flagged_share(self) -> float | None:
        return self.count / self.scored if self.scored else None


@dataclass(frozen=True)
class Stats:
    """Flagged counts, and beside them how many records the consumers consumed and scored (per
    minute, from ``stream_counts``), so that the flagged share can be charted from SQL."""

    bucket_seconds: int
    total: int
    buckets: tuple[Bucket, ...]  # consecutive, empty buckets included
    topics: tuple[TopicCount, ...]  # most flagged first, then topics with nothing flagged


def parse_bucket(text: str) -> int:
    """Bucket size in seconds from ``<n><unit>``, unit s, m, h or d.

    >>> parse_bucket("15m")
    900
    """
    number, unit = text[:-1], text[-1:]
    if not (number.isascii() and number.isdigit()) or unit not in _BUCKET_UNITS_S:
        raise QueryError(
            f"invalid bucket {text!r}: expected a whole number followed by s, m, h or d "
            "(seconds, minutes, hours, days), e.g. 1m, 1h or 1d"
        )
    seconds = int(number) * _BUCKET_UNITS_S[unit]
    if not 0 < seconds <= 366 * 86_400:
        raise QueryError(f"invalid bucket {text!r}: give a size from 1s to 366d")
    return seconds


def _bucket_index(when: datetime, bucket_seconds: int) -> int:
    return (when - EPOCH) // timedelta(seconds=bucket_seconds)


def _sql_bucket_index(
    session: Session, column: InstrumentedAttribute[Any], bucket_seconds: int
) -> ColumnElement[int]:
    """floor(seconds since the epoch / bucket) in SQL; buckets are aligned to the epoch, so
    days start at midnight UTC."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / bucket_seconds), BigInteger)
    # SQLite stores UTC text; strftime('%s') reads it as whole seconds since the epoch.
    # Its integer division truncates towards zero, so floor it by hand for times before 1970.
    epoch_s = cast(func.strftime("%s", column), BigInteger)
    below = (epoch_s % bucket_seconds + bucket_seconds) % bucket_seconds
    return (epoch_s - below) // bucket_seconds


def flagged_stats(
    session: Session, flt: FlaggedFilter, bucket_seconds: int, *, max_buckets: int
) -> Stats:
    """Counts of matching records per time bucket (on the filter's time field) and per topic,
    with the records consumed and scored where the per-minute stream counts can tell (scored
    time; buckets of whole minutes). The range is [start, end) where given, else that of the
    matching records and counts; a range of more than ``max_buckets`` buckets raises
    :class:`QueryError`."""
    column = time_column(flt)
    conditions = filter_conditions(flt)
    counted = _countsfilter_conditions(flt)
    first, last = flt.start, flt.end - timedelta(microseconds=1) if flt.end else None
    if first is None or last is None:
        low, high = session.execute(
            select(func.min(column), func.max(column)).where(*conditions)
        ).one()
        if counted is not None:
            minute = StreamCountRow.minute
            c_low, c_high = session.execute(
                select(func.min(minute), func.max(minute)).where(*counted)
            ).one()
            low = min((t for t in (low, c_low) if t is not None), default=None)
            c_high = c_high and c_high + timedelta(seconds=59)
            high = max((t for t in (high, c_high) if t is not None), default=None)
        first, last = first or low, last or high
    topics = _topic_counts(session, conditions, counted)
    total = sum(t.count for t in topics)
    if first is None or last is None or first > last:  # no matching records and no bounds
        return Stats(bucket_seconds, total, (), topics)
    first_index, last_index = (_bucket_index(t, bucket_seconds) for t in (first, last))
    if last_index - first_index + 1 > max_buckets:
        raise QueryError(
            f"{last_index - first_index + 1} buckets of {bucket_seconds}s from "
            f"{first.isoformat()} to {last.isoformat()} are more than the {max_buckets} allowed: "
            "choose a larger bucket or a shorter start/end range"
        )
    index = _sql_bucket_index(session, column, bucket_seconds).label("bucket")
    grouped = select(index, func.count()).where(*conditions).group_by(index)
    counts = {index: count for index, count in session.execute(grouped)}
    per_bucket: dict[int, tuple[int, int]] | None = None
    if counted is not None and bucket_seconds % 60 == 0:
        minute_index = _sql_bucket_index(session, StreamCountRow.minute, bucket_seconds)
        per_bucket = _consumed_and_scored(session, minute_index.label("bucket"), counted)
    step = timedelta(seconds=bucket_seconds)
    try:  # buckets are aligned to the epoch: the first may start before year 1
        buckets = tuple(
            Bucket(
                EPOCH + i * step,
                int(counts.get(i, 0)),
                *(per_bucket.get(i, (0, 0)) if per_bucket is not None else (None, None)),
            )
            for i in range(first_index, last_index + 1)
        )
    except OverflowError:
        raise QueryError(
            f"buckets of {bucket_seconds}s aligned to 1970-01-01 would start before year 1 "
            f"for {first.isoformat()}: choose a later start or a smaller bucket"
        ) from None
    return Stats(bucket_seconds, total, buckets, topics)


def _countsfilter_conditions(flt: FlaggedFilter) -> list[ColumnElement[bool]] | None:
    """The stream counts that go with the filter's records, or None when they cannot: counts
    are kept per topic and minute of scoring, so only the topic and a scored-time range apply
    (the minutes that start in the range)."""
    if flt.time_field != "scored":
        return None
    row = StreamCountRow
    conditions: list[ColumnElement[bool]] = []
    if flt.start is not None:
        conditions.append(row.minute >= flt.start)
    if flt.end is not None:
        conditions.append(row.minute < flt.end)
    if flt.topic is not None:
        conditions.append(row.topic == flt.topic)
    return conditions


def _consumed_and_scored(
    session: Session,
    key: ColumnElement[Any] | InstrumentedAttribute[Any],
    counted: list[ColumnElement[bool]],
) -> dict[Any, tuple[int, int]]:
    """Summed stream counts (consumed, scored) per value of ``key``."""
    sums = (
        select(key, func.sum(StreamCountRow.consumed), func.sum(StreamCountRow.scored))
        .where(*counted)
        .group_by(key)
    )
    return {k: (int(c), int(s)) for k, c, s in session.execute(sums)}


def _topic_counts(
    session: Session,
    conditions: list[ColumnElement[bool]],
    counted: list[ColumnElement[bool]] | None,
) -> tuple[TopicCount, ...]:
    flagged = dict(
        session.execute(
            select(FlaggedRecordRow.topic, func.count())
            .where(*conditions)
            .group_by(FlaggedRecordRow.topic)
        ).all()
    )
    seen = (
        _consumed_and_scored(session, StreamCountRow.topic, counted) if counted is not None else {}
    )
    total = sum(flagged.values())
    order = sorted(set(flagged) | set(seen), key=lambda t: (-flagged.get(t, 0), t))
    return tuple(
        TopicCount(
            topic,
            flagged.get(topic, 0),
            flagged.get(topic, 0) / total if total else 0.0,
            *(seen.get(topic, (0, 0)) if counted is not None else (None, None)),
        )
        for topic in order
    )


# --- feedback-based evaluation and model versions ---------------------------------------------
