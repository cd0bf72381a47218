"""One micro-batch of one topic: decode, validate, score in one call, and turn the flagged
records into storage rows. No I/O (the consumer loop around it does that); the one state it
changes is the typed decoder's, which learns the extra fields of the batches it declined."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, cast

import numpy as np
import orjson

from detector import counterfactual
from detector.detector import Detector
from detector.explain import explain_rows
from detector.scoring import ScoreBatch
from storage.records import FlaggedRecord
from streams.messages import (
    MISSING_REQUIRED,
    WRONG_TYPE,
    DecodePolicy,
    Message,
    Rejection,
    decode_all,
    timestamp_ms,
)
from streams.settings import EXPLAINED_FEATURES
from streams.typed import TypedDecoder

# The scores a flagged record stores: the fields a FlaggedRecord shares with a ScoreBatch.
_SCORE_FIELDS = tuple(
    f.name for f in fields(FlaggedRecord) if f.name in {g.name for g in fields(ScoreBatch)}
)
_VALUE = attrgetter("value")
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
    """A record's own timestamp: ISO-8601 text, or epoch seconds / milliseconds; None when it
    is neither or has no UTC equivalent (times are stored in UTC)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value / 1000.0 if abs(value) > _EPOCH_MS_THRESHOLD else float(value)
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (OverflowError, OSError, ValueError):
        pass
    return None


def message_time(message: Message) -> datetime | None:
    """The message's Kafka timestamp as a time; None without one, or for one no time holds: a
    producer may write any 64-bit number (before 1970, the year 10000 and beyond)."""
    ms = timestamp_ms(message)
    if ms < 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000.0, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def flagged_records(
    detector: Detector,
    messages: Sequence[Message],
    scores: ScoreBatch,
    *,
    record_of: Callable[[int], Mapping[str, Any]],
    now: datetime,
    explained_features: int = EXPLAINED_FEATURES,
    nearest_normal: bool = True,
) -> list[FlaggedRecord]:
    """Storage rows for the flagged rows of ``scores`` (indices into ``messages`` too), whose
    decoded records ``record_of`` gives, explained in one batch (with ``nearest_normal``, each
    with its nearest normal record and fields ordered by their attributions); numpy columns
    become Python lists once, not one scalar at a time."""
    rows = np.flatnonzero(scores.flagged)
    chosen = [record_of(i) for i in rows.tolist()]
    schema = detector.schema
    top = explained_features or len(schema.names)
    walks = counterfactual.nearest_normal_records(detector, chosen) if nearest_normal else []
    explanations = explain_rows(
        schema,
        detector.latent_map,
        scores,
        rows,
        actual=chosen,
        top=top,
        attributions=np.array([w.attributions for w in walks]) if walks else None,
    )
    extra = [{"nearest_normal": counterfactual.to_dict(w, detector.latent_map, top)} for w in walks]
    columns = {name: getattr(scores, name)[rows].tolist() for name in _SCORE_FIELDS}
    out = []
    for k, (i, record, why) in enumerate(zip(rows.tolist(), chosen, explanations, strict=True)):
        message = messages[i]
        event_time = None
        if schema.timestamp_column:
            event_time = parse_event_time(record.get(schema.timestamp_column))
        record_id = record.get(schema.id_column) if schema.id_column else None
        out.append(
            FlaggedRecord(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                kafka_timestamp=timestamp_ms(message),
                key=message.key,
                record_id=None if record_id is None else str(record_id),
                event_time=event_time or message_time(message),
                scored_time=now,
                model_version=detector.version,
                top_feature=why.features[0].name if why.features else None,
                explanation=why.to_dict() | (extra[k] if extra else {}),
                record=record,
                **{name: values[k] for name, values in columns.items()},
            )
        )
    return out


def score_messages(
    topic: str,
    messages: Sequence[Message],
    detector: Detector,
    policy: DecodePolicy,
    now: datetime,
    *,
    explained_features: int = EXPLAINED_FEATURES,
    nearest_normal: bool = True,
    typed: TypedDecoder | None = None,
) -> TopicBatch:
    """Decode and score one topic's messages; bad ones become rejections, never exceptions.
    Flagged records are explained by their ``explained_features`` most surprising fields (0:
    every field). With a ``typed`` decoder for the model, a batch it takes skips the dicts;
    its flagged records are decoded by orjson like any other."""
    typed = typed if policy.plain else None  # the typed path knows no policy beyond the size
    if typed is not None:
        batch = _score_typed(
            topic,
            messages,
            detector,
            typed,
            policy.max_bytes,
            now,
            explained_features,
            nearest_normal,
        )
        if batch is not None:
            return batch
    records, decoded_messages, rejections = decode_all(messages, policy)
    if typed is not None:
        typed.learn(records)
    fields = frozenset(detector.schema.names)
    if any(map(fields.isdisjoint, records)):  # rare: set aside records with none of the fields
        featureless = [fields.isdisjoint(r) for r in records]
        rejections += [
            Rejection(m, MISSING_REQUIRED, "the record has none of the model's fields")
            for m, none in zip(decoded_messages, featureless, strict=True)
            if none
        ]
        records = [r for r, none in zip(records, featureless, strict=True) if not none]
        decoded_messages = [
            m for m, none in zip(decoded_messages, featureless, strict=True) if not none
        ]
    if not records:
        return TopicBatch(topic, len(messages), rejections, [], None, [])
    scores = detector.score_records(records)
    for i in np.flatnonzero(~scores.valid):
        rejections.append(Rejection(decoded_messages[i], WRONG_TYPE, str(scores.reasons[i])))
    flagged = flagged_records(
        detector,
        decoded_messages,
        scores,
        record_of=records.__getitem__,
        now=now,
        explained_features=explained_features,
        nearest_normal=nearest_normal,
    )
    scored = [m for m, ok in zip(decoded_messages, scores.valid, strict=True) if ok]
    return TopicBatch(topic, len(messages), rejections, scored, scores, flagged)


def _score_typed(  # noqa: PLR0917  (a private step of score_messages, called once)
    topic: str,
    messages: Sequence[Message],
    detector: Detector,
    typed: TypedDecoder,
    max_bytes: int,
    now: datetime,
    explained_features: int,
    nearest_normal: bool,
) -> TopicBatch | None:
    """The batch scored from typed columns, or None if the typed decoder declines it."""
    values = list(map(_VALUE, messages))
    columns = typed.columns(values, max_bytes)
    if columns is None:
        return None
    scores = detector.score_columns(columns, len(messages))
    if not scores.valid.all():  # the decoder took only values the schema accepts
        return None
    flagged = flagged_records(
        detector,
        messages,
        scores,
        record_of=lambda i: orjson.loads(cast(bytes, values[i])),
        now=now,
        explained_features=explained_features,
        nearest_normal=nearest_normal,
    )
    return TopicBatch(topic, len(messages), [], list(messages), scores, flagged)
