"""Backfill: re-score a time range of a topic with one model, outside any consumer group (its
own partitions, assigned, never a group's offsets), and store what the model flags as a named
run in ``model_scores``. Offsets come from the timestamps; a partition is read until its
records reach the end of the range, or until it has nothing more. Every batch is saved with
the positions after it, so a killed run resumes and a finished one does nothing again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy.orm import Session, sessionmaker

from detector.detector import Detector
from storage.backfill import DONE, BackfillRun, save_batch, start_or_resume
from storage.records import FlaggedRecord, ModelScore, RunCount
from storage.repository import write_flagged
from streams.kafka import options_for
from streams.messages import DecodePolicy, Message, timestamp_ms
from streams.scoring import score_messages

log = logging.getLogger("latentwatch.rescore")

BATCH = 2000  # records per poll and per saved batch
IDLE_POLLS = 3  # empty polls in a row after which a partition is read to its end
POLL_MS = 500


@dataclass(frozen=True)
class RescoreResult:
    name: str
    scored: int  # by this invocation (a resumed run counts only what it did)
    flagged: int
    already_finished: bool


def run_name(version: str, start: datetime, end: datetime | None) -> str:
    """The default name of a backfill: its model and range, so the same command resumes it."""
    stamp = "%Y%m%dT%H%M%SZ"
    to = end.strftime(stamp) if end else "now"
    return f"backfill-{version}-{start.strftime(stamp)}-{to}"


def model_scores(run: str, records: list[FlaggedRecord]) -> list[ModelScore]:
    return [
        ModelScore(
            run=run,
            model_version=r.model_version,
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            kafka_timestamp=r.kafka_timestamp,
            record_id=r.record_id,
            scored_time=r.scored_time,
            score=r.score,
            severity=r.severity,
            p_value=r.p_value,
            flagged=True,
            record=r.record,
        )
        for r in records
    ]


def rescore(
    detector: Detector,
    sessions: sessionmaker[Session],
    bootstrap: str,
    topic: str,
    window: tuple[datetime, datetime | None],
    *,
    name: str | None = None,
    kafka_options: Mapping[str, Any] | None = None,
    batch: int = BATCH,
    on_progress: Callable[[int, int], None] = lambda scored, flagged: None,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RescoreResult:
    start, end = window
    now = clock()
    name = name or run_name(detector.version, start, end)
    run = start_or_resume(
        sessions, BackfillRun(name, detector.version, topic, start, end or now, {}), now
    )
    if run.finished_at is not None:
        return RescoreResult(name, 0, 0, already_finished=True)
    consumer = KafkaConsumer(
        **options_for(KafkaConsumer, dict(kafka_options or {})),
        bootstrap_servers=bootstrap.split(","),
        group_id=None,  # no group: nothing committed, no member of the consumers' group
        enable_auto_commit=False,
        client_id="latentwatch-rescore",
    )
    try:
        return _read(consumer, detector, sessions, run, batch, on_progress, stop, clock)
    finally:
        consumer.close()


def start_offsets(consumer: KafkaConsumer, topic: str, start: datetime) -> dict[int, int]:
    """Each partition's first offset at or after ``start``; DONE where it has none."""
    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    ms = int(start.timestamp() * 1000)
    found = consumer.offsets_for_times({TopicPartition(topic, p): ms for p in partitions})
    return {
        p: DONE
        if found.get(TopicPartition(topic, p)) is None
        else int(found[TopicPartition(topic, p)].offset)
        for p in partitions
    }


def read_range(
    consumer: KafkaConsumer,
    topic: str,
    positions: Mapping[int, int],
    end: datetime,
    *,
    batch: int = BATCH,
    stop: threading.Event | None = None,
) -> Iterator[tuple[list[Message], dict[int, int]]]:
    """Batches of the messages from ``positions`` (partition -> next offset; DONE: read)
    until each partition's records reach ``end`` or it has nothing more, each with the
    positions after it. Stops early, between two batches, when ``stop`` is set."""
    positions = dict(positions)
    open_ = [TopicPartition(topic, p) for p, o in positions.items() if o != DONE]
    if not open_:
        return
    consumer.assign(open_)
    for tp in open_:
        consumer.seek(tp, positions[tp.partition])
    end_ms = int(end.timestamp() * 1000)
    idle = 0
    while open_ and idle < IDLE_POLLS and not (stop and stop.is_set()):
        polled = consumer.poll(timeout_ms=POLL_MS, max_records=batch)
        messages: list[Message] = [m for records in polled.values() for m in records]
        if not messages:
            idle += 1
            continue
        idle = 0
        in_range: list[Message] = []
        after: dict[int, int] = {}
        for m in messages:
            if positions.get(m.partition) == DONE:
                continue
            if timestamp_ms(m) >= end_ms:  # past the range: this partition is read
                after[m.partition] = positions[m.partition] = DONE
                consumer.pause(TopicPartition(topic, m.partition))
                continue
            in_range.append(m)
            after[m.partition] = m.offset + 1
        positions.update(after)
        yield in_range, after
        open_ = [tp for tp in open_ if positions[tp.partition] != DONE]


def _read(  # noqa: PLR0917  (rescore's state, handed over once)
    consumer: KafkaConsumer,
    detector: Detector,
    sessions: sessionmaker[Session],
    run: BackfillRun,
    batch: int,
    on_progress: Callable[[int, int], None],
    stop: threading.Event | None,
    clock: Callable[[], datetime],
) -> RescoreResult:
    topic = run.topic
    positions = dict(run.positions)
    if not positions:  # where each partition's range starts, saved before any batch
        positions = start_offsets(consumer, topic, run.time_from)
        save_batch(sessions, run.name, [], [], positions)
    policy = DecodePolicy()
    scored = flagged = 0
    for messages, after in read_range(
        consumer, topic, positions, run.time_to, batch=batch, stop=stop
    ):
        now = clock()
        minute = now.replace(second=0, microsecond=0)
        scores: list[ModelScore] = []
        count = RunCount(run.name, detector.version, topic, minute, 0, 0)
        if messages:
            result = score_messages(topic, messages, detector, policy, now)
            scores = model_scores(run.name, result.flagged)
            count = RunCount(
                run.name,
                detector.version,
                topic,
                minute,
                len(result.scored_messages),
                len(result.flagged),
            )
        save_batch(sessions, run.name, scores, [count], after)
        scored += count.scored
        flagged += count.flagged
        on_progress(scored, flagged)
    if stop is not None and stop.is_set():
        return RescoreResult(run.name, scored, flagged, already_finished=False)
    save_batch(sessions, run.name, [], [], {p: DONE for p in positions}, finished_at=clock())
    return RescoreResult(run.name, scored, flagged, already_finished=False)


def rescore_stored(
    detector: Detector,
    sessions: sessionmaker[Session],
    topic: str,
    window: tuple[datetime, datetime | None],
    *,
    name: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RescoreResult:
    """Re-score the live flags of ``topic`` stored in ``window`` (by scoring time) from their
    stored originals: every one gets a row, flagged or not, beside the live verdict."""
    from storage.comparison import stored_flags  # noqa: PLC0415

    start, end = window
    now = clock()
    name = name or f"stored-{run_name(detector.version, start, end)}"
    flags = stored_flags(sessions, topic, (start, end or now))
    if not flags:
        return RescoreResult(name, 0, 0, already_finished=False)
    scores = detector.score_records([f.record for f in flags])
    rows = [
        ModelScore(
            run=name,
            model_version=detector.version,
            topic=topic,
            partition=f.partition,
            offset=f.offset,
            kafka_timestamp=f.kafka_timestamp,
            record_id=f.record_id,
            scored_time=now,
            score=float(scores.score[i]) if scores.valid[i] else 0.0,
            severity=float(scores.severity[i]) if scores.valid[i] else 0.0,
            p_value=float(scores.p_value[i]) if scores.valid[i] else 1.0,
            flagged=bool(scores.flagged[i] and scores.valid[i]),
            live_version=f.model_version,
            live_score=f.score,
            live_flagged=True,
            record=f.record,
        )
        for i, f in enumerate(flags)
    ]
    flagged = sum(r.flagged for r in rows)
    minute = now.replace(second=0, microsecond=0)
    count = RunCount(name, detector.version, topic, minute, len(rows), flagged, len(rows))
    write_flagged(sessions, [], scores=rows, run_counts=[count])
    return RescoreResult(name, len(rows), flagged, already_finished=False)
