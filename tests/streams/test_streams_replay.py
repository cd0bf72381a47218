"""The pacing of `latentwatch replay --rate N` (streams.replay.replay), through its injected clock
and sleep (no broker, no real time: a fake producer acknowledges every send at once)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streams.replay import replay


class FakeClock:
    """Time moves only when someone sleeps (or a send takes ``send_s``)."""

    def __init__(self, oversleep_s: float = 0.0) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.oversleep_s = oversleep_s  # a real sleep may return late

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds + self.oversleep_s


class AcknowledgedAtOnce:
    def add_callback(self, callback: Callable[[object], None]) -> None:
        callback(None)

    def add_errback(self, _errback: Callable[[Exception], None]) -> None:
        pass


class FakeProducer:
    """Records the clock at each send; a send takes ``send_s`` of the fake clock."""

    def __init__(self, clock: FakeClock, send_s: float = 0.0) -> None:
        self.clock = clock
        self.send_s = send_s
        self.sent_at: list[float] = []

    def send(self, topic: str, value: bytes, key: bytes | None) -> AcknowledgedAtOnce:
        self.sent_at.append(self.clock())
        self.clock.now += self.send_s
        return AcknowledgedAtOnce()

    def flush(self, timeout: float) -> None:
        pass


def paced(
    n: int, rate: float | None, send_s: float = 0.0, oversleep_s: float = 0.0
) -> tuple[FakeClock, FakeProducer, float]:
    clock = FakeClock(oversleep_s)
    producer = FakeProducer(clock, send_s)
    start = clock.now
    report = replay(
        [{"i": i} for i in range(n)],
        producer,  # has the two methods replay uses: send, flush
        "t",
        rate=rate,
        clock=clock,
        sleep=clock.sleep,
    )
    assert (report.sent, report.failed) == (n, 0)
    assert report.seconds == pytest.approx(clock.now - start)
    return clock, producer, start


def test_records_go_out_no_faster_than_the_rate() -> None:
    """Record i leaves no earlier than i / rate after the start: 11 records at 50/s take 0.2 s."""
    clock, producer, start = paced(11, rate=50.0)
    for i, sent in enumerate(producer.sent_at):
        assert sent - start >= i / 50.0 - 1e-9
    assert clock.now - start == pytest.approx(10 / 50.0)


def test_late_wake_ups_do_not_add_up() -> None:
    """The schedule is anchored at the start: a sleep that returns 3 ms late delays one record
    by 3 ms, not every later one by 3 ms more."""
    _, producer, start = paced(21, rate=100.0, oversleep_s=0.003)
    for i, sent in enumerate(producer.sent_at):
        assert i / 100.0 - 1e-9 <= sent - start <= i / 100.0 + 0.003 + 1e-9


def test_a_producer_slower_than_the_rate_is_not_slowed_further() -> None:
    clock, _, start = paced(10, rate=100.0, send_s=0.02)  # 20 ms a send, 10 ms a slot
    assert clock.sleeps == []
    assert clock.now - start == pytest.approx(10 * 0.02)


def test_without_a_rate_nothing_waits() -> None:
    clock, _, _ = paced(50, rate=None)
    assert clock.sleeps == []
