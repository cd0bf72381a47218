"""The shadow model's view of a batch the live model just scored: the same records, scored
again, kept for the records either model flagged (with both verdicts) and counted for all.
Pure apart from the shadow model's forward pass; shadow rows are never live flags."""

from __future__ import annotations

from datetime import datetime
from operator import attrgetter
from typing import Any, cast

import numpy as np
import orjson

from detector.detector import Detector
from detector.scoring import ScoreBatch
from storage.records import ModelScore, RunCount
from streams.messages import timestamp_ms
from streams.scoring import TopicBatch
from streams.typed import TypedDecoder

SHADOW_RUN = "shadow"
_VALUE = attrgetter("value")


def _scores(shadow: Detector, values: list[bytes], typed: TypedDecoder | None) -> ScoreBatch:
    """The shadow model's scores of the live model's scored records (all decodable JSON)."""
    if typed is not None:
        columns = typed.columns(values, max(map(len, values)))
        if columns is not None:
            return shadow.score_columns(columns, len(values))
    records = [orjson.loads(v) for v in values]
    if typed is not None:
        typed.learn(records)
    return shadow.score_records(records)


def shadow_scores(
    batch: TopicBatch,
    shadow: Detector,
    live_version: str,
    now: datetime,
    typed: TypedDecoder | None = None,
) -> tuple[list[ModelScore], RunCount]:
    """Score ``batch``'s scored records with ``shadow``; rows for those either model flags. A
    record the shadow model cannot read (a type it does not accept) counts as not flagged."""
    minute = now.replace(second=0, microsecond=0)
    messages = batch.scored_messages
    live = batch.scores
    if not messages or live is None:
        return [], RunCount(SHADOW_RUN, shadow.version, batch.topic, minute, 0, 0, 0)
    live_flagged = live.flagged[live.valid]
    live_score = live.score[live.valid]
    values = cast(list[bytes], list(map(_VALUE, messages)))
    scores = _scores(shadow, values, typed)
    flagged = scores.flagged & scores.valid
    rows: list[ModelScore] = []
    id_column = shadow.schema.id_column
    for i in np.flatnonzero(flagged | live_flagged).tolist():
        message = messages[i]
        record: dict[str, Any] = orjson.loads(values[i])
        record_id = record.get(id_column) if id_column else None
        rows.append(
            ModelScore(
                run=SHADOW_RUN,
                model_version=shadow.version,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                kafka_timestamp=timestamp_ms(message),
                record_id=None if record_id is None else str(record_id),
                scored_time=now,
                score=_finite(scores.score[i]),
                severity=_finite(scores.severity[i]),
                p_value=_finite(scores.p_value[i]),
                flagged=bool(flagged[i]),
                live_version=live_version,
                live_score=float(live_score[i]),
                live_flagged=bool(live_flagged[i]),
                record=record,
            )
        )
    count = RunCount(
        SHADOW_RUN,
        shadow.version,
        batch.topic,
        minute,
        scored=len(messages),
        flagged=int(flagged.sum()),
        live_flagged=int(live_flagged.sum()),
    )
    return rows, count


def _finite(value: float) -> float:
    """A score of a record the shadow model could not read is NaN: stored as 0 (not flagged)."""
    return float(value) if np.isfinite(value) else 0.0
