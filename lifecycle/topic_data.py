"""Reference data read from a topic itself (``latentwatch train --from-topic``): the records of
a time range, decodable ones only, optionally without those a given model flags, in partition
then offset order (the order a JSONL file of them would have to train the same model)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer

from detector.detector import Detector
from lifecycle.rescore import read_range, start_offsets
from streams.kafka import options_for
from streams.messages import DecodePolicy, Message, decode_all


@dataclass(frozen=True)
class TopicData:
    records: list[dict[str, Any]]
    read: int  # messages in the range
    undecodable: int  # left out: not JSON objects, too large, ...
    excluded: int  # left out: flagged (or unreadable) by the exclusion model


def topic_records(
    bootstrap: str,
    topic: str,
    window: tuple[datetime, datetime],
    *,
    exclude_flagged_by: Detector | None = None,
    kafka_options: Mapping[str, Any] | None = None,
) -> TopicData:
    consumer = KafkaConsumer(
        **options_for(KafkaConsumer, dict(kafka_options or {})),
        bootstrap_servers=bootstrap.split(","),
        group_id=None,  # joins no group, commits nothing
        enable_auto_commit=False,
        client_id="latentwatch-train",
    )
    try:
        messages: list[Message] = []
        positions = start_offsets(consumer, topic, window[0])
        for batch, _ in read_range(consumer, topic, positions, window[1]):
            messages.extend(batch)
    finally:
        consumer.close()
    messages.sort(key=lambda m: (m.partition, m.offset))
    records, _, rejections = decode_all(messages, DecodePolicy())
    kept: list[dict[str, Any]] = [dict(r) for r in records]
    excluded = 0
    if exclude_flagged_by is not None and kept:
        scores = exclude_flagged_by.score_records(kept)
        keep = scores.valid & ~scores.flagged
        excluded = int((~keep).sum())
        kept = [r for r, k in zip(kept, keep.tolist(), strict=True) if k]
    return TopicData(kept, len(messages), len(rejections), excluded)
