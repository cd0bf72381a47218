"""Prometheus metrics of the stream consumer, created against an injected registry.

The consumer calls :class:`StreamMetrics` a few times per micro-batch, never per record: values
that come one per record (severity, scores, latencies) are observed in bulk from numpy arrays
by :class:`BatchHistogram`. Labels are low-cardinality only (topic, partition, reject reason,
cluster); never a record id. The metric table and the alerts built on it are in
docs/observability.md.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import HTTPServer
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from detector.drift import DEFAULT_WINDOW_S, DriftWindow
from streams import messages as reason_codes

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PREFIX = "latentwatch"

# The reason label's values: the decoder's reason codes, and "other" for anything else, so that
# a new code can never blow up the label cardinality.
REJECT_REASONS = (*reason_codes.REJECT_REASONS, "other")

# Ranges that cover incidents: anomalous records score tens of thousands of nats, and records
# wait minutes to an hour behind a stalled consumer. A value above the last bound is still
# counted (+Inf), but a quantile that lands there reads as the last bound.
SEVERITY_BUCKETS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
_LARGE_NATS = (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
SCORE_BUCKETS = (-10, 0, 5, 10, 20, 50, 100, 200, 500, *_LARGE_NATS)  # nats
DENSITY_BUCKETS = (-20, -10, -5, 0, 5, 10, 20, 50, 100, 500, *_LARGE_NATS)  # nats
RECONSTRUCTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, *_LARGE_NATS)  # nats
_MINUTES = (30, 60, 120, 300, 600, 1200, 1800, 3600)  # seconds, up to an hour
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, *_MINUTES)  # seconds
BATCH_DURATION_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    *_MINUTES,
)


class BatchHistogram:
    """An unlabelled histogram observed from whole arrays, for values that come one per record.

    ``prometheus_client.Histogram`` takes one value per call; this takes a batch with one
    ``np.searchsorted`` + ``np.bincount``. Buckets are upper bounds, inclusive (``le``), like
    Prometheus's; ``+Inf`` is appended. NaNs are ignored. Like prometheus_client's Histogram,
    ``_sum`` is only exposed when no bucket bound is negative. Registered on ``registry`` when
    created; thread-safe (the HTTP server collects from another thread).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = np.asarray(sorted(float(b) for b in buckets), dtype=np.float64)
        if len(bounds) == 0 or np.any(np.diff(bounds) <= 0) or np.any(np.isnan(bounds)):
            raise ValueError(f"{name}: buckets must be distinct numbers, got {list(buckets)}")
        if bounds[-1] != np.inf:
            bounds = np.append(bounds, np.inf)
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._labels = [floatToGoString(b) for b in bounds]
        self._counts = np.zeros(len(bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if len(v) == 0:
            return
        # side="left": the first bound >= v, i.e. v falls in the bucket le=bound.
        counts = np.bincount(
            np.searchsorted(self._bounds, v, side="left"), minlength=len(self._bounds)
        )
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation, labels=[])
        buckets = [(le, float(c)) for le, c in zip(self._labels, cumulative, strict=True)]
        family.add_metric([], buckets, None)
        # As prometheus_client's Histogram: _count always, _sum only without negative buckets
        # (a sum that can go down would be misread as a counter reset by rate()).
        # HistogramMetricFamily would drop _count too, so both are added here.
        family.add_sample(f"{self.name}_count", {}, float(cumulative[-1]))
        if self._bounds[0] >= 0:
            family.add_sample(f"{self.name}_sum", {}, total)
        return [family]


# A probe answers (healthy, details): HTTP 200 or 503 with the details as JSON.
Probe = Callable[[], tuple[bool, Mapping[str, object]]]


@dataclass(frozen=True)
class MetricsServer:
    """The /metrics HTTP endpoint (and the probes served beside it); ``close()`` stops it."""

    server: HTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"{self.base_url}/metrics"

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        host = cast(str, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not worth a log line each."""


def _app(registry: CollectorRegistry, probes: Mapping[str, Probe]) -> WSGIApplication:
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)
        healthy, details = probe()
        body = json.dumps({"ok": healthy, **details}).encode()
        status = "200 OK" if healthy else "503 Service Unavailable"
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        start_response(status, headers)
        return [body]

    return app


def serve_metrics(
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = 9464,
    probes: Mapping[str, Probe] | None = None,
) -> MetricsServer:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread, and each of
    ``probes`` at its path (e.g. ``/ready``: 200 when healthy, else 503, details as JSON). Port 0
    picks a free port: read it back from ``.url``."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_FamilyServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(
        host, port, _app(registry, probes or {}), server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


class StreamMetrics:
    """All consumer metrics on one registry. Thin: counting and bucketing only.

    Call :meth:`set_model` once the model is loaded (and again after a model swap) before
    :meth:`record_scores`. Topics given here (or first seen later) get their counters created at
    0, so ``rate()`` and ``increase()`` see the first records too. Per micro-batch::

        metrics.record_consumed(topic, len(messages))
        metrics.record_rejects(topic, {"not_json": 2})
        metrics.record_scores(topic, score=..., flagged=..., severity=..., density=...,
                              reconstruction=..., clusters=..., p_values=...)
        # ... flagged rows written ...
        metrics.record_persisted(topic, event_times_s, now_s=clock())
        metrics.batch_done(duration_s, now_s=clock())

    The liveness watchdog (streams/liveness.py) publishes lag, stuck operations and readiness
    from its own thread. The registry also gets the process and platform collectors
    (``process_*``, ``python_info``): restarts, memory, CPU, open files.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        topics: Iterable[str] = (),
        drift_window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        r = registry
        p = PREFIX
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._drift_window_s = drift_window_s
        self._clock = clock  # the drift window's time
        self._drift: DriftWindow | None = None
        self._topics: set[str] = set()
        self._newest_event_s: dict[str, float] = {}

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(f"{p}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(f"{p}_{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> BatchHistogram:
            return BatchHistogram(f"{p}_{name}", doc, buckets, r)

        by_topic = ["topic"]
        self._consumed = counter("records_consumed", "Records polled from Kafka.", by_topic)
        self._scored = counter("records_scored", "Records the detector scored.", by_topic)
        self._flagged = counter(
            "records_flagged", "Scored records above the model's alarm threshold.", by_topic
        )
        self._rejected = counter(
            "records_rejected",
            "Consumed records that could not be scored or stored, by reason code.",
            ["topic", "reason"],
        )
        self._deadletter_errors = counter(
            "deadletter_errors", "Failures to publish a rejected record to the dead-letter topic."
        )
        self._db_write_errors = counter(
            "db_write_errors", "Failed database writes of a batch of flagged records."
        )
        self._db_write_retries = counter("db_write_retries", "Retries of a batch's database write.")
        self._poll_errors = counter(
            "poll_errors", "Polls of Kafka that failed (retried with backoff, nothing skipped)."
        )
        self._commit_failures = counter(
            "commit_failures", "Kafka offset commits that failed (the batch is redelivered)."
        )
        self._rebalances = counter("rebalances", "Consumer-group rebalances (partitions revoked).")

        self._severity = histogram(
            "severity", "Severity 0-100 of scored records.", SEVERITY_BUCKETS
        )
        self._score = histogram(
            "score_nats",
            "Anomaly score (density + reconstruction), nats; higher = more anomalous.",
            SCORE_BUCKETS,
        )
        self._density = histogram(
            "latent_density_nats",
            "-log p(z) of the latent code under the reference mixture, nats.",
            DENSITY_BUCKETS,
        )
        self._reconstruction = histogram(
            "reconstruction_nats",
            "-log p(x|z), the reconstruction term, nats.",
            RECONSTRUCTION_BUCKETS,
        )
        self._latency = histogram(
            "end_to_end_latency_seconds",
            "Kafka message timestamp to its batch being persisted.",
            LATENCY_BUCKETS,
        )
        self._batch_duration = Histogram(
            f"{p}_batch_duration_seconds",
            "Wall time to process one micro-batch.",
            buckets=BATCH_DURATION_BUCKETS,
            registry=r,
        )

        by_partition = ["topic", "partition"]
        self._lag = gauge(
            "consumer_lag",
            "Records of the partition not yet committed by the group: end offset - committed.",
            by_partition,
        )
        self._lag_seconds = gauge(
            "consumer_lag_seconds",
            "How long the partition's next uncommitted record has waited (0: nothing waits).",
            by_partition,
        )
        self._lag_series: set[tuple[str, str]] = set()
        self._lag_lookup_errors = counter(
            "lag_lookup_errors",
            "Failed look-ups of end or committed offsets (lag keeps its last value).",
        )
        self._stuck = gauge(
            "operation_stuck_seconds",
            "How long the loop's current operation has been running, once past the stuck "
            "threshold; 0 otherwise.",
            ["operation"],
        )
        self._ready = gauge(
            "ready", "1 when the consumer is in its group and no operation is stuck, else 0."
        )
        self._last_record_time = gauge(
            "last_record_timestamp_seconds",
            "Newest Kafka message timestamp processed, Unix seconds.",
            by_topic,
        )
        self._last_batch_time = gauge(
            "last_batch_timestamp_seconds",
            "Wall clock of the last committed batch (or of the start, before any), Unix seconds.",
        )
        self._last_batch_time.set(time.time())
        self._false_alarm_rate = gauge(
            "model_false_alarm_rate", "The model's calibrated target false-alarm rate."
        )
        self._cluster_share = gauge(
            "cluster_share",
            "Share of the drift window's records nearest each reference cluster.",
            ["cluster"],
        )
        self._reference_share = gauge(
            "reference_cluster_share",
            "Share of reference records per cluster (the mixture weight).",
            ["cluster"],
        )
        self._drift_psi = gauge(
            "drift_psi", "Population stability index of the window's cluster shares."
        )
        self._drift_surprise = gauge(
            "drift_mean_surprise", "Mean -ln(p_value) over the drift window; 1.0 under reference."
        )
        self._drift_records = gauge(
            "drift_window_records", "Records scored in the drift window (its last ten minutes)."
        )
        self._model = Info(f"{p}_model", "The loaded model.", registry=r)
        self._lifecycle_metrics(counter, gauge)

        for topic in topics:
            self._add_topic(topic)

    def _lifecycle_metrics(
        self, counter: Callable[..., Counter], gauge: Callable[..., Gauge]
    ) -> None:
        """Metrics per model role and version, and of the registry's model changes."""
        by_model = ["topic", "role", "version"]
        self._model_scored = counter(
            "model_records_scored",
            "Records scored, by model role (live, shadow) and version.",
            by_model,
        )
        self._model_flagged = counter(
            "model_records_flagged",
            "Records flagged, by model role and version; shadow flags never alert.",
            by_model,
        )
        self._model_role = gauge(
            "model_role",
            "1 for the model version the consumer uses in each role.",
            ["role", "version"],
        )
        self._model_switches = counter(
            "model_switches",
            "Model changes taken from the registry, between two batches.",
            ["role"],
        )
        self._model_load_failures = counter(
            "model_load_failures",
            "Registry models this consumer could not load or use (it kept the model it had).",
            ["role"],
        )
        self._model_load_failing = gauge(
            "model_load_failing",
            "1 while the registry's model for the role cannot be loaded here.",
            ["role", "version"],
        )

    def _add_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        self._topics.add(topic)
        for counter in (self._consumed, self._scored, self._flagged):
            counter.labels(topic=topic)
        for reason in REJECT_REASONS:
            self._rejected.labels(topic=topic, reason=reason)

    def set_model(
        self,
        version: str,
        schema_fingerprint: str,
        created_at: str,
        fpr: float,
        reference_cluster_shares: Sequence[float],
    ) -> None:
        """Describe the loaded model and restart the drift window against its clusters."""
        self._model.info(
            {"version": version, "schema": schema_fingerprint, "created_at": created_at}
        )
        self._false_alarm_rate.set(fpr)
        self._drift = DriftWindow(reference_cluster_shares, self._drift_window_s)
        self._reference_share.clear()
        self._cluster_share.clear()
        for k, share in enumerate(self._drift.reference_shares):
            self._reference_share.labels(cluster=str(k)).set(share)
        self._publish_drift(self._drift)

    def set_roles(self, live: str, shadow: str | None) -> None:
        """The versions in use: live, and shadow (None: no shadow model)."""
        self._model_role.clear()
        self._model_role.labels(role="live", version=live).set(1)
        if shadow is not None:
            self._model_role.labels(role="shadow", version=shadow).set(1)

    def model_switched(self, role: str) -> None:
        self._model_switches.labels(role=role).inc()

    def model_load_failed(self, role: str, version: str) -> None:
        self._model_load_failures.labels(role=role).inc()
        self._model_load_failing.labels(role=role, version=version).set(1)

    def model_load_cleared(self) -> None:
        """The registry's models are in use (or were withdrawn): nothing is failing."""
        self._model_load_failing.clear()

    def record_model(self, topic: str, role: str, version: str, scored: int, flagged: int) -> None:
        self._model_scored.labels(topic=topic, role=role, version=version).inc(scored)
        self._model_flagged.labels(topic=topic, role=role, version=version).inc(flagged)

    def record_consumed(self, topic: str, count: int) -> None:
        self._add_topic(topic)
        self._consumed.labels(topic=topic).inc(count)

    def record_rejects(self, topic: str, counts_by_reason: Mapping[str, int]) -> None:
        """Count rejected records by reason code; codes outside REJECT_REASONS count as other."""
        self._add_topic(topic)
        for reason, count in counts_by_reason.items():
            label = reason if reason in REJECT_REASONS else "other"
            self._rejected.labels(topic=topic, reason=label).inc(count)

    def record_scores(
        self,
        topic: str,
        *,
        score: np.ndarray,
        flagged: np.ndarray,
        severity: np.ndarray,
        density: np.ndarray,
        reconstruction: np.ndarray,
        clusters: np.ndarray,
        p_values: np.ndarray,
    ) -> None:
        """One scored batch, one array entry per record. Rows with a NaN score (the detector's
        marker for a row it could not score) are not counted as scored; the histograms ignore
        NaNs and the drift window ignores cluster -1."""
        if self._drift is None:
            raise RuntimeError(
                "StreamMetrics has no model: call set_model() before record_scores()"
            )
        self._add_topic(topic)
        self._scored.labels(topic=topic).inc(int(np.count_nonzero(~np.isnan(score))))
        self._flagged.labels(topic=topic).inc(int(np.count_nonzero(flagged)))
        self._score.observe_many(score)
        self._severity.observe_many(severity)
        self._density.observe_many(density)
        self._reconstruction.observe_many(reconstruction)
        self._drift.add(clusters, p_values, self._clock())
        self._publish_drift(self._drift)

    def _publish_drift(self, window: DriftWindow) -> None:
        snap = window.snapshot()
        for k, share in enumerate(snap.cluster_shares):
            self._cluster_share.labels(cluster=str(k)).set(share)
        self._drift_psi.set(snap.psi)
        self._drift_surprise.set(snap.mean_surprise)
        self._drift_records.set(snap.records)

    def record_persisted(self, topic: str, event_times_s: np.ndarray, now_s: float) -> None:
        """The batch's records are persisted (flagged rows written, offsets about to commit):
        observe message timestamp → now latencies and advance the newest timestamp. NaN timestamps
        (records without a timestamp) are ignored."""
        times = np.asarray(event_times_s, dtype=np.float64)
        times = times[~np.isnan(times)]
        if len(times) == 0:
            return
        self._add_topic(topic)
        self._latency.observe_many(now_s - times)
        newest = max(float(times.max()), self._newest_event_s.get(topic, -np.inf))
        self._newest_event_s[topic] = newest
        self._last_record_time.labels(topic=topic).set(newest)

    def batch_done(self, duration_s: float, now_s: float) -> None:
        """A batch was committed. Only committed batches advance the last-batch time, not empty
        polls: a quiet stream is told from a stalled consumer by its lag (nothing waits)."""
        self._batch_duration.observe(duration_s)
        self._last_batch_time.set(now_s)

    def set_lags(
        self,
        lags: Mapping[tuple[str, int], int],
        lag_seconds: Mapping[tuple[str, int], float],
    ) -> None:
        """Lag in records and seconds of every partition this consumer owns now (the keys of
        ``lags``), and no series for any other: a partition handed to another member must not
        keep a frozen series here. Called from the liveness watchdog's thread only."""
        owned = {(topic, str(partition)) for topic, partition in lags}
        for labels in self._lag_series - owned:
            self._lag.remove(*labels)
            self._lag_seconds.remove(*labels)
        for (topic, partition), lag in lags.items():
            self._lag.labels(topic, str(partition)).set(lag)
            waited = lag_seconds.get((topic, partition), 0.0)
            self._lag_seconds.labels(topic, str(partition)).set(waited)
        self._lag_series = owned

    def lag_lookup_error(self) -> None:
        self._lag_lookup_errors.inc()

    def set_stuck(self, operation: str, seconds: float) -> None:
        self._stuck.labels(operation=operation).set(seconds)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1.0 if ready else 0.0)

    def db_write_error(self) -> None:
        self._db_write_errors.inc()

    def db_write_retry(self) -> None:
        self._db_write_retries.inc()

    def deadletter_error(self) -> None:
        self._deadletter_errors.inc()

    def poll_error(self) -> None:
        self._poll_errors.inc()

    def commit_failure(self) -> None:
        self._commit_failures.inc()

    def rebalance(self) -> None:
        """Partitions were revoked (the lag series follow at the watchdog's next look)."""
        self._rebalances.inc()
