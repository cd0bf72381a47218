"""Read-side queries behind the HTTP query API: filtered keyset pages of flagged records and one
record with its feedback (counts per bucket and topic: storage.stats; precision from feedback
and the model versions: storage.evaluation). Each function takes an open Session and typed
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
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    asc,
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
    FeedbackRow,
    FlaggedRecordRow,
)
from storage.records import Flag

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
class FlaggedSummary(Flag):
    """A stored flagged record without the original record; ``label`` is its current verdict
    (newest feedback), if any."""

    id: int
    key_text: str | None  # the key, readable: UTF-8 text, else hex
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


def time_column(flt: FlaggedFilter) -> InstrumentedAttribute[Any]:
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


def filter_conditions(flt: FlaggedFilter, *, common: bool = False) -> list[ColumnElement[bool]]:
    """The filter in SQL. ``common``: the equality filters select many rows, and SQLite is
    told so (``likelihood``), which it cannot know without statistics (see _common_equal)."""
    row = FlaggedRecordRow
    time = time_column(flt)
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
    return FlaggedRecordRow.score if order.sort == "score" else time_column(flt)


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
    stmt = select(FlaggedRecordRow.id).where(*filter_conditions(flt))
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
        .where(*filter_conditions(flt, common=_common_equal(session, flt, order)))
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
    keys = select(_sort_column(flt, order), FlaggedRecordRow.id).where(*filter_conditions(flt))
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
