"""The liveness watchdog: stuck operations, readiness and lag, published while the loop hangs."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry
from test_streams_loop import (
    FakeDeadLetters,
    FakeSource,
    Journal,
    encoded,
    make_loop,
    messages,
)

from latentwatch.embedded import EmbeddedBroker
from storage.records import FlaggedRecord, StreamCount
from streams.kafka import ensure_topics, make_producer
from streams.liveness import (
    EndOffsetHistory,
    Progress,
    Watchdog,
    seconds_behind,
)
from streams.metrics import StreamMetrics
from streams.offsets import KafkaOffsets
from streams.settings import LivenessSettings
from tests.support.cancer_model import Model

LOGGER = "latentwatch.liveness"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# --- lag in time: pure ----------------------------------------------------------------------


def test_seconds_behind_is_when_the_end_passed_the_offset() -> None:
    samples = [(0.0, 100), (10.0, 200), (20.0, 200), (30.0, 260)]
    # record 149 arrived when the end reached 150: half way from t=0 to t=10
    assert seconds_behind(samples, 149, now=40.0) == pytest.approx(35.0)
    assert seconds_behind(samples, 100, now=40.0) == pytest.approx(40.0 - 0.1)
    assert seconds_behind(samples, 230, now=40.0) == pytest.approx(40.0 - (20 + 10 * 31 / 60))
    assert seconds_behind(samples, 260, now=40.0) == 0.0  # nothing waits
    assert seconds_behind(samples, 50, now=40.0) == 40.0  # waited since before the first sample
    assert seconds_behind([], 5, now=40.0) == 0.0


def test_seconds_behind_grows_with_the_clock_while_nothing_moves() -> None:
    samples = [(0.0, 0), (1.0, 50)]
    waited = [seconds_behind(samples, 10, now=t) for t in (5.0, 65.0, 3605.0)]
    assert waited[1] - waited[0] == pytest.approx(60.0)
    assert waited[2] - waited[0] == pytest.approx(3600.0)


def test_end_offset_history_is_bounded_and_reaches_back() -> None:
    history = EndOffsetHistory(max_samples=10)
    for t in range(1000):
        history.add(float(t), t * 10)
        history.add(float(t) + 0.5, t * 10)  # no change: no sample
    assert len(history.samples) <= 10
    assert history.samples[0] == (0.0, 0) and history.samples[-1] == (999.0, 9990)
    # a coarser step, but an old offset still gets its time from the samples around it
    assert seconds_behind(history.samples, 5000, now=1000.0) == pytest.approx(500.0, abs=130)


def test_end_offset_history_forgets_what_is_committed_and_restarts_on_a_new_topic() -> None:
    history = EndOffsetHistory()
    for t, end in [(0.0, 10), (1.0, 20), (2.0, 30), (3.0, 40)]:
        history.add(t, end)
    history.forget_before(25)
    assert history.samples == [(1.0, 20), (2.0, 30), (3.0, 40)]  # 20 <= 25: still needed
    history.add(4.0, 5)  # the end went back: the topic was recreated
    assert history.samples == [(4.0, 5)]


# --- stuck operations and readiness ----------------------------------------------------------


def watchdog(clock: Clock, stuck_after_s: float = 10.0) -> tuple[Watchdog, CollectorRegistry]:
    registry = CollectorRegistry()
    progress = Progress(clock)
    settings = LivenessSettings(stuck_after_s=stuck_after_s)
    return Watchdog(progress, StreamMetrics(registry), settings=settings, clock=clock), registry


def test_a_stuck_operation_is_one_warning_a_metric_and_not_ready_then_one_line_when_it_moves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    dog, registry = watchdog(clock)
    dog.progress.assigned([("t", 0)])
    stuck = "latentwatch_operation_stuck_seconds"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        dog.progress.begin("db_write")
        clock.now += 9.0
        dog.check()
        assert value(registry, stuck, operation="db_write") == 0.0
        assert value(registry, "latentwatch_ready") == 1.0
        for _ in range(5):
            clock.now += 3.0
            dog.check()
        assert value(registry, stuck, operation="db_write") == 24.0
        assert value(registry, "latentwatch_ready") == 0.0
        readiness = dog.readiness()
        assert not readiness.ready
        assert readiness.details["operation"] == "db_write"
        assert readiness.details["stuck"] is True
        clock.now += 18.0
        dog.progress.end()
        clock.now += 1.0
        dog.check()
    assert value(registry, stuck, operation="db_write") == 0.0
    assert value(registry, "latentwatch_ready") == 1.0
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert lines == [
        (
            "WARNING",
            "consumer stuck: writing flagged records to the database has been running for 12 s "
            "(threshold 10 s); nothing is committed until it finishes",
        ),
        (
            "INFO",
            "consumer moving again: writing flagged records to the database finished after 42.0 s",
        ),
    ]


def test_each_stuck_operation_is_reported_on_its_own() -> None:
    clock = Clock()
    dog, registry = watchdog(clock, stuck_after_s=1.0)
    stuck = "latentwatch_operation_stuck_seconds"
    dog.progress.begin("poll")
    clock.now += 2.0
    dog.check()
    dog.progress.end()
    dog.progress.begin("commit")  # a new operation at once: the poll is no longer stuck
    clock.now += 1.5
    dog.check()
    assert value(registry, stuck, operation="poll") == 0.0
    assert value(registry, stuck, operation="commit") == 1.5


def test_ready_only_in_the_group_and_not_while_stopping() -> None:
    clock = Clock()
    stopping = threading.Event()
    dog = Watchdog(
        Progress(clock), StreamMetrics(CollectorRegistry()), stopping=stopping, clock=clock
    )
    assert dog.readiness().details["in_group"] is False
    assert not dog.readiness().ready  # not consuming yet
    dog.progress.assigned([])  # in the group, nothing to read (more members than partitions)
    assert dog.readiness().ready
    stopping.set()
    assert not dog.readiness().ready


class HangingSink:
    """A database whose write hangs until released (a table lock), then stores the rows."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.rows: list[FlaggedRecord] = []

    def count(self, counts: Sequence[StreamCount]) -> None:
        pass

    def write(self, records: Sequence[FlaggedRecord]) -> int:
        self.entered.set()
        self.release.wait(30)
        self.rows.extend(records)
        return len(records)


def test_the_loop_marks_its_operations_and_the_watchdog_sees_a_hang(
    model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    """A real loop hangs in its database write: the watchdog thread says so (log, metric,
    readiness) while it hangs and once it moves; then the batch is committed."""
    journal, stop = Journal(), threading.Event()
    batch = messages(encoded(model.anomalous[:5]))
    source, sink, dead = FakeSource([batch], journal, stop), HangingSink(), FakeDeadLetters(journal)
    loop, registry = make_loop(model, source, sink, dead)  # type: ignore[arg-type]
    progress = loop.progress
    progress.assigned([("t", 0)])
    settings = LivenessSettings(interval_s=0.02, stuck_after_s=0.2)
    dog = Watchdog(progress, loop.metrics, settings=settings).start()
    stuck = "latentwatch_operation_stuck_seconds"
    runner = threading.Thread(target=loop.run, args=(stop,))
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            runner.start()
            assert sink.entered.wait(10)
            deadline = time.monotonic() + 10
            while (value(registry, stuck, operation="db_write") or 0) < 0.3:
                assert time.monotonic() < deadline, "the hang was not noticed"
                time.sleep(0.01)
            assert value(registry, "latentwatch_ready") == 0.0
            assert source.committed == []
            sink.release.set()
            runner.join(10)
            deadline = time.monotonic() + 10
            while value(registry, "latentwatch_ready") != 1.0:
                assert time.monotonic() < deadline, "readiness did not come back"
                time.sleep(0.01)
    finally:
        sink.release.set()
        stop.set()
        dog.close()
    assert source.committed == [{("t", 0): 5}]
    assert progress.committed_offsets() == (frozenset({("t", 0)}), {("t", 0): 5})
    assert value(registry, stuck, operation="db_write") == 0.0
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2, lines
    assert lines[0].startswith("consumer stuck: writing flagged records to the database")
    assert lines[1].startswith("consumer moving again: writing flagged records")


# --- lag from the watchdog's own client, against the broker ----------------------------------


@pytest.mark.kafka
def test_lag_comes_from_the_watchdogs_own_client_and_grows_while_nothing_commits(
    broker: EmbeddedBroker,
) -> None:
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    producer = make_producer(broker.bootstrap, linger_ms=0)
    for i in range(30):
        producer.send(topic, b"x", partition=0 if i < 20 else 1)
        producer.flush()  # one record per batch: the embedded broker's end offsets are exact
    producer.close()
    committer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False
    )
    committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(15, "", -1)})
    committer.close(autocommit=False)

    offsets = KafkaOffsets(broker.bootstrap, group, timeout_s=5)
    try:
        partitions = [(topic, 0), (topic, 1)]
        assert offsets.end_offsets(partitions) == {(topic, 0): 20, (topic, 1): 10}
        # partition 1 was never committed: the group starts at the earliest offset
        assert offsets.start_offsets(partitions) == {(topic, 0): 15, (topic, 1): 0}
    finally:
        offsets.close()

    registry = CollectorRegistry()
    progress = Progress()
    dog = Watchdog(
        progress,
        StreamMetrics(registry),
        lambda stop: KafkaOffsets(broker.bootstrap, group, timeout_s=5),
        settings=LivenessSettings(interval_s=0.05),
    ).start()
    lag = "latentwatch_consumer_lag"
    try:
        progress.assigned(partitions)
        deadline = time.monotonic() + 10
        while value(registry, lag, topic=topic, partition="1") is None:
            assert time.monotonic() < deadline, "no lag published"
            time.sleep(0.02)
        assert value(registry, lag, topic=topic, partition="0") == 5
        assert value(registry, lag, topic=topic, partition="1") == 10
        first = value(registry, "latentwatch_consumer_lag_seconds", topic=topic, partition="0")
        time.sleep(0.3)
        later = value(registry, "latentwatch_consumer_lag_seconds", topic=topic, partition="0")
        assert first is not None and later is not None and later > first  # still waiting
        progress.committed({(topic, 0): 20})  # the loop caught up on partition 0
        progress.changed.set()
        deadline = time.monotonic() + 10
        while value(registry, lag, topic=topic, partition="0") != 0:
            assert time.monotonic() < deadline, "the commit did not bring the lag down"
            time.sleep(0.02)
        assert value(registry, "latentwatch_consumer_lag_seconds", topic=topic, partition="0") == 0
        progress.assigned([(topic, 1)])  # partition 0 went to another member
        deadline = time.monotonic() + 10
        while value(registry, lag, topic=topic, partition="0") is not None:
            assert time.monotonic() < deadline, "a partition given away kept its series"
            time.sleep(0.02)
    finally:
        dog.close()
