"""The consumer loop with in-memory fakes: commit only after the sinks succeeded, bad input to
dead letters, infrastructure failures retried without commit, shutdown leaves work uncommitted."""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

import streams.consumer
from storage.records import FlaggedRecord, StreamCount, UnstorableRecordError
from streams.consumer import (
    BatchReport,
    ConsumerLoop,
    Offsets,
    Unavailable,
)
from streams.messages import Message, PlainMessage, Rejection, UndecodableBatch
from streams.metrics import StreamMetrics
from streams.settings import LoopSettings
from tests.support.cancer_model import Model

FAST_RETRY = LoopSettings(retry_initial_s=0.001, retry_max_s=0.002)


class Journal(list[str]):
    """The order in which the fakes were called."""


class FakeSource:
    def __init__(
        self,
        batches: list[list[Message]],
        journal: Journal,
        stop: threading.Event,
        accept_commits: bool = True,
    ) -> None:
        self.batches, self.journal, self.stop = list(batches), journal, stop
        self.committed: list[dict[tuple[str, int], int]] = []
        self.accept_commits = accept_commits
        self.skipped: list[UndecodableBatch] = []  # reported with the next poll

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        if not self.batches:
            self.stop.set()
            return []
        return self.batches.pop(0)

    def undecodable(self) -> list[UndecodableBatch]:
        skipped, self.skipped = self.skipped, []
        return skipped

    def commit(self, offsets: Offsets) -> bool:
        self.journal.append("commit")
        self.committed.append(dict(offsets))
        return self.accept_commits


class FakeSink:
    def __init__(
        self,
        journal: Journal,
        failures: int = 0,
        unstorable_id: str | None = None,
        stop_after_failures: threading.Event | None = None,
    ) -> None:
        self.journal, self.failures, self.unstorable_id = journal, failures, unstorable_id
        self.stop_after_failures = stop_after_failures
        self.rows: list[FlaggedRecord] = []
        self.counts: list[StreamCount] = []

    def count(self, counts: Sequence[StreamCount]) -> None:
        self.journal.append("count")
        self.counts.extend(counts)

    def write(self, records: Sequence[FlaggedRecord]) -> int:
        self.journal.append("write")
        if self.failures:
            self.failures -= 1
            if self.stop_after_failures is not None and self.failures == 0:
                self.stop_after_failures.set()
            raise Unavailable("database: connection refused")
        for r in records:
            if r.record_id == self.unstorable_id:
                raise UnstorableRecordError("NUL character in record", r)
        self.rows.extend(records)
        return len(records)


class FakeDeadLetters:
    def __init__(self, journal: Journal, failures: int = 0) -> None:
        self.journal, self.failures = journal, failures
        self.sent: list[Rejection] = []

    def send(self, rejections: Sequence[Rejection]) -> None:
        self.journal.append("deadletters")
        if self.failures:
            self.failures -= 1
            raise Unavailable("broker down")
        self.sent.extend(rejections)


def messages(values: list[bytes], partition: int = 0, start: int = 0) -> list[Message]:
    return [
        PlainMessage("t", partition, start + i, 1_790_000_000_000 + i, None, v)
        for i, v in enumerate(values)
    ]


def encoded(records: list[dict[str, object]]) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def make_loop(
    model: Model,
    source: FakeSource,
    sink: FakeSink,
    dead: FakeDeadLetters,
    reports: list[BatchReport] | None = None,
    settings: LoopSettings = FAST_RETRY,
) -> tuple[ConsumerLoop, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry, topics=["t"])
    d = model.detector
    metrics.set_model(
        d.version, d.schema.fingerprint(), "now", d.calibrations.fpr, d.cluster_shares.tolist()
    )
    loop = ConsumerLoop(
        source,
        detector=d,
        sink=sink,
        dead_letters=dead,
        metrics=metrics,
        settings=settings,
        clock=lambda: 1_790_000_001.0,
        on_batch=reports.append if reports is not None else None,
    )
    return loop, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_commit_comes_after_the_database_and_the_dead_letters(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    batch = messages([*encoded(model.normal[:30] + model.anomalous[:10]), b"oops"])
    source = FakeSource([batch], journal, stop)
    sink, dead = FakeSink(journal), FakeDeadLetters(journal)
    reports: list[BatchReport] = []
    loop, registry = make_loop(model, source, sink, dead, reports)
    loop.run(stop)
    assert journal == ["count", "write", "deadletters", "commit"]
    assert source.committed == [{("t", 0): 41}]  # the next offset to read
    # counted once, before the write whose transaction carries the counts
    assert sink.counts == [
        StreamCount(
            "t",
            datetime(2026, 9, 21, 14, 13, tzinfo=UTC),  # the minute of the loop's clock
            consumed=41,
            scored=40,
            flagged=len(sink.rows),
            rejected=1,
        )
    ]
    flagged_ids = [r.record_id or "" for r in sink.rows]
    assert sum(i.startswith("m") for i in flagged_ids) >= 8  # the malignant records
    assert sum(i.startswith("b") for i in flagged_ids) <= 3
    assert all(r.model_version == model.detector.version for r in sink.rows)
    assert [r.reason for r in dead.sent] == ["not_json"]
    assert reports[0].consumed == 41 and reports[0].rejected == 1
    assert reports[0].scored == 40 and reports[0].flagged == len(sink.rows)
    assert value(registry, "latentwatch_records_consumed_total", topic="t") == 41
    assert value(registry, "latentwatch_records_scored_total", topic="t") == 40
    assert value(registry, "latentwatch_records_flagged_total", topic="t") == len(sink.rows)
    assert value(registry, "latentwatch_records_rejected_total", topic="t", reason="not_json") == 1


def test_flagged_rows_carry_position_scores_and_explanation(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    anomalous = model.anomalous[:5]
    source = FakeSource([messages(encoded(anomalous), partition=3, start=100)], journal, stop)
    sink = FakeSink(journal)
    loop, _ = make_loop(model, source, sink, FakeDeadLetters(journal))
    loop.run(stop)
    row = sink.rows[0]
    original = next(r for r in anomalous if r["id"] == row.record_id)
    assert (row.topic, row.partition) == ("t", 3) and 100 <= row.offset < 105
    assert row.kafka_timestamp == 1_790_000_000_000 + row.offset - 100
    assert row.record == original
    assert row.severity > 0 and row.p_value < model.detector.calibrations.fpr
    assert row.score == pytest.approx(row.density + row.reconstruction)
    features = row.explanation["features"]
    assert row.top_feature == features[0]["name"]
    assert features[0]["actual"] == original[features[0]["name"]]
    assert {"name", "actual", "expected", "contribution", "share"} <= set(features[0])
    assert len(row.explanation["latent_2d"]) == 2
    assert row.event_time is not None and row.event_time.timestamp() == pytest.approx(
        row.kafka_timestamp / 1000
    )


@pytest.mark.parametrize(("explained", "nearest"), [(5, True), (2, True), (0, True), (5, False)])
def test_flagged_records_explain_as_many_features_as_asked(
    model: Model, explained: int, nearest: bool
) -> None:
    journal, stop = Journal(), threading.Event()
    source = FakeSource([messages(encoded(model.anomalous[:5]))], journal, stop)
    sink = FakeSink(journal)
    settings = LoopSettings(
        retry_initial_s=0.001, explained_features=explained, nearest_normal=nearest
    )
    loop, _ = make_loop(model, source, sink, FakeDeadLetters(journal), settings=settings)
    loop.run(stop)
    n_fields = len(model.detector.schema.names)
    assert sink.rows
    for row in sink.rows:
        features = row.explanation["features"]
        assert len(features) == (explained or n_fields)
        if nearest:  # by attribution: the changed fields that raised the score first
            walk = row.explanation["nearest_normal"]
            assert len(walk["changes"]) <= (explained or n_fields)
            attributions = [f["attribution"] for f in features]
            assert attributions == sorted(attributions, reverse=True)
            raised = [c["name"] for c in walk["changes"] if c["attribution"] > 0]
            assert (
                raised
                and [f["name"] for f in features[: len(raised)]] == raised[: explained or None]
            )
        else:  # as before: by reconstruction, and nothing else stored
            contributions = [f["contribution"] for f in features]
            assert contributions == sorted(contributions, reverse=True)
            assert "nearest_normal" not in row.explanation


def test_poison_messages_never_stop_the_stream(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    good = encoded(model.normal[:20])
    bad = [b"\xff", b"{", b"[]", b'{"mean_radius": "big"}', b'{"other": 1}', b'{"x": NaN}']
    source = FakeSource([messages(bad + good)], journal, stop)
    dead = FakeDeadLetters(journal)
    reports: list[BatchReport] = []
    loop, registry = make_loop(model, source, FakeSink(journal), dead, reports)
    loop.run(stop)
    assert sorted(r.reason for r in dead.sent) == sorted(
        [
            "not_utf8",
            "not_json",
            "not_an_object",
            "wrong_type",
            "missing_required",
            "non_finite_number",
        ]
    )
    assert reports[0].scored == 20
    assert source.committed == [{("t", 0): 26}]
    for reason in ("not_utf8", "not_json", "wrong_type", "missing_required"):
        assert value(registry, "latentwatch_records_rejected_total", topic="t", reason=reason) == 1


def test_database_outage_is_retried_and_nothing_is_committed_meanwhile(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    source = FakeSource([messages(encoded(model.anomalous[:5]))], journal, stop)
    sink = FakeSink(journal, failures=3)
    loop, registry = make_loop(model, source, sink, FakeDeadLetters(journal))
    loop.run(stop)
    assert journal == ["count"] + ["write"] * 4 + ["commit"]  # counted once, written once
    assert len(sink.rows) > 0 and len(sink.counts) == 1
    assert value(registry, "latentwatch_db_write_errors_total") == 3
    assert value(registry, "latentwatch_db_write_retries_total") == 3


def test_shutdown_during_an_outage_leaves_the_batch_uncommitted(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    source = FakeSource([messages(encoded(model.anomalous[:5]))], journal, stop)
    source.batches.append(messages(encoded(model.normal[:5]), start=5))
    sink = FakeSink(journal, failures=2, stop_after_failures=stop)
    loop, _ = make_loop(model, source, sink, FakeDeadLetters(journal))
    loop.run(stop)
    assert "commit" not in journal
    assert source.committed == []
    assert len(source.batches) == 1  # the loop stopped: no further poll


def test_dead_letter_outage_is_retried_before_the_commit(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    source = FakeSource([messages([b"bad", *encoded(model.normal[:3])])], journal, stop)
    dead = FakeDeadLetters(journal, failures=2)
    loop, registry = make_loop(model, source, FakeSink(journal), dead)
    loop.run(stop)
    assert journal[-4:] == ["deadletters", "deadletters", "deadletters", "commit"]
    assert len(dead.sent) == 1
    assert value(registry, "latentwatch_deadletter_errors_total") == 2


def test_a_record_no_database_accepts_goes_to_dead_letters(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    anomalous = model.anomalous[:10]
    batch = messages(encoded(anomalous))
    source = FakeSource([batch], journal, stop)
    flagged_ids = [
        r["id"]
        for r, f in zip(anomalous, model.detector.score_records(anomalous).flagged, strict=True)
        if f
    ]
    victim = str(flagged_ids[0])
    sink, dead = FakeSink(journal, unstorable_id=victim), FakeDeadLetters(journal)
    loop, registry = make_loop(model, source, sink, dead)
    loop.run(stop)
    assert victim not in {r.record_id for r in sink.rows}
    assert len(sink.rows) == len(flagged_ids) - 1
    assert [(r.reason, orjson.loads(r.message.value or b"")["id"]) for r in dead.sent] == [
        ("unstorable", victim)
    ]
    # the dead letter is the original message (its bytes, key and headers), not a re-encoding
    assert dead.sent[0].message is batch[[str(r["id"]) for r in anomalous].index(victim)]
    assert journal[-1] == "commit"
    assert (
        value(registry, "latentwatch_records_rejected_total", topic="t", reason="unstorable") == 1
    )


class FlakySource(FakeSource):
    """Polls fail (as kafka-python's do, e.g. while not authorised) a few times first."""

    def __init__(self, failures: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        if self.failures:
            self.failures -= 1
            raise Unavailable("polling Kafka: TopicAuthorizationFailedError")
        return super().poll(timeout_s, max_records)


def test_failed_polls_are_retried_and_counted(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    source = FlakySource(3, [messages(encoded(model.normal[:5]))], journal, stop)
    loop, registry = make_loop(model, source, FakeSink(journal), FakeDeadLetters(journal))
    totals = loop.run(stop)
    assert totals.consumed == 5
    assert source.committed == [{("t", 0): 5}]
    assert value(registry, "latentwatch_poll_errors_total") == 3


def test_a_refused_commit_is_counted_and_the_loop_goes_on(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    batches = [
        messages(encoded(model.normal[:3])),
        messages(encoded(model.normal[3:6]), start=3),
    ]
    source = FakeSource(batches, journal, stop, accept_commits=False)
    loop, registry = make_loop(model, source, FakeSink(journal), FakeDeadLetters(journal))
    totals = loop.run(stop)
    assert totals.batches == 2
    assert value(registry, "latentwatch_commit_failures_total") == 2


def test_offsets_are_committed_per_partition(model: Model) -> None:
    journal, stop = Journal(), threading.Event()
    records = encoded(model.normal[:6])
    batch = messages(records[:3], partition=0, start=10) + messages(
        records[3:], partition=1, start=40
    )
    source = FakeSource([batch], journal, stop)
    loop, _ = make_loop(model, source, FakeSink(journal), FakeDeadLetters(journal))
    loop.run(stop)
    assert source.committed == [{("t", 0): 13, ("t", 1): 43}]


def test_a_batch_the_client_could_not_decode_is_dead_lettered_and_committed_past(
    model: Model,
) -> None:
    """The poll stepped over a batch of partition 0 and returned records of partition 1: the
    batch goes to dead letters whole, then both partitions are committed, the batch's past
    its end; its records count as consumed and rejected."""
    journal, stop = Journal(), threading.Event()
    source = FakeSource([messages(encoded(model.normal[:5]), partition=1)], journal, stop)
    source.skipped = [
        UndecodableBatch(
            "t", 0, 40, 49, 10, 1_790_000_000_000, "zstd", b"raw batch", "UnsupportedCodecError"
        )
    ]
    sink, dead = FakeSink(journal), FakeDeadLetters(journal)
    reports: list[BatchReport] = []
    loop, registry = make_loop(model, source, sink, dead, reports)
    loop.run(stop)
    assert journal == ["count", "write", "deadletters", "commit"]
    assert source.committed == [{("t", 0): 50, ("t", 1): 5}]
    (letter,) = dead.sent
    assert letter.reason == "undecodable_batch"
    assert (letter.message.partition, letter.message.offset) == (0, 40)
    assert letter.message.value == b"raw batch"
    assert dict(letter.message.headers)["latentwatch-last-offset"] == b"49"
    assert "offsets 40-49 (10 records, compression zstd)" in letter.detail
    assert reports[0].consumed == 15 and reports[0].rejected == 10 and reports[0].scored == 5
    assert sum(c.consumed for c in sink.counts) == 15
    assert sum(c.rejected for c in sink.counts) == 10
    rejected = value(
        registry, "latentwatch_records_rejected_total", topic="t", reason="undecodable_batch"
    )
    assert rejected == 10
    assert value(registry, "latentwatch_records_consumed_total", topic="t") == 15


@pytest.mark.parametrize("timestamp", [253_402_300_800_000, 2**63 - 1, -5, 0, None])
def test_any_kafka_timestamp_is_stored_with_the_time_made_safe(
    model: Model, timestamp: int | None
) -> None:
    """Year 10000 and beyond, the largest 64-bit number, before 1970, none at all: a flagged
    record keeps the timestamp it came with and an event time only where one exists; the
    newest-record gauge is not moved into the future."""
    journal, stop = Journal(), threading.Event()
    odd = PlainMessage("t", 0, 0, timestamp, struct.pack(">q", 7), encoded(model.anomalous[:1])[0])
    source = FakeSource([[odd, *messages(encoded(model.normal[:3]), start=1)]], journal, stop)
    sink = FakeSink(journal)
    loop, registry = make_loop(model, source, sink, FakeDeadLetters(journal))
    loop.run(stop)
    assert source.committed == [{("t", 0): 4}]
    (row,) = (r for r in sink.rows if r.offset == 0)
    assert row.kafka_timestamp == (-1 if timestamp is None else timestamp)
    assert row.key == struct.pack(">q", 7)
    if timestamp is None or timestamp < 0 or timestamp > 10**15:
        assert row.event_time is None
    newest = value(registry, "latentwatch_last_record_timestamp_seconds", topic="t")
    assert newest <= 1_790_000_001.0 + 3600


def test_a_message_whose_scoring_fails_is_dead_lettered_and_the_rest_scored(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails while scoring one message (a fault injected here) is that message's
    dead letter, with the error; the batch around it is scored, the offsets move."""
    real = streams.consumer.score_messages

    def failing(topic: str, batch: Sequence[Message], *args: Any, **kwargs: Any) -> Any:
        if any(m.value == b'{"poison": 1}' for m in batch):
            raise ValueError("year 10000 is out of range")
        return real(topic, batch, *args, **kwargs)

    monkeypatch.setattr(streams.consumer, "score_messages", failing)
    journal, stop = Journal(), threading.Event()
    batch = messages([*encoded(model.normal[:3]), b'{"poison": 1}', *encoded(model.anomalous[:2])])
    source = FakeSource([batch], journal, stop)
    sink, dead = FakeSink(journal), FakeDeadLetters(journal)
    reports: list[BatchReport] = []
    loop, registry = make_loop(model, source, sink, dead, reports)
    loop.run(stop)
    assert source.committed == [{("t", 0): 6}]
    (letter,) = dead.sent
    assert (letter.reason, letter.message.offset) == ("scoring_failed", 3)
    assert letter.detail == "ValueError: year 10000 is out of range"
    assert reports[0].scored == 5 and reports[0].rejected == 1 and reports[0].consumed == 6
    assert value(registry, "latentwatch_records_scored_total", topic="t") == 5
    assert sum(c.consumed for c in sink.counts) == 6
