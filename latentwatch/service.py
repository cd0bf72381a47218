"""Wiring of the stream service: model, database, metrics endpoint, Kafka source and
dead-letter producer around :class:`streams.consumer.ConsumerLoop`. The CLI's `consume`
command, the demo and the benchmarks all start the consumer through :func:`run_consumer`."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import InterfaceError, OperationalError

from detector import artifact
from storage.database import ensure_schema, make_engine, redact, session_factory
from streams.consumer import BatchReport, ConsumerLoop, LoopSettings, RunTotals, Unavailable
from streams.kafka import DeadLetterProducer, KafkaSettings, KafkaSource, connect, make_producer
from streams.messages import DecodePolicy
from streams.metrics import MetricsServer, StreamMetrics, serve_metrics
from streams.sql_sink import SqlSink

log = logging.getLogger("latentwatch.service")


@dataclass(frozen=True)
class ConsumeSettings:
    model: Path
    bootstrap: str
    topics: tuple[str, ...]
    db: str
    group: str = "latentwatch"
    deadletter_topic: str | None = None  # None: <topic>.deadletter
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9464  # None: no endpoint; 0: any free port
    max_records: int = 2000
    poll_timeout_s: float = 0.5
    session_timeout_ms: int = 6000
    max_message_bytes: int = 1_048_576
    required_fields: tuple[str, ...] = ()
    schema_versions: tuple[str, ...] = ()
    kafka_options: Mapping[str, Any] = field(default_factory=dict)
    torch_threads: int = 1  # micro-batches are small: one thread is fastest, and leaves cores free


def _until_ready(what: str, action: Callable[[], Any], stop: threading.Event) -> Any:
    """Retry a start-up step that needs the database with backoff and one clear log line per
    try. Only unreachability is retried; a wrong schema or URL fails at once."""
    delay = 0.5
    while True:
        try:
            return action()
        except (OperationalError, InterfaceError, OSError, Unavailable) as exc:
            if stop.is_set():
                raise
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s not ready (%s); retrying in %.1f s", what, first_line, delay)
            if stop.wait(delay):
                raise
            delay = min(delay * 2, 10.0)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the loop finishes its batch, commits, leaves the group."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_consumer(
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
    detector, manifest = artifact.load(settings.model)
    engine = make_engine(settings.db)
    registry = registry or CollectorRegistry()
    metrics = StreamMetrics(registry, topics=settings.topics)
    metrics.set_model(
        detector.version,
        detector.schema.fingerprint(),
        manifest["created_at"],
        detector.calibrations.fpr,
        detector.cluster_shares.tolist(),
    )
    server = None
    source: KafkaSource | None = None
    dead_letters: DeadLetterProducer | None = None
    try:
        with stop_on_signals(stop):
            if settings.metrics_port is not None:
                server = serve_metrics(registry, settings.metrics_host, settings.metrics_port)
                log.info("metrics at %s", server.url)
                if on_metrics is not None:
                    on_metrics(server)
            _until_ready(f"database {redact(settings.db)}", lambda: ensure_schema(engine), stop)
            sink = SqlSink(session_factory(engine), detector.version, manifest)
            _until_ready("database", sink.register_model, stop)
            kafka = KafkaSettings(
                bootstrap=settings.bootstrap,
                group=settings.group,
                topics=settings.topics,
                session_timeout_ms=settings.session_timeout_ms,
                extra=dict(settings.kafka_options),
            )
            source = KafkaSource(kafka, stop, on_revoked=metrics.rebalance)
            producer = connect(
                lambda: make_producer(settings.bootstrap, settings.kafka_options),
                "dead-letter producer",
                stop,
            )
            if not source.connected or producer is None:
                return RunTotals()
            dead_letters = DeadLetterProducer(producer, settings.deadletter_topic)
            loop_settings = LoopSettings(
                poll_timeout_s=settings.poll_timeout_s,
                max_records=settings.max_records,
                policy=DecodePolicy(
                    max_bytes=settings.max_message_bytes,
                    required_fields=settings.required_fields,
                    schema_versions=settings.schema_versions,
                ),
            )
            log.info(
                "consuming %s as group %r with model %s; flagged records to %s",
                ", ".join(settings.topics),
                settings.group,
                detector.version,
                redact(settings.db),
            )
            loop = ConsumerLoop(
                source,
                detector=detector,
                sink=sink,
                dead_letters=dead_letters,
                metrics=metrics,
                settings=loop_settings,
                on_batch=on_batch,
            )
            started = time.monotonic()
            totals = loop.run(stop)
            log.info(
                "stopped after %.1f s: %d consumed, %d flagged, %d rejected",
                time.monotonic() - started,
                totals.consumed,
                totals.flagged,
                totals.rejected,
            )
            return totals
    finally:
        if source is not None:
            source.close()
        if dead_letters is not None:
            dead_letters.close()
        if server is not None:
            server.close()
        engine.dispose()
