"""One micro-batch of one topic: decode, validate, score in one call, and turn the flagged
records into storage rows. Pure apart from the detector's forward pass; the consumer loop
around it does the I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from detector.detector import Detector
from detector.explain import explain
from detector.scoring import ScoreBatch
from storage.records import FlaggedRecord
from streams.messages import (
    MISSING_REQUIRED,
    WRONG_TYPE,
    DecodePolicy,
    Message,
    Rejection,
    decode,
)

EXPLAINED_FEATURES = 5
# Epoch numbers above this are milliseconds, not seconds (this is the year 2286 in seconds).
_EPOCH_MS_THRESHOLD = 10_000_000_000


@dataclass(frozen=True)
class TopicBatch:
    """What became of each message of one topic's micro-batch."""

    topic: str
    consumed: int
    rejections: list[Rejection]
    scored_messages: list[Message]  # messages whose record was scored, in ``scores`` order
    scores: ScoreBatch | None  # over the scored messages only
    flagged: list[FlaggedRecord]


def parse_event_time(value: object) -> datetime | None:
    """A record's own timestamp: ISO-8601 text, or epoch seconds / milliseconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = value / 1000.0 if abs(value) > _EPOCH_MS_THRESHOLD else float(value)
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def message_time(message: Message) -> datetime | None:
    if message.timestamp_ms < 0:
        return None
    return datetime.fromtimestamp(message.timestamp_ms / 1000.0, UTC)


def _flagged_record(
    detector: Detector,
    *,
    message: Message,
    record: Mapping[str, Any],
    scores: ScoreBatch,
    row: int,
    now: datetime,
) -> FlaggedRecord:
    schema = detector.schema
    why = explain(schema, detector.latent_map, scores, row, actual=record, top=EXPLAINED_FEATURES)
    event_time = None
    if schema.timestamp_column:
        event_time = parse_event_time(record.get(schema.timestamp_column))
    record_id = record.get(schema.id_column) if schema.id_column else None
    return FlaggedRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        kafka_timestamp=message.timestamp_ms,
        key=message.key.decode("utf-8", "replace") if message.key is not None else None,
        record_id=None if record_id is None else str(record_id),
        event_time=event_time or message_time(message),
        scored_time=now,
        model_version=detector.version,
        score=float(scores.score[row]),
        severity=float(scores.severity[row]),
        p_value=float(scores.p_value[row]),
        density=float(scores.density[row]),
        density_p_value=float(scores.density_p_value[row]),
        reconstruction=float(scores.reconstruction[row]),
        reconstruction_p_value=float(scores.reconstruction_p_value[row]),
        cluster=int(scores.cluster[row]),
        cluster_distance=float(scores.cluster_distance[row]),
        top_feature=why.features[0].name if why.features else None,
        explanation=why.to_dict(),
        record=record,
    )


def score_messages(
    topic: str, messages: Sequence[Message], detector: Detector, policy: DecodePolicy, now: datetime
) -> TopicBatch:
    """Decode and score one topic's messages; bad ones become rejections, never exceptions."""
    rejections: list[Rejection] = []
    records: list[dict[str, Any]] = []
    decoded_messages: list[Message] = []
    fields = detector.schema.names
    for message in messages:
        result = decode(message, policy)
        if isinstance(result, Rejection):
            rejections.append(result)
        elif not any(name in result for name in fields):
            rejections.append(
                Rejection(message, MISSING_REQUIRED, "the record has none of the model's fields")
            )
        else:
            records.append(result)
            decoded_messages.append(message)
    if not records:
        return TopicBatch(topic, len(messages), rejections, [], None, [])
    scores = detector.score_records(records)
    for i in np.flatnonzero(~scores.valid):
        rejections.append(Rejection(decoded_messages[i], WRONG_TYPE, str(scores.reasons[i])))
    flagged = [
        _flagged_record(
            detector,
            message=decoded_messages[i],
            record=records[i],
            scores=scores,
            row=int(i),
            now=now,
        )
        for i in np.flatnonzero(scores.flagged)
    ]
    scored = [m for m, ok in zip(decoded_messages, scores.valid, strict=True) if ok]
    return TopicBatch(topic, len(messages), rejections, scored, scores, flagged)
