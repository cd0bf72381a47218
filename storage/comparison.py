"""What a live-versus-shadow comparison reads (lifecycle/compare.py does the arithmetic): the
shadow run's counts and rows over a window, each row with the newest user label of the live
flag it matches, and the calibrated false-alarm rates of the two versions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import (
    BackfillRunRow,
    FeedbackLabel,
    FeedbackRow,
    FlaggedRecordRow,
    ModelScoreRow,
    ModelVersionRow,
    RegisteredModelRow,
    RunCountRow,
)


@dataclass(frozen=True)
class StoredPair:
    score: float  # NaN: not stored (a backfill run keeps the scores of its flags only)
    live_score: float | None
    flagged: bool
    live_flagged: bool | None
    label: bool | None  # the newest label of the matching live flag


@dataclass(frozen=True)
class ComparisonRows:
    shadow_version: str | None  # None: the run stored nothing in the window
    live_version: str | None
    scored: int
    flagged: int
    live_flagged: int
    pairs: list[StoredPair]
    fprs: tuple[float | None, float | None]  # live, shadow


def _fpr(session: Session, version: str | None) -> float | None:
    if version is None:
        return None
    registered = session.get(RegisteredModelRow, version)
    if registered is not None:
        value = registered.summary.get("fpr")
        return float(value) if isinstance(value, int | float) else None
    seen = session.get(ModelVersionRow, version)
    if seen is not None:
        value = seen.manifest.get("calibration", {}).get("fpr")
        return float(value) if isinstance(value, int | float) else None
    return None


def comparison_rows(
    session: Session,
    topic: str,
    window: tuple[datetime, datetime],
    *,
    run: str = "shadow",
    version: str | None = None,
) -> ComparisonRows:
    """The shadow run's rows of ``topic`` scored in ``[since, until)``; ``version``: the
    shadow model (default: the one that scored last in the window)."""
    since, until = window
    in_window = and_(
        ModelScoreRow.run == run,
        ModelScoreRow.topic == topic,
        ModelScoreRow.scored_time >= since,
        ModelScoreRow.scored_time < until,
    )
    if version is None:
        version = session.scalar(
            select(ModelScoreRow.model_version)
            .where(in_window)
            .order_by(ModelScoreRow.scored_time.desc(), ModelScoreRow.id.desc())
            .limit(1)
        )
    newest_label = (
        select(FeedbackRow.label)
        .join(FlaggedRecordRow, FlaggedRecordRow.id == FeedbackRow.flagged_id)
        .where(
            FlaggedRecordRow.topic == ModelScoreRow.topic,
            FlaggedRecordRow.partition == ModelScoreRow.partition,
            FlaggedRecordRow.offset == ModelScoreRow.offset,
            FlaggedRecordRow.kafka_timestamp == ModelScoreRow.kafka_timestamp,
        )
        .order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc())
        .limit(1)
        .correlate(ModelScoreRow)
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            ModelScoreRow.score,
            ModelScoreRow.live_score,
            ModelScoreRow.flagged,
            ModelScoreRow.live_flagged,
            ModelScoreRow.live_version,
            newest_label,
        ).where(in_window, ModelScoreRow.model_version == version)
    ).all()
    minute_since = since.replace(second=0, microsecond=0)
    totals = session.execute(
        select(
            func.coalesce(func.sum(RunCountRow.scored), 0),
            func.coalesce(func.sum(RunCountRow.flagged), 0),
            func.coalesce(func.sum(RunCountRow.live_flagged), 0),
        ).where(
            RunCountRow.run == run,
            RunCountRow.topic == topic,
            RunCountRow.model_version == version,
            RunCountRow.minute >= minute_since,
            RunCountRow.minute < until,
        )
    ).one()
    lives = Counter(r.live_version for r in rows if r.live_version is not None)
    live_version = lives.most_common(1)[0][0] if lives else None
    true_alarm = FeedbackLabel.TRUE_ALARM.value
    pairs = [
        StoredPair(
            r.score,
            r.live_score,
            r.flagged,
            r.live_flagged,
            None if r[5] is None else r[5] == true_alarm,
        )
        for r in rows
    ]
    return ComparisonRows(
        shadow_version=version,
        live_version=live_version,
        scored=int(totals[0]),
        flagged=int(totals[1]),
        live_flagged=int(totals[2]),
        pairs=pairs,
        fprs=(_fpr(session, live_version), _fpr(session, version)),
    )


@dataclass(frozen=True)
class RunRange:
    """What a backfill run re-scored: ``topic``'s records of ``[start, end)`` (record time)."""

    name: str
    version: str
    topic: str
    start: datetime
    end: datetime


def backfill_range(session: Session, name: str) -> RunRange | None:
    row = session.get(BackfillRunRow, name)
    if row is None:
        return None
    end = row.time_to or row.started_at
    return RunRange(row.name, row.model_version, row.topic, row.time_from, end)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def backfill_comparison_rows(session: Session, run: RunRange) -> ComparisonRows:
    """A backfill run against the live flags of the same records: those of the run's topic
    whose Kafka timestamps fall in its range (the records it read). The run stored rows for
    what it flags only, so a record only the live model flags has no run score (NaN)."""
    newest_label = (
        select(FeedbackRow.label)
        .where(FeedbackRow.flagged_id == FlaggedRecordRow.id)
        .order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc())
        .limit(1)
        .correlate(FlaggedRecordRow)
        .scalar_subquery()
    )
    live = session.execute(
        select(
            FlaggedRecordRow.partition,
            FlaggedRecordRow.offset,
            FlaggedRecordRow.kafka_timestamp,
            FlaggedRecordRow.score,
            FlaggedRecordRow.model_version,
            newest_label,
        ).where(
            FlaggedRecordRow.topic == run.topic,
            FlaggedRecordRow.kafka_timestamp >= _ms(run.start),
            FlaggedRecordRow.kafka_timestamp < _ms(run.end),
        )
    ).all()
    flagged = session.execute(
        select(
            ModelScoreRow.partition,
            ModelScoreRow.offset,
            ModelScoreRow.kafka_timestamp,
            ModelScoreRow.score,
        ).where(ModelScoreRow.run == run.name, ModelScoreRow.model_version == run.version)
    ).all()
    totals = session.execute(
        select(
            func.coalesce(func.sum(RunCountRow.scored), 0),
            func.coalesce(func.sum(RunCountRow.flagged), 0),
        ).where(RunCountRow.run == run.name, RunCountRow.model_version == run.version)
    ).one()
    true_alarm = FeedbackLabel.TRUE_ALARM.value
    by_key = {(r[0], r[1], r[2]): r for r in live}
    pairs = []
    for partition, offset, timestamp, score in flagged:
        match = by_key.pop((partition, offset, timestamp), None)
        label = None if match is None or match[5] is None else match[5] == true_alarm
        live_score = None if match is None else match[3]
        pairs.append(StoredPair(score, live_score, True, match is not None, label))
    for r in by_key.values():  # flagged by the live model only
        label = None if r[5] is None else r[5] == true_alarm
        pairs.append(StoredPair(float("nan"), r[3], False, True, label))
    lives = Counter(r[4] for r in live)
    live_version = lives.most_common(1)[0][0] if lives else None
    return ComparisonRows(
        shadow_version=run.version,
        live_version=live_version,
        scored=int(totals[0]),
        flagged=int(totals[1]),
        live_flagged=len(live),
        pairs=pairs,
        fprs=(_fpr(session, live_version), _fpr(session, run.version)),
    )


def shadow_topics(session: Session, window: tuple[datetime, datetime], limit: int) -> list[str]:
    """The topics (at most ``limit``, by name) with shadow scores stored in ``[start, end)``:
    those a comparison over the window has something to compare on."""
    return list(
        session.scalars(
            select(ModelScoreRow.topic)
            .where(
                ModelScoreRow.run == "shadow",
                ModelScoreRow.scored_time >= window[0],
                ModelScoreRow.scored_time < window[1],
            )
            .distinct()
            .order_by(ModelScoreRow.topic)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class StoredFlag:
    partition: int
    offset: int
    kafka_timestamp: int
    record_id: str | None
    model_version: str
    score: float
    record: dict[str, Any]


def stored_flags(
    sessions: sessionmaker[Session], topic: str, window: tuple[datetime, datetime]
) -> list[StoredFlag]:
    """The live flags of ``topic`` scored in ``[start, end)``, with their stored originals."""
    with sessions() as session:
        rows = session.execute(
            select(
                FlaggedRecordRow.partition,
                FlaggedRecordRow.offset,
                FlaggedRecordRow.kafka_timestamp,
                FlaggedRecordRow.record_id,
                FlaggedRecordRow.model_version,
                FlaggedRecordRow.score,
                FlaggedRecordRow.record,
            )
            .where(
                FlaggedRecordRow.topic == topic,
                FlaggedRecordRow.scored_time >= window[0],
                FlaggedRecordRow.scored_time < window[1],
            )
            .order_by(FlaggedRecordRow.id)
        ).all()
    return [StoredFlag(*r) for r in rows]
