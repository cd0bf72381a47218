"""Read-side queries behind the HTTP query API and ``latentwatch evaluate``: filtered keyset pages
of flagged records, one record with its feedback, counts per time bucket and per topic,
precision from feedback, and the model versions. Each function takes an open Session and typed
filters and returns frozen dataclasses; all SQL is built with SQLAlchemy, parameterised only.

Pages are keyset pages, not OFFSET pages: a page ends at the (sort key, id) of its last row and
the next page starts strictly after it. The order is total (ties broken by id) and the sort
columns of a stored record never change, so paging to the end returns every row that existed
when paging started exactly once, however many rows are written meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    asc,
    cast,
    desc,
    func,
    literal,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute, Session, defer

from common.errors import LatentwatchError
from storage.models import (
    FeedbackLabel,
    FeedbackRow,
    FlaggedRecordRow,
    ModelVersionRow,
    StreamCountRow,
)

TimeField = Literal["scored", "event"]
SortKey = Literal["time", "score"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_VERSION = 1
_NOT_ISSUED = (
    "cursor is not one this API issued: pass the next_cursor of the previous page unchanged, "
    "or leave cursor out to start from the first page"
)


class QueryError(LatentwatchError, ValueError):
    """A query that cannot be answered as asked (the HTTP API answers 422 with the message)."""


class CursorError(QueryError):
    """A page cursor that this API did not issue, or issued for another query."""


@dataclass(frozen=True)
class FlaggedFilter:
    """Which flagged records a query selects. ``start`` is inclusive, ``end`` exclusive; both
    apply to ``time_field``. With ``time_field="event"`` only records with an event time match
    (records whose Kafka message had no timestamp and no event-time column have none)."""

    start: datetime | None = None
    end: datetime | None = None
    time_field: TimeField = "scored"
    min_severity: float | None = None  # 0..100, inclusive
    topic: str | None = None
    model_version: str | None = None
    cluster: int | None = None
    top_feature: str | None = None
    key: str | None = None  # the readable form (storage.records.readable_key)

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise QueryError(f"{name} {value.isoformat()} has no timezone: give a UTC offset")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise QueryError(
                f"start {self.start.isoformat()} is not before end {self.end.isoformat()}: "
                "the range is [start, end), so give a start earlier than the end"
            )


@dataclass(frozen=True)
class Ordering:
    sort: SortKey = "time"  # time = the filter's time_field
    descending: bool = True


@dataclass(frozen=True)
class Feedback:
    id: int
    label: str
    note: str | None
    created_at: datetime


@dataclass(frozen=True)
class FlaggedSummary:
    """A stored flagged record without the original record; ``label`` is its current verdict
    (newest feedback), if any. Scores: higher = more anomalous, in nats."""

    id: int
    topic: str
    partition: int
    offset: int
    kafka_timestamp: int
    key: bytes | None  # exact
    key_text: str | None  # readable: UTF-8 text, else hex
    record_id: str | None
    event_time: datetime | None
    scored_time: datetime
    model_version: str
    score: float
    severity: float
    p_value: float
    density: float
    density_p_value: float
    reconstruction: float
    reconstruction_p_value: float
    cluster: int
    cluster_distance: float
    top_feature: str | None
    explanation: Mapping[str, Any]
    label: str | None


@dataclass(frozen=True)
class FlaggedDetail(FlaggedSummary):
    record: Mapping[str, Any]
    feedback: tuple[Feedback, ...]  # newest first

    @property
    def latest_feedback(self) -> Feedback | None:
        """The current verdict."""
        return self.feedback[0] if self.feedback else None


@dataclass(frozen=True)
class Page:
    records: tuple[FlaggedSummary, ...]
    next_cursor: str | None  # None: this was the last page


_SUMMARY_FIELDS = tuple(name for name in FlaggedSummary.__dataclass_fields__ if name != "label")


def _summary(row: FlaggedRecordRow, label: str | None) -> FlaggedSummary:
    return FlaggedSummary(**{name: getattr(row, name) for name in _SUMMARY_FIELDS}, label=label)


def _time_column(flt: FlaggedFilter) -> InstrumentedAttribute[Any]:
    return (
        FlaggedRecordRow.event_time if flt.time_field == "event" else FlaggedRecordRow.scored_time
    )


def _equalities(flt: FlaggedFilter) -> list[ColumnElement[bool]]:
    row = FlaggedRecordRow
    equal = {
        row.topic: flt.topic,
        row.model_version: flt.model_version,
        row.cluster: flt.cluster,
        row.top_feature: flt.top_feature,
        row.key_text: flt.key,  # no index: keys have no length limit (an index entry has)
    }
    return [column == value for column, value in equal.items() if value is not None]


def _conditions(flt: FlaggedFilter, *, common: bool = False) -> list[ColumnElement[bool]]:
    """The filter in SQL. ``common``: the equality filters select many rows, and SQLite is
    told so (``likelihood``), which it cannot know without statistics (see _common_equal)."""
    row = FlaggedRecordRow
    time = _time_column(flt)
    conditions: list[ColumnElement[bool]] = []
    if flt.time_field == "event":
        conditions.append(time.is_not(None))
    if flt.start is not None:
        conditions.append(time >= flt.start)
    if flt.end is not None:
        conditions.append(time < flt.end)
    if flt.min_severity is not None:
        conditions.append(row.severity >= flt.min_severity)
    for equal in _equalities(flt):
        # likelihood(X, 0.9): X, which SQLite's planner takes to be true for 90 % of the rows
        conditions.append(func.likelihood(equal, literal_column("0.9")) if common else equal)
    return conditions


def _sort_column(flt: FlaggedFilter, order: Ordering) -> InstrumentedAttribute[Any]:
    return FlaggedRecordRow.score if order.sort == "score" else _time_column(flt)


def _fingerprint(flt: FlaggedFilter, order: Ordering) -> str:
    """Ties a cursor to the query that issued it: the same cursor under other filters would
    silently skip rows."""
    return hashlib.sha256(repr((flt, order)).encode()).hexdigest()[:16]


def _encode_cursor(flt: FlaggedFilter, order: Ordering, last: FlaggedSummary) -> str:
    key = last.score if order.sort == "score" else getattr(last, f"{flt.time_field}_time")
    key_json = key.isoformat() if isinstance(key, datetime) else key
    # Python's JSON writes infinite scores as Infinity and reads them back; the text is opaque.
    payload = [_CURSOR_VERSION, _fingerprint(flt, order), key_json, last.id]
    text = json.dumps(payload, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, flt: FlaggedFilter, order: Ordering) -> tuple[Any, int]:
    """The (sort key, id) a cursor resumes after; :class:`CursorError` if it is not one that
    ``page_flagged`` issued for this same filter and ordering."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, fingerprint, key, last_id = json.loads(text)
        if version != _CURSOR_VERSION or not isinstance(fingerprint, str):
            raise ValueError("unknown cursor version")
    except (ValueError, TypeError, UnicodeDecodeError):
        raise CursorError(_NOT_ISSUED) from None
    if fingerprint != _fingerprint(flt, order):
        raise CursorError(
            "cursor belongs to a query with other filters or ordering: keep the filters, sort "
            "and desc of the query that returned it, or leave cursor out to start again"
        )
    try:
        if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 <= last_id < 2**63:
            raise ValueError("bad id")
        if order.sort == "score":
            if not isinstance(key, int | float) or isinstance(key, bool) or math.isnan(key):
                raise ValueError("bad score")
            key = float(key)
        else:
            key = datetime.fromisoformat(key)
            if key.utcoffset() is None:
                raise ValueError("naive time")
            key = key.astimezone(UTC)  # OverflowError near year 1 or 9999
    except (ValueError, TypeError, OverflowError):
        raise CursorError(_NOT_ISSUED) from None
    return key, last_id


def _after(flt: FlaggedFilter, order: Ordering, cursor: str) -> ColumnElement[bool]:
    key, last_id = decode_cursor(cursor, flt, order)
    column, row_id = _sort_column(flt, order), FlaggedRecordRow.id
    # A row-value comparison, which both engines answer from the (sort key, id) index as a
    # range; the literals carry the column types (UTC handling of times on SQLite).
    keys = tuple_(column, row_id)
    after = tuple_(literal(key, column.type), literal(last_id, row_id.type))
    return keys < after if order.descending else keys > after


def _matching(flt: FlaggedFilter, order: Ordering, cursor: str | None) -> Select[Any]:
    stmt = select(FlaggedRecordRow.id).where(*_conditions(flt))
    return stmt.where(_after(flt, order, cursor)) if cursor else stmt


def page_flagged(
    session: Session,
    flt: FlaggedFilter,
    order: Ordering = Ordering(),
    *,
    limit: int,
    cursor: str | None = None,
) -> Page:
    """One page of matching records in ``order``, starting after ``cursor`` (a previous page's
    ``next_cursor``) or at the beginning."""
    if limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    column = _sort_column(flt, order)
    direction = desc if order.descending else asc
    stmt = (
        select(FlaggedRecordRow)
        .options(defer(FlaggedRecordRow.record))  # can be large; the detail view loads it
        .where(*_conditions(flt, common=_common_equal(session, flt, order)))
        .order_by(direction(column), direction(FlaggedRecordRow.id))
        .limit(limit + 1)  # one more tells whether there is a next page
    )
    if cursor:  # "" too: the first page
        stmt = stmt.where(_after(flt, order, cursor))
    few = _few_severe(session, flt, order, cursor, limit)
    if few is not None:
        stmt = stmt.where(FlaggedRecordRow.id.in_(few))
    rows = list(session.scalars(stmt))
    labels = latest_labels(session, [row.id for row in rows[:limit]])
    records = tuple(_summary(row, labels.get(row.id)) for row in rows[:limit])
    more = len(rows) > limit
    return Page(records, _encode_cursor(flt, order, records[-1]) if more else None)


# A page is picked from at most this many rows that pass a severity filter, read through the
# severity index, when there are no more of them (SQLite; see _few_severe).
_FEW_SEVERE = 2_000


def _few_severe(
    session: Session, flt: FlaggedFilter, order: Ordering, cursor: str | None, limit: int
) -> list[int] | None:
    """The ids of a severity-filtered page (and the row after it), when few rows pass the
    filters; None when many do, or the planner needs no help. SQLite (without range statistics)
    reads such a page by walking the sort order's index and testing each row: quick when many
    rows pass, a scan of the whole table when few or none do. Here the passing rows' sort keys
    come through the severity index instead, and the page is picked from them in memory;
    PostgreSQL's statistics choose between the two plans by themselves. With an equality
    filter, its own index (column, scored_time, id) bounds the walk already."""
    equal = (flt.topic, flt.model_version, flt.cluster, flt.top_feature)
    if flt.min_severity is None or any(v is not None for v in equal):
        return None
    if session.get_bind().dialect.name != "sqlite":
        return None
    keys = select(_sort_column(flt, order), FlaggedRecordRow.id).where(*_conditions(flt))
    if cursor:
        keys = keys.where(_after(flt, order, cursor))
    rows = [(key, row_id) for key, row_id in session.execute(keys.limit(_FEW_SEVERE + 1))]
    if len(rows) > _FEW_SEVERE:
        return None
    rows.sort(reverse=order.descending)  # as ORDER BY key, id
    return [row_id for _, row_id in rows[: limit + 1]]


def _common_equal(session: Session, flt: FlaggedFilter, order: Ordering) -> bool:
    """Whether SQLite should walk the score index for a page sorted by score with equality
    filters: it does when they select many rows (more than _FEW_SEVERE). Without statistics
    it reads every row of, say, a topic through the topic's index and sorts them all, where
    walking the scores stops after a page of matches; with few such rows, that sort is the
    quicker. Counted through the filters' own (covering) indexes, up to that bound."""
    equal = _equalities(flt)
    if order.sort != "score" or not equal or session.get_bind().dialect.name != "sqlite":
        return False
    probe = select(FlaggedRecordRow.id).where(*equal).limit(_FEW_SEVERE + 1).subquery()
    return (session.scalar(select(func.count()).select_from(probe)) or 0) > _FEW_SEVERE


def count_flagged_matching(
    session: Session,
    flt: FlaggedFilter,
    order: Ordering = Ordering(),
    *,
    cursor: str | None = None,
    at_most: int,
) -> int:
    """How many records ``page_flagged`` would go on to return, counting no further than
    ``at_most`` (an export tells whether it hit its row cap without a full count)."""
    bounded = _matching(flt, order, cursor).limit(at_most).subquery()
    return session.scalar(select(func.count()).select_from(bounded)) or 0


def latest_labels(session: Session, ids: Sequence[int]) -> dict[int, str]:
    """The current verdict (newest feedback) of each of ``ids`` that has one."""
    if not ids:
        return {}
    stmt = (
        select(FeedbackRow.flagged_id, FeedbackRow.label)
        .where(FeedbackRow.flagged_id.in_(ids))
        .order_by(FeedbackRow.flagged_id, FeedbackRow.created_at, FeedbackRow.id)
    )
    return {flagged_id: label for flagged_id, label in session.execute(stmt)}  # newest wins


def get_flagged(session: Session, flagged_id: int) -> FlaggedDetail | None:
    """One record with its original record and feedback history, or None if absent."""
    row = session.get(FlaggedRecordRow, flagged_id)
    if row is None:
        return None
    stmt = (
        select(FeedbackRow)
        .where(FeedbackRow.flagged_id == flagged_id)
        .order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc())
    )
    history = tuple(Feedback(f.id, f.label, f.note, f.created_at) for f in session.scalars(stmt))
    summary = _summary(row, history[0].label if history else None)
    fields = {name: getattr(summary, name) for name in FlaggedSummary.__dataclass_fields__}
    return FlaggedDetail(**fields, record=row.record, feedback=history)


# --- counts over time ---------------------------------------------------------------------

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
    column = _time_column(flt)
    conditions = _conditions(flt)
    counted = _counts_conditions(flt)
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


def _counts_conditions(flt: FlaggedFilter) -> list[ColumnElement[bool]] | None:
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


@dataclass(frozen=True)
class Evaluation:
    """How good the flags were, judged by user feedback (each record's newest verdict).
    ``precision`` is true alarms / labelled records, None while nothing is labelled."""

    model_version: str | None  # None: all versions
    flagged: int
    labelled: int
    true_alarms: int
    false_alarms: int
    precision: float | None
    labelled_share: float | None  # labelled / flagged: how much the precision rests on


def evaluate(session: Session, model_version: str | None = None) -> Evaluation:
    """Precision of the flags over the records users labelled (what ``latentwatch evaluate``
    prints and ``GET /api/evaluate`` returns)."""
    newest_first = (FeedbackRow.created_at.desc(), FeedbackRow.id.desc())
    rank = func.row_number().over(partition_by=FeedbackRow.flagged_id, order_by=newest_first)
    ranked = select(FeedbackRow.flagged_id, FeedbackRow.label, rank.label("rank")).subquery()
    labelled = (
        select(ranked.c.label, func.count())
        .join(FlaggedRecordRow, FlaggedRecordRow.id == ranked.c.flagged_id)
        .where(ranked.c.rank == 1)
        .group_by(ranked.c.label)
    )
    flagged = select(func.count()).select_from(FlaggedRecordRow)
    if model_version is not None:
        labelled = labelled.where(FlaggedRecordRow.model_version == model_version)
        flagged = flagged.where(FlaggedRecordRow.model_version == model_version)
    counts = {label: count for label, count in session.execute(labelled)}
    total = session.scalar(flagged) or 0
    true_alarms = counts.get(FeedbackLabel.TRUE_ALARM.value, 0)
    false_alarms = counts.get(FeedbackLabel.FALSE_ALARM.value, 0)
    labelled_count = true_alarms + false_alarms
    return Evaluation(
        model_version=model_version,
        flagged=total,
        labelled=labelled_count,
        true_alarms=true_alarms,
        false_alarms=false_alarms,
        precision=true_alarms / labelled_count if labelled_count else None,
        labelled_share=labelled_count / total if total else None,
    )


@dataclass(frozen=True)
class ModelInfo:
    version: str
    first_seen: datetime
    last_seen: datetime
    flagged: int  # records of this version still stored
    manifest: Mapping[str, Any]


def model_versions(session: Session, version: str | None = None) -> list[ModelInfo]:
    """Model versions that wrote to this database (only ``version`` if given), oldest first."""
    counts = (
        select(FlaggedRecordRow.model_version, func.count().label("flagged"))
        .group_by(FlaggedRecordRow.model_version)
        .subquery()
    )
    stmt = (
        select(ModelVersionRow, func.coalesce(counts.c.flagged, 0))
        .outerjoin(counts, counts.c.model_version == ModelVersionRow.version)
        .order_by(ModelVersionRow.first_seen, ModelVersionRow.version)
    )
    if version is not None:
        stmt = stmt.where(ModelVersionRow.version == version)
    return [
        ModelInfo(row.version, row.first_seen, row.last_seen, int(flagged), row.manifest)
        for row, flagged in session.execute(stmt)
    ]
