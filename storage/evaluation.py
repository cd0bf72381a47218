"""Precision from user feedback (``latentwatch evaluate``, the API's /evaluation) and the model
versions that have written flagged records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from storage.models import (
    FeedbackLabel,
    FeedbackRow,
    FlaggedRecordRow,
    ModelVersionRow,
)


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
