"""Liveness: a watchdog thread beside the consumer loop that keeps telling the truth while the
loop is stuck.

The loop marks where it is (:class:`Progress`: an operation begins, ends, a batch is committed,
the group assignment changes): attribute writes, nothing more, on the hot path. The
:class:`Watchdog` reads those marks from its own thread every ``interval_s`` and

* publishes the lag of every partition the consumer owns, in records (end offset - committed
  offset) and in seconds (how long the next uncommitted record has waited), from offsets it
  looks up with a client of its own (kafka-python's consumer is not thread-safe), so the lag
  keeps growing while the loop hangs in a database write;
* notices an operation (poll, database write, dead-letter send, commit) in progress for longer
  than ``stuck_after_s``: one warning line, the ``operation_stuck_seconds`` gauge, readiness
  false; and one line when it moves again;
* answers ``/ready`` (in the group, nothing stuck) and ``/health`` (the watchdog is alive) on
  the metrics endpoint.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from streams.metrics import Probe, StreamMetrics
from streams.settings import LivenessSettings

log = logging.getLogger("latentwatch.liveness")

Partition = tuple[str, int]  # (topic, partition)

# What the loop marks, and how the log names it.
OPERATIONS: Mapping[str, str] = {
    "poll": "polling Kafka",
    "db_write": "writing flagged records to the database",
    "deadletter_send": "publishing dead letters",
    "commit": "committing offsets",
}


class Progress:
    """Where the consumer loop is, for the watchdog. The loop's thread writes (each mark is one
    or two attribute assignments, atomic under the GIL); the watchdog and the HTTP probes read.
    Offsets and the assignment change under a lock, once per batch or rebalance."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.current: tuple[str, float] | None = None  # operation in progress, since
        self.finished: tuple[str, float, float] | None = None  # last one: name, since, until
        self.last_batch: float | None = None  # when the last batch was committed
        self.assignment: frozenset[Partition] | None = None  # None: not in the group yet
        self.changed = threading.Event()  # the assignment changed: look now
        self._committed: dict[Partition, int] = {}
        self._lock = threading.Lock()

    def begin(self, operation: str) -> None:
        self.current = (operation, self._clock())

    def end(self) -> None:
        current = self.current
        if current is not None:
            self.finished = (current[0], current[1], self._clock())
        self.current = None

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """The group committed ``offsets`` (next offset to read per partition) for this batch."""
        with self._lock:
            self._committed.update(offsets)
        self.last_batch = self._clock()

    def assigned(self, partitions: Iterable[Partition]) -> None:
        """The partitions this member owns now (after a rebalance). Offsets committed for a
        partition it gave away are forgotten: another member may move it on."""
        owned = frozenset(partitions)
        with self._lock:
            self._committed = {p: o for p, o in self._committed.items() if p in owned}
            self.assignment = owned
        self.changed.set()

    def committed_offsets(self) -> tuple[frozenset[Partition] | None, dict[Partition, int]]:
        with self._lock:
            return self.assignment, dict(self._committed)


class OffsetReader(Protocol):
    """The watchdog's own view of the broker (never the loop's consumer)."""

    def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]: ...

    def start_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Where the group reads each partition from: its committed offset, or where the reset
        policy puts a partition the group never committed."""
        ...

    def close(self) -> None: ...


class EndOffsetHistory:
    """When a partition's end offset reached which value: the samples (time, end offset) that
    turn a committed offset into how long its record has waited. Bounded: past ``max_samples``
    every other old sample is dropped, so the history reaches back further at a coarser step."""

    def __init__(self, max_samples: int = 360) -> None:
        self.samples: list[tuple[float, int]] = []
        self._max = max_samples

    def add(self, now: float, end: int) -> None:
        if self.samples and end < self.samples[-1][1]:  # the topic was recreated or truncated
            self.samples.clear()
        if not self.samples or end > self.samples[-1][1]:
            self.samples.append((now, end))
            if len(self.samples) > self._max:
                self.samples = [*self.samples[:-1:2], self.samples[-1]]

    def forget_before(self, committed: int) -> None:
        """Drop samples no longer needed: those before the last one at or below ``committed``."""
        keep = bisect.bisect_right(self.samples, committed, key=lambda s: s[1]) - 1
        if keep > 0:
            del self.samples[:keep]


def seconds_behind(samples: Sequence[tuple[float, int]], committed: int, now: float) -> float:
    """How long the record at offset ``committed`` (the next one the group reads) has waited:
    ``now`` minus the time the end offset passed it, interpolated between the samples (time,
    end offset; both ascending), as kafka-lag-exporter estimates lag in time. 0 when nothing
    waits. A record older than the first sample has waited at least since that sample.

    >>> seconds_behind([(0.0, 100), (10.0, 200)], committed=149, now=30.0)
    25.0
    >>> seconds_behind([(0.0, 100), (10.0, 200)], committed=200, now=30.0)
    0.0
    """
    if not samples or committed >= samples[-1][1]:
        return 0.0
    i = bisect.bisect_right(samples, committed, key=lambda s: s[1])
    if i == 0:
        return max(now - samples[0][0], 0.0)
    (t0, e0), (t1, e1) = samples[i - 1], samples[i]
    # the end went from e0 (<= committed) to e1 (> committed): record `committed` arrived when
    # the end reached committed + 1
    arrived = t0 + (t1 - t0) * (committed + 1 - e0) / (e1 - e0)
    return max(now - arrived, 0.0)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    details: Mapping[str, object]


class Watchdog:
    """Two threads that watch :class:`Progress`: one for stuck operations and readiness, which
    never waits on anything; one for lag, which waits on the broker. ``offsets`` makes the
    lag thread's offset reader (it may wait for a broker to answer, and returns None if the
    event it is given is set first); None: no lag (a source that is not Kafka)."""

    def __init__(
        self,
        progress: Progress,
        metrics: StreamMetrics,
        offsets: Callable[[threading.Event], OffsetReader | None] | None = None,
        *,
        settings: LivenessSettings | None = None,
        stopping: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress, self.metrics = progress, metrics
        self.settings = settings or LivenessSettings()
        self._stopping = stopping or threading.Event()
        self._make_offsets = offsets
        self._offsets: OffsetReader | None = None
        self._clock = clock
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, name="liveness", daemon=True)]
        if offsets is not None:
            self._threads.append(
                threading.Thread(target=self._watch_lag, name="liveness-lag", daemon=True)
            )
        self._stuck: tuple[str, float] | None = None  # the operation reported stuck
        self._owned: frozenset[Partition] | None = None
        self._starts: dict[Partition, int] = {}  # where the group reads what it has not committed
        self._ends: dict[Partition, int] = {}
        self._history: dict[Partition, EndOffsetHistory] = {}
        self._lookup_failing = False
        self.last_check: float | None = None
        for operation in OPERATIONS:
            metrics.set_stuck(operation, 0.0)

    def start(self) -> Watchdog:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        """Stop both threads. Not waiting for a look-up the broker does not answer: the lag
        thread closes its client when that look-up returns."""
        self._stop.set()
        self.progress.changed.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=1.0)

    def _watch(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # the watchdog must outlive any one look; say why it failed
                log.exception("liveness check failed")
            if self._stop.wait(self.settings.interval_s):
                return

    def _watch_lag(self) -> None:
        assert self._make_offsets is not None
        # Not before the loop is in its group: until then the loop's own start-up lines say
        # what cannot be reached, and a second client retrying beside it would only repeat them.
        while self.progress.assignment is None:
            if self._stop.wait(self.settings.interval_s):
                return
        self._offsets = self._make_offsets(self._stop)  # None if stopped while connecting
        try:
            while self._offsets is not None and not self._stop.is_set():
                try:
                    self.check_lag()
                except Exception:
                    log.exception("lag check failed")
                self.progress.changed.wait(self.settings.interval_s)
                self.progress.changed.clear()
        finally:
            if self._offsets is not None:
                self._offsets.close()

    def check(self) -> None:
        """One look at the loop: stuck operations and readiness."""
        now = self._clock()
        self._check_operation(now)
        self.metrics.set_ready(self.readiness(now).ready)
        self.last_check = now

    def readiness(self, now: float | None = None) -> Readiness:
        """Ready: in the consumer group (partitions assigned, even none) and no operation
        running for longer than ``stuck_after_s``; not while shutting down."""
        p = self.progress
        now = self._clock() if now is None else now
        current = p.current
        running_s = now - current[1] if current is not None else 0.0
        stuck = current is not None and running_s >= self.settings.stuck_after_s
        in_group = p.assignment is not None
        details: dict[str, object] = {
            "in_group": in_group,
            "partitions": len(p.assignment or ()),
            "seconds_since_last_batch": round(now - (p.last_batch or p.started), 3),
        }
        if current is not None:
            details.update(operation=current[0], operation_seconds=round(running_s, 3))
        details["stuck"] = stuck
        return Readiness(in_group and not stuck and not self._stopping.is_set(), details)

    def probes(self) -> dict[str, Probe]:
        """``/ready`` and ``/health`` for the metrics endpoint."""

        def answer(check: Callable[[], Readiness]) -> Probe:
            def probe() -> tuple[bool, Mapping[str, object]]:
                result = check()
                return result.ready, result.details

            return probe

        return {"/ready": answer(self.readiness), "/health": answer(self.health)}

    def health(self) -> Readiness:
        """Alive: the watchdog's threads run, and it looked at the loop recently."""
        last = self.last_check
        recent = last is not None and self._clock() - last <= 3 * self.settings.interval_s + 1
        alive = all(thread.is_alive() for thread in self._threads)
        return Readiness(alive and recent, {"watchdog_alive": alive})

    def _check_operation(self, now: float) -> None:
        current = self.progress.current
        stuck_after = self.settings.stuck_after_s
        if self._stuck is not None and current is not self._stuck:
            operation, since = self._stuck
            finished = self.progress.finished
            if finished is not None and finished[:2] == (operation, since):
                took = finished[2] - since
            else:
                took = now - since
            log.info("consumer moving again: %s finished after %.1f s", OPERATIONS[operation], took)
            self.metrics.set_stuck(operation, 0.0)
            self._stuck = None
        if current is None:
            return
        operation, since = current
        running_s = now - since
        if running_s < stuck_after:
            return
        if self._stuck is None:
            log.warning(
                "consumer stuck: %s has been running for %.0f s (threshold %.0f s); nothing is "
                "committed until it finishes",
                OPERATIONS[operation],
                running_s,
                stuck_after,
            )
            self._stuck = current
        self.metrics.set_stuck(operation, running_s)

    def check_lag(self) -> None:
        """One look at the offsets: publish the lag of every partition the consumer owns."""
        owned, committed = self.progress.committed_offsets()
        partitions = sorted(owned or ())
        for gone in set(self._history) - set(partitions):
            del self._history[gone]
            self._ends.pop(gone, None)
        if owned != self._owned:  # a rebalance: where the group starts may have moved
            self._owned, self._starts = owned, {}
        if partitions:
            self._look_up(partitions, committed)
        now = self._clock()
        lags: dict[Partition, int] = {}
        waited: dict[Partition, float] = {}
        for partition in partitions:
            start = committed.get(partition, self._starts.get(partition))
            end = self._ends.get(partition)
            if start is None or end is None:
                continue
            history = self._history[partition]
            lags[partition] = max(end - start, 0)
            waited[partition] = seconds_behind(history.samples, start, now)
            history.forget_before(start)
        self.metrics.set_lags(lags, waited)

    def _look_up(self, partitions: list[Partition], committed: Mapping[Partition, int]) -> None:
        """End offsets of ``partitions``, and where the group starts those it has not committed
        since they were assigned; on failure keep the last answers (lag in seconds still grows:
        the records that waited still wait)."""
        assert self._offsets is not None
        try:
            ends = self._offsets.end_offsets(partitions)
            unknown = [p for p in partitions if p not in committed and p not in self._starts]
            if unknown:
                self._starts.update(self._offsets.start_offsets(unknown))
        except Exception as exc:  # any client failure: counted, logged once, retried next look
            self.metrics.lag_lookup_error()
            if not self._lookup_failing:
                log.warning("lag look-up failed (%s: %s); retrying", type(exc).__name__, exc)
            self._lookup_failing = True
            return
        if self._lookup_failing:
            log.info("lag look-ups work again")
        self._lookup_failing = False
        now = self._clock()
        for partition, end in ends.items():
            self._ends[partition] = end
            self._history.setdefault(partition, EndOffsetHistory()).add(now, end)
