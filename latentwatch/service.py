"""Wiring of the stream service: model, database, metrics endpoint, Kafka source and
dead-letter producer around :class:`streams.consumer.ConsumerLoop`. The CLI's `consume`
command, the demo and the benchmarks all start the consumer through :func:`run_consumer`."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from common.errors import LatentwatchError
from detector import artifact
from detector.detector import Detector
from latentwatch.settings import SHUTDOWN_TIMEOUT_S, ConsumeSettings
from lifecycle.follow import RegistryFollower, live_model
from storage.database import ensure_schema, make_engine, redact, session_factory
from storage.records import UnstorableRecordError
from streams.consumer import (
    BatchReport,
    ConsumerLoop,
    ModelSet,
    RunTotals,
    Unavailable,
)
from streams.kafka import (
    STARTUP_RETRY_INITIAL_S,
    STARTUP_RETRY_MAX_S,
    DeadLetterProducer,
    KafkaSource,
    connect,
    ensure_topics,
    make_producer,
)
from streams.liveness import OffsetReader, Progress, Watchdog
from streams.metrics import MetricsServer, StreamMetrics, serve_metrics
from streams.offsets import KafkaOffsets
from streams.retry import GaveUp, Stopped, retry_with_backoff
from streams.sql_sink import SqlSink

log = logging.getLogger("latentwatch.service")

EXIT_FORCED = 1  # the exit status of a shutdown that timed out


class StartupTimeoutError(LatentwatchError):
    """The database or Kafka could not be reached within the start-up timeout."""


def _until_ready(
    what: str, action: Callable[[], Any], stop: threading.Event, give_up_at: float | None
) -> Any:
    """Retry a start-up step that needs the database: one line per attempt, backed off. Only
    unreachability is retried (a server down, a database or role it does not have yet); a
    wrong schema or URL fails at once."""
    return retry_with_backoff(
        action,
        what,
        stop,
        retry_on=(OperationalError, InterfaceError, OSError, Unavailable),
        initial_s=STARTUP_RETRY_INITIAL_S,
        max_s=STARTUP_RETRY_MAX_S,
        give_up_at=give_up_at,
    )


@contextmanager
def stop_on_signals(stop: threading.Event, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the loop finishes its batch, commits, leaves the group. If
    that has not happened ``timeout_s`` later (a dependency that does not answer), or at a
    second signal, the process exits at once with nothing more committed: the batch in hand
    is redelivered to the group. Only in the main thread (a process of its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            _exit_now(f"received {name} again")
            return
        log.info("received %s: finishing the current batch (at most %.0f s)", name, timeout_s)
        stop.set()
        timer = threading.Timer(
            timeout_s, _exit_now, [f"still not stopped {timeout_s:.0f} s after {name}"]
        )
        timer.daemon = True
        timer.start()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _exit_now(why: str) -> None:
    """Leave without committing anything more: the group redelivers what was not committed,
    and the database rolls back a transaction whose connection is gone."""
    log.error("%s: exiting now; the batch in hand is left uncommitted for redelivery", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_FORCED)


def model_metrics(
    registry: CollectorRegistry,
    detector: Detector,
    manifest: Mapping[str, Any],
    topics: Iterable[str],
) -> StreamMetrics:
    """The consumer's metrics on ``registry``, describing the loaded model."""
    metrics = StreamMetrics(registry, topics=topics)
    metrics.set_model(
        detector.version,
        detector.schema.fingerprint(),
        manifest["created_at"],
        detector.calibrations.fpr,
        detector.cluster_shares.tolist(),
    )
    return metrics


def run_consumer(  # noqa: PLR0915  (the wiring, in start-up order, in one place)
    settings: ConsumeSettings,
    stop: threading.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    on_metrics: Callable[[MetricsServer], None] | None = None,
) -> RunTotals:
    """Consume until ``stop`` is set (or SIGTERM/SIGINT in the main thread)."""
    stop = stop or threading.Event()
    torch.set_num_threads(max(settings.torch_threads, 1))
    engine = make_engine(settings.db, settings.db_timeouts)
    try:
        models = _models(settings, engine, stop)
    except BaseException:
        engine.dispose()
        raise
    detector, manifest = models.live, models.manifest
    registry = registry or CollectorRegistry()
    metrics = model_metrics(registry, detector, manifest, settings.kafka.topics)
    follower: RegistryFollower | None = None
    progress = Progress()
    watchdog = Watchdog(
        progress, metrics, _offset_reader(settings), settings=settings.liveness, stopping=stop
    ).start()
    server = None
    source: KafkaSource | None = None
    dead_letters: DeadLetterProducer | None = None
    limit = settings.startup_timeout_s
    give_up_at = time.monotonic() + limit if limit > 0 else None
    try:
        with stop_on_signals(stop, settings.shutdown_timeout_s):
            server = _serve(settings, registry, watchdog, on_metrics)
            database = f"database {redact(settings.db)}"
            _until_ready(database, lambda: ensure_schema(engine), stop, give_up_at)
            sink = SqlSink(session_factory(engine), detector.version, manifest)
            _until_ready(database, sink.register_model, stop, give_up_at)
            kafka = settings.kafka
            source = KafkaSource(
                kafka,
                stop,
                on_revoked=metrics.rebalance,
                on_assignment=progress.assigned,
                give_up_at=give_up_at,
            )
            producer = connect(
                lambda clients: make_producer(kafka.bootstrap, kafka.extra, kafka_client=clients),
                "dead-letter producer",
                stop,
                bootstrap=kafka.bootstrap,
                give_up_at=give_up_at,
            )
            if not source.connected or producer is None:
                return RunTotals()
            dead_letters = DeadLetterProducer(producer, settings.deadletter_topic)
            _create_deadletter_topics(settings, dead_letters)
            log.info(
                "consuming %s as group %r with model %s; flagged records to %s",
                ", ".join(kafka.topics),
                kafka.group,
                detector.version,
                redact(settings.db),
            )
            if settings.registry is not None:
                follower = RegistryFollower(
                    session_factory(engine),
                    settings.registry,
                    models,
                    metrics,
                    interval_s=settings.registry_poll_s,
                ).start(stop)
            loop = ConsumerLoop(
                source,
                detector=detector,
                sink=sink,
                dead_letters=dead_letters,
                metrics=metrics,
                settings=settings.loop,
                on_batch=on_batch,
                progress=progress,
                shadow=models.shadow,
                models=follower,
                lifecycle_sink=sink,
            )
            freeze_startup_heap()
            started = time.monotonic()
            totals = loop.run(stop)
            _finish(sink, totals, time.monotonic() - started)
            return totals
    except Stopped as exc:
        log.info("stopped while waiting for %s", exc)
        return RunTotals()
    except GaveUp as exc:
        raise StartupTimeoutError(f"{exc} (--startup-timeout {limit:g} s)") from None
    finally:
        if source is not None:
            source.close()
        if dead_letters is not None:
            dead_letters.close()
        if server is not None:
            server.close()
        if follower is not None:
            follower.join()
        watchdog.close()
        engine.dispose()


def _models(settings: ConsumeSettings, engine: Engine, stop: threading.Event) -> ModelSet:
    """The model directory given, or the registry's live (and shadow) model of the topic."""
    if settings.registry is None:
        if settings.model is None:
            raise ConfigError(
                "no model: give --model DIR, or --registry TOPIC to follow the registry"
            )
        detector, manifest = artifact.load(settings.model)
        return ModelSet(detector, manifest)
    if settings.model is not None:
        raise ConfigError(
            "--model and --registry both given: a consumer follows the registry or scores with "
            "one model directory, not both"
        )
    scope = settings.registry
    sessions = session_factory(engine)

    def resolve() -> ModelSet:
        ensure_schema(engine)
        return live_model(sessions, scope)

    give_up_at = (
        time.monotonic() + settings.startup_timeout_s if settings.startup_timeout_s else None
    )
    try:
        models: ModelSet = _until_ready(
            f"the model registry in {redact(settings.db)}", resolve, stop, give_up_at
        )
    except GaveUp as exc:
        raise StartupTimeoutError(
            f"{exc} (--startup-timeout {settings.startup_timeout_s:g} s)"
        ) from None
    return models


class ConfigError(LatentwatchError):
    """Consumer settings that contradict each other or miss what is needed."""


def _finish(sink: SqlSink, totals: RunTotals, elapsed_s: float) -> None:
    """Write the last stream counts (best effort: the loop has stopped) and say what was done."""
    try:
        sink.flush()
    except (Unavailable, UnstorableRecordError) as exc:
        log.warning("stream counts of the last seconds not written: %s", exc)
    log.info(
        "stopped after %.1f s: %d consumed, %d flagged, %d rejected",
        elapsed_s,
        totals.consumed,
        totals.flagged,
        totals.rejected,
    )


def _serve(
    settings: ConsumeSettings,
    registry: CollectorRegistry,
    watchdog: Watchdog,
    on_metrics: Callable[[MetricsServer], None] | None,
) -> MetricsServer | None:
    """The metrics endpoint, with the watchdog's /ready and /health beside /metrics."""
    if settings.metrics_port is None:
        return None
    server = serve_metrics(
        registry, settings.metrics_host, settings.metrics_port, watchdog.probes()
    )
    log.info("metrics at %s (probes: %s/ready, %s/health)", server.url, *[server.base_url] * 2)
    if on_metrics is not None:
        on_metrics(server)
    return server


def _offset_reader(settings: ConsumeSettings) -> Callable[[threading.Event], OffsetReader | None]:
    """How the watchdog's lag thread makes its own Kafka client (waiting for a broker)."""
    kafka = settings.kafka

    def make(stop: threading.Event) -> OffsetReader | None:
        reader: OffsetReader | None = connect(
            lambda clients: KafkaOffsets(
                kafka.bootstrap,
                kafka.group,
                # lag against the last stable offset when only committed transactions count
                extra={**kafka.extra, "isolation_level": kafka.isolation_level},
                timeout_s=settings.liveness.lookup_timeout_s,
                kafka_client=clients,
            ),
            "lag look-ups",
            stop,
            bootstrap=kafka.bootstrap,
        )
        return reader

    return make


def _create_deadletter_topics(settings: ConsumeSettings, dead_letters: DeadLetterProducer) -> None:
    """Create missing dead-letter topics up front (broker defaults for partitions and
    replicas): with automatic topic creation off, as on most production clusters, the first
    rejected record would otherwise hold the stream until an operator creates the topic."""
    topics = sorted({dead_letters.topic_for(t) for t in settings.kafka.topics})
    try:
        created = ensure_topics(settings.kafka.bootstrap, topics, extra=settings.kafka.extra)
    except KafkaError as exc:
        log.warning(
            "could not check or create the dead-letter topic(s) %s (%s: %s): create them, or "
            "rejected records will wait, uncommitted, until they can be published",
            ", ".join(topics),
            type(exc).__name__,
            exc,
        )
        return
    if created:
        log.info("created dead-letter topic(s) %s", ", ".join(created))


def freeze_startup_heap() -> None:
    """Put everything alive before the loop starts (torch, the model, the clients) out of the
    cyclic garbage collector's reach. A batch's records live through a few young collections,
    so full collections come every few batches, and each would walk the whole start-up heap
    (torch's objects above all) for nothing. Frozen
    objects are still freed by reference counting; only cycles among them would never be."""
    gc.collect()
    gc.freeze()


class BackgroundConsumer:
    """:func:`run_consumer` in a thread of this process, with its own metrics registry: for the
    demo, the benchmarks and the tests. Use as a context manager; ``close`` stops it (finishing
    the batch, like SIGTERM) and re-raises whatever stopped it early."""

    def __init__(
        self,
        settings: ConsumeSettings,
        registry: CollectorRegistry | None = None,
        name: str = "consumer",
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.stop = threading.Event()
        self.reports: list[BatchReport] = []
        self.metrics_url: str | None = None
        self.totals: RunTotals | None = None
        self.error: BaseException | None = None
        self._serving = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.totals = run_consumer(
                self.settings,
                self.stop,
                registry=self.registry,
                on_batch=self.reports.append,
                on_metrics=self._on_metrics,
            )
        except BaseException as exc:  # surfaced by wait_for_metrics() and close()
            self.error = exc
        finally:
            self._serving.set()  # never leave wait_for_metrics() waiting on a dead thread

    def _on_metrics(self, server: MetricsServer) -> None:
        self.metrics_url = server.url
        self._serving.set()

    def start(self) -> BackgroundConsumer:
        self._thread.start()
        return self

    def wait_for_metrics(self, timeout_s: float = 30.0) -> str:
        """The metrics endpoint's URL, once it serves."""
        if not self._serving.wait(timeout_s):
            raise TimeoutError(f"the consumer served no metrics within {timeout_s} s")
        if self.metrics_url is None:
            raise RuntimeError(f"the consumer stopped before serving metrics: {self.error!r}")
        return self.metrics_url

    def wait_for_partitions(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until this member owns ``count`` partitions (records sent before the group join
        would otherwise count the join as latency)."""
        deadline = time.monotonic() + timeout_s
        while len(self.partitions()) < count:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"the consumer owned no {count} partitions in {timeout_s} s")
            time.sleep(0.05)

    def partitions(self) -> set[tuple[str, str]]:
        """(topic, partition) this member owns now: it publishes a lag series for each."""
        return {
            (s.labels["topic"], s.labels["partition"])
            for metric in self.registry.collect()
            if metric.name == "latentwatch_consumer_lag"
            for s in metric.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    @property
    def consumed(self) -> int:
        return sum(r.consumed for r in self.reports)

    def close(self, timeout_s: float = 30.0) -> RunTotals:
        self.stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the consumer did not stop within {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.totals or RunTotals()

    def __enter__(self) -> BackgroundConsumer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:  # already failing: stop, but do not mask the original error
            self.stop.set()
            self._thread.join(30)
            return
        self.close()
