"""The consumer loop: poll, score, persist, dead-letter, then commit. A thin shell.

At-least-once by construction: offsets are committed only after the batch's flagged records
are in the database and its rejected records are acknowledged by the dead-letter topic. A crash
anywhere before the commit redelivers the batch; the database's idempotency key absorbs the
repeat, so the table ends up exactly-once.

Infrastructure trouble is retried with capped exponential backoff and never skipped: while the
database is down the loop keeps retrying the same batch and commits nothing. Bad *input* is
never retried: it goes to dead letters with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol, TypeVar

import numpy as np

from detector.detector import Detector
from storage.records import (
    FlaggedRecord,
    ModelScore,
    RunCount,
    StreamCount,
    UnstorableRecordError,
)
from streams.liveness import Progress
from streams.messages import (
    SCORING_FAILED,
    UNDECODABLE_BATCH,
    UNSTORABLE,
    Message,
    Rejection,
    UndecodableBatch,
)
from streams.metrics import StreamMetrics
from streams.retry import Stopped, retry_with_backoff
from streams.scoring import TopicBatch, score_messages
from streams.settings import LoopSettings
from streams.shadow import shadow_scores
from streams.typed import TypedDecoder

log = logging.getLogger("latentwatch.consumer")

T = TypeVar("T")
Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> next offset to read


class Unavailable(Exception):  # noqa: N818  (a state, not a programming error)
    """A sink or the broker cannot be reached right now; retrying may help."""


class Source(Protocol):
    def poll(self, timeout_s: float, max_records: int) -> list[Message]: ...
    def undecodable(self) -> list[UndecodableBatch]: ...  # stepped over by the polls since
    def commit(self, offsets: Offsets) -> bool: ...  # False: the group moved on, redelivery


class FlaggedSink(Protocol):
    def count(self, counts: Sequence[StreamCount]) -> None: ...  # kept for a later write
    def write(self, records: Sequence[FlaggedRecord]) -> int: ...  # one transaction


class DeadLetterSink(Protocol):
    def send(self, rejections: Sequence[Rejection]) -> None: ...  # returns once acknowledged


@dataclass(frozen=True)
class ModelSet:
    """The models a consumer scores with: the live one (its flags are the flags) and an
    optional shadow one scoring the same batches (its rows are never live flags)."""

    live: Detector
    manifest: Mapping[str, Any]  # the live model's
    shadow: Detector | None = None


class ModelUpdates(Protocol):
    def take(self) -> ModelSet | None: ...  # a change to switch to before the next batch


class LifecycleSink(Protocol):
    def use_model(self, version: str, manifest: Mapping[str, Any]) -> None: ...
    def shadow(self, scores: Sequence[ModelScore], counts: Sequence[RunCount]) -> None: ...


@dataclass(frozen=True)
class BatchReport:
    """What one committed batch did, for callers that watch the loop (demo, benchmarks)."""

    consumed: int
    scored: int
    flagged: int
    rejected: int
    stored: int
    committed_at: float  # wall clock, seconds
    duration_s: float  # processing time of the batch
    timestamps_ms: np.ndarray  # Kafka timestamps of the batch's messages


@dataclass
class RunTotals:
    batches: int = 0
    consumed: int = 0
    scored: int = 0
    flagged: int = 0
    rejected: int = 0
    stored: int = 0


# Kafka timestamps further ahead of the consumer's clock than this are left out of the latency
# and newest-record metrics: one producer with a wrong clock would hold the gauge in the future.
FUTURE_TOLERANCE_S = 300.0

# Per-message fields, read in C: the loop handles thousands of messages a batch.
_TOPIC = attrgetter("topic")
_TOPIC_PARTITION = attrgetter("topic", "partition")
_OFFSET = attrgetter("offset")
_TIMESTAMP = attrgetter("timestamp")


def _group_by_topic(messages: Sequence[Message]) -> dict[str, list[Message]]:
    topics = set(map(_TOPIC, messages))
    if len(topics) == 1:  # the usual consumer of one topic
        return {topics.pop(): list(messages)}
    groups: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        groups[message.topic].append(message)
    return groups


def _stream_counts(
    batches: Sequence[TopicBatch], skipped: Sequence[UndecodableBatch], now: datetime
) -> list[StreamCount]:
    """What the batch did per topic, for the flagged share in SQL. A flagged record that no
    database accepts counts as flagged here (and as rejected in the metrics); the records of
    a batch the client could not decode as consumed and rejected."""
    minute = now.replace(second=0, microsecond=0)
    counts = [
        StreamCount(
            b.topic,
            minute,
            consumed=b.consumed,
            scored=len(b.scored_messages),
            flagged=len(b.flagged),
            rejected=len(b.rejections),
        )
        for b in batches
    ]
    counts += [StreamCount(b.topic, minute, b.records, 0, 0, b.records) for b in skipped]
    return counts


def _next_offsets(
    messages: Sequence[Message], skipped: Sequence[UndecodableBatch] = ()
) -> dict[tuple[str, int], int]:
    """Per partition, the offset after its last message (a poll gives each partition's
    messages in offset order), or after a batch stepped over: where the group resumes."""
    last = dict(zip(map(_TOPIC_PARTITION, messages), map(_OFFSET, messages), strict=True))
    for batch in skipped:
        position = (batch.topic, batch.partition)
        last[position] = max(last.get(position, -1), batch.last_offset)
    return {partition: offset + 1 for partition, offset in last.items()}


def _timestamps_ms(parts: list[np.ndarray]) -> np.ndarray:
    """Kafka timestamps in ms as integers, -1 where a message had none (timestamp_ms)."""
    ms = np.concatenate(parts) if parts else np.empty(0)
    return np.where(np.isnan(ms), -1, ms).astype(np.int64)


class ConsumerLoop:
    """Wires a source, the detector and the sinks together; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        source: Source,
        *,
        detector: Detector,
        sink: FlaggedSink,
        dead_letters: DeadLetterSink,
        metrics: StreamMetrics,
        settings: LoopSettings | None = None,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[BatchReport], None] | None = None,
        progress: Progress | None = None,
        shadow: Detector | None = None,
        models: ModelUpdates | None = None,
        lifecycle_sink: LifecycleSink | None = None,
    ) -> None:
        self.source, self.detector, self.sink = source, detector, sink
        # The model registry's changes, taken between batches (never within one); the sink
        # learns the new live version and stores the shadow model's rows.
        self.models, self.lifecycle_sink = models, lifecycle_sink
        self.shadow = shadow
        self.progress = progress or Progress()  # marks for the liveness watchdog
        self.dead_letters, self.metrics = dead_letters, metrics
        self.settings = settings or LoopSettings()
        self.clock = clock
        self.on_batch = on_batch
        self.totals = RunTotals()
        self._typed = TypedDecoder(detector.schema) if self.settings.typed_decoding else None
        self._typed_shadow = self._typed_for(shadow)

    def _typed_for(self, detector: Detector | None) -> TypedDecoder | None:
        if detector is None or not self.settings.typed_decoding:
            return None
        return TypedDecoder(detector.schema)

    def take_models(self) -> None:
        """Switch to the registry's models if they changed: called before a batch is scored,
        so every record of a batch is scored by one live model."""
        if self.models is None:
            return
        change = self.models.take()
        if change is None:
            return
        m = self.metrics
        if change.live is not self.detector:
            log.info("live model %s -> %s", self.detector.version, change.live.version)
            self.detector = change.live
            self._typed = self._typed_for(change.live)
            m.set_model(
                change.live.version,
                change.live.schema.fingerprint(),
                str(change.manifest.get("created_at", "")),
                change.live.calibrations.fpr,
                change.live.cluster_shares.tolist(),
            )
            m.model_switched("live")
            if self.lifecycle_sink is not None:
                self.lifecycle_sink.use_model(change.live.version, change.manifest)
        if change.shadow is not self.shadow:
            old = self.shadow.version if self.shadow else "none"
            new = change.shadow.version if change.shadow else "none"
            log.info("shadow model %s -> %s", old, new)
            self.shadow = change.shadow
            self._typed_shadow = self._typed_for(change.shadow)
            m.model_switched("shadow")
        m.set_roles(self.detector.version, self.shadow.version if self.shadow else None)

    def run(self, stop: threading.Event) -> RunTotals:
        progress = self.progress
        while not stop.is_set():
            try:
                self.take_models()  # between batches, and on a quiet stream too
                progress.begin("poll")
                messages = self._retry(
                    lambda: self.source.poll(
                        self.settings.poll_timeout_s, self.settings.max_records
                    ),
                    "polling Kafka",
                    stop,
                    on_error=self.metrics.poll_error,
                )
                progress.end()
                skipped = self.source.undecodable()
                if not messages and not skipped:
                    continue
                self.process(messages, stop, skipped)
            except Stopped as exc:
                log.warning(
                    "shutdown while retrying %s: batch left uncommitted for redelivery", exc
                )
                break
        return self.totals

    def process(
        self,
        messages: Sequence[Message],
        stop: threading.Event,
        skipped: Sequence[UndecodableBatch] = (),
    ) -> None:
        """Handle one polled batch end to end, with the record batches the poll stepped over;
        raises Stopped if shutdown interrupts a retry."""
        started = time.perf_counter()
        self.take_models()
        batches = self.score(messages)
        if self.shadow is not None:
            self.score_shadow(batches)
        self.persist_and_commit(batches, messages, started, stop, skipped)

    def score_shadow(self, batches: Sequence[TopicBatch]) -> None:
        """The shadow model's rows and counts of the batches, handed to the sink to be written
        with the live flags. A failure is logged and counted; it never holds the stream."""
        shadow, sink = self.shadow, self.lifecycle_sink
        if shadow is None or sink is None:
            return
        now = datetime.fromtimestamp(self.clock(), UTC)
        for b in batches:
            try:
                rows, count = shadow_scores(
                    b, shadow, self.detector.version, now, self._typed_shadow
                )
            except Exception:
                log.exception("shadow model %s failed on a batch of %s", shadow.version, b.topic)
                self.metrics.model_load_failed("shadow", shadow.version)
                continue
            sink.shadow(rows, [count])
            self.metrics.record_model(
                b.topic, "shadow", shadow.version, count.scored, count.flagged
            )

    def score(self, messages: Sequence[Message]) -> list[TopicBatch]:
        """Decode, score and explain; pure apart from the model's forward pass. A topic's batch
        whose scoring raises is scored again a message at a time: a message that still fails
        is rejected with the error, never retried, never fatal."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        batches: list[TopicBatch] = []
        for topic, msgs in _group_by_topic(messages).items():
            try:
                batches.append(self._score_topic(topic, msgs, now))
            except Exception:
                log.exception(
                    "scoring %d messages of %s failed: scoring them one by one", len(msgs), topic
                )
                batches += [self._score_alone(topic, m, now) for m in msgs]
        return batches

    def _score_topic(self, topic: str, messages: Sequence[Message], now: datetime) -> TopicBatch:
        s = self.settings
        return score_messages(
            topic,
            messages,
            self.detector,
            s.policy,
            now,
            explained_features=s.explained_features,
            nearest_normal=s.nearest_normal,
            typed=self._typed,
        )

    def _score_alone(self, topic: str, message: Message, now: datetime) -> TopicBatch:
        try:
            return self._score_topic(topic, [message], now)
        except Exception as exc:
            rejection = Rejection(message, SCORING_FAILED, f"{type(exc).__name__}: {exc}")
            return TopicBatch(topic, 1, [rejection], [], None, [])

    def persist_and_commit(
        self,
        batches: list[TopicBatch],
        messages: Sequence[Message],
        started: float,
        stop: threading.Event,
        skipped: Sequence[UndecodableBatch] = (),
    ) -> None:
        """Flagged records to the database and rejections (and the ``skipped`` record batches,
        as fetched) to dead letters, then the offsets of ``messages`` and ``skipped``, then the
        accounting (``started``: ``perf_counter`` when work began)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        flagged = [r for b in batches for r in b.flagged]
        rejected = [r for b in batches for r in b.rejections]
        rejected += [b.rejection() for b in skipped]
        self.sink.count(_stream_counts(batches, skipped, now))

        progress = self.progress
        progress.begin("db_write")
        stored, unstorable = self._store(flagged, messages, stop)
        progress.end()
        rejected += unstorable
        if rejected:
            progress.begin("deadletter_send")
            self._retry(
                lambda: self.dead_letters.send(rejected),
                "publishing dead letters",
                stop,
                on_error=self.metrics.deadletter_error,
            )
            progress.end()
        committed_at = self.clock()
        offsets = _next_offsets(messages, skipped)
        progress.begin("commit")
        committed = self.source.commit(offsets)
        progress.end()
        if committed:
            progress.committed(offsets)
        else:
            self.metrics.commit_failure()
            log.warning(
                "offset commit refused (group rebalanced): %d records will be "
                "redelivered; the database absorbs the repeat",
                len(messages),
            )
        self._account(
            batches, skipped, unstorable, stored, committed_at, time.perf_counter() - started
        )

    def _retry(
        self,
        action: Callable[[], T],
        what: str,
        stop: threading.Event,
        *,
        on_error: Callable[[], None],
        on_retry: Callable[[], None] = lambda: None,
    ) -> T:
        """Run ``action`` until it succeeds, backing off while it raises Unavailable."""
        return retry_with_backoff(
            action,
            what,
            stop,
            retry_on=(Unavailable,),
            initial_s=self.settings.retry_initial_s,
            max_s=self.settings.retry_max_s,
            on_error=on_error,
            on_retry=on_retry,
        )

    def _store(
        self, flagged: list[FlaggedRecord], messages: Sequence[Message], stop: threading.Event
    ) -> tuple[int, list[Rejection]]:
        """Write flagged records; records no database accepts become rejections of their
        original messages."""
        pending = list(flagged)
        unstorable: list[Rejection] = []
        while True:
            rows = pending
            try:
                stored = self._retry(
                    lambda: self.sink.write(rows),  # noqa: B023  (called before rows changes)
                    "writing flagged records",
                    stop,
                    on_error=self.metrics.db_write_error,
                    on_retry=self.metrics.db_write_retry,
                )
            except UnstorableRecordError as exc:
                record = exc.record
                if record is None:  # a model manifest: nothing a retry or a skip can fix
                    raise
                pending = [r for r in pending if r is not record]
                position = (record.topic, record.partition, record.offset)
                original = next(m for m in messages if (m.topic, m.partition, m.offset) == position)
                unstorable.append(Rejection(original, UNSTORABLE, str(exc)))
            else:
                return stored, unstorable

    def _account(  # noqa: PLR0917  (a private step of persist_and_commit)
        self,
        batches: list[TopicBatch],
        skipped: Sequence[UndecodableBatch],
        unstorable: list[Rejection],
        stored: int,
        committed_at: float,
        duration_s: float,
    ) -> None:
        m = self.metrics
        extra = Counter(r.message.topic for r in unstorable)
        timestamps: list[np.ndarray] = []
        for b in batches:
            m.record_consumed(b.topic, b.consumed)
            reasons = Counter(r.reason for r in b.rejections)
            if extra[b.topic]:
                reasons[UNSTORABLE] += extra[b.topic]
            if reasons:
                m.record_rejects(b.topic, reasons)
            if b.scores is not None:
                s = b.scores
                m.record_model(
                    b.topic, "live", self.detector.version, len(b.scored_messages), len(b.flagged)
                )
                m.record_scores(
                    b.topic,
                    score=s.score,
                    flagged=s.flagged,
                    severity=s.severity,
                    density=s.density,
                    reconstruction=s.reconstruction,
                    clusters=s.cluster,
                    p_values=s.p_value,
                )
            done = [*b.scored_messages, *(r.message for r in b.rejections)]
            ms = np.array(list(map(_TIMESTAMP, done)), dtype=np.float64)  # None: nan
            ms[ms < 0] = np.nan  # -1: the broker gave none
            ms[ms > (committed_at + FUTURE_TOLERANCE_S) * 1000.0] = np.nan
            m.record_persisted(b.topic, ms / 1000.0, committed_at)
            timestamps.append(ms)
        for u in skipped:
            m.record_consumed(u.topic, u.records)
            m.record_rejects(u.topic, {UNDECODABLE_BATCH: u.records})
        m.batch_done(duration_s, self.clock())

        undecoded = sum(u.records for u in skipped)
        scored = sum(len(b.scored_messages) for b in batches)
        n_flagged = sum(len(b.flagged) for b in batches) - len(unstorable)
        rejected = sum(len(b.rejections) for b in batches) + len(unstorable) + undecoded
        consumed = sum(b.consumed for b in batches) + undecoded
        t = self.totals
        t.batches += 1
        t.consumed += consumed
        t.scored += scored
        t.flagged += n_flagged
        t.rejected += rejected
        t.stored += stored
        if self.on_batch is not None:
            self.on_batch(
                BatchReport(
                    consumed,
                    scored,
                    n_flagged,
                    rejected,
                    stored,
                    committed_at,
                    duration_s,
                    _timestamps_ms(timestamps),
                )
            )
