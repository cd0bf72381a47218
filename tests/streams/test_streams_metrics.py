"""StreamMetrics and BatchHistogram, each test on a fresh registry."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString

from streams.metrics import BatchHistogram, StreamMetrics, serve_metrics

TOPIC = "records"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


class Clock:
    """A clock the test moves (the drift window's time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: Clock) -> StreamMetrics:
    m = StreamMetrics(registry, topics=[TOPIC], drift_window_s=60.0, clock=clock)
    m.set_model("v1abc", "schema9", "2026-11-01T00:00:00Z", 0.01, [0.5, 0.3, 0.2])
    return m


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def scores(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    score = rng.normal(10, 5, n)
    return {
        "score": score,
        "flagged": score > 18,
        "severity": rng.uniform(0, 100, n),
        "density": rng.normal(0, 5, n),
        "reconstruction": rng.exponential(10, n),
        "clusters": rng.integers(0, 3, n),
        "p_values": rng.uniform(size=n),
    }


@pytest.mark.parametrize("buckets", [(0.0, 1.0, 2.0, 5.0, 10.0), (-10.0, -1.0, 0.0, 5.0)])
@pytest.mark.parametrize(
    "values",
    [
        np.array([-1.0, 0.0, 0.5, 1.0, 1.0, 2.0, 9.99, 10.0, 10.01, 1e9, np.inf]),
        np.array([-np.inf, -10.0, -10.5, 3.0]),
        np.random.default_rng(0).normal(3, 4, 1000),
        np.array([]),
    ],
)
def test_batch_histogram_matches_prometheus_histogram(
    values: np.ndarray, buckets: tuple[float, ...]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("h", "test", buckets, ours)
    reference = Histogram("h", "test", buckets=buckets, registry=theirs)
    batch.observe_many(values[: len(values) // 2])
    batch.observe_many(values[len(values) // 2 :])
    for v in values:
        reference.observe(v)
    for le in [*buckets, math.inf]:
        labels = {"le": floatToGoString(le)}
        assert ours.get_sample_value("h_bucket", labels) == theirs.get_sample_value(
            "h_bucket", labels
        ), le
    assert ours.get_sample_value("h_count") == theirs.get_sample_value("h_count")
    ours_sum, theirs_sum = ours.get_sample_value("h_sum"), theirs.get_sample_value("h_sum")
    assert (ours_sum is None) == (theirs_sum is None) == (buckets[0] < 0)
    if ours_sum is not None:
        assert ours_sum == pytest.approx(theirs_sum)


def test_batch_histogram_ignores_nans(registry: CollectorRegistry) -> None:
    h = BatchHistogram("h", "test", (1.0,), registry)
    h.observe_many(np.array([0.5, np.nan, 3.0]))
    assert registry.get_sample_value("h_count") == 2
    assert registry.get_sample_value("h_sum") == 3.5
    assert registry.get_sample_value("h_bucket", {"le": "1.0"}) == 1
    assert registry.get_sample_value("h_bucket", {"le": "+Inf"}) == 2


def test_batch_histogram_name_clash_is_detected(registry: CollectorRegistry) -> None:
    BatchHistogram("h", "test", (1.0,), registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("h", "test", registry=registry)


def test_nothing_is_registered_on_the_default_registry(metrics: StreamMetrics) -> None:
    assert REGISTRY.get_sample_value("latentwatch_drift_psi") is None


def test_topic_counters_start_at_zero(registry: CollectorRegistry, metrics: StreamMetrics) -> None:
    for name in ("consumed", "scored", "flagged"):
        assert value(registry, f"latentwatch_records_{name}_total", topic=TOPIC) == 0
    assert (
        value(registry, "latentwatch_records_rejected_total", topic=TOPIC, reason="not_json") == 0
    )


def test_record_scores_counts_and_buckets(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    rng = np.random.default_rng(1)
    batch = scores(50, rng)
    batch["score"][:3] = np.nan  # rows the detector could not score
    batch["severity"][:3] = np.nan
    batch["clusters"][:3] = -1
    metrics.record_consumed(TOPIC, 55)
    metrics.record_scores(TOPIC, **batch)
    assert value(registry, "latentwatch_records_consumed_total", topic=TOPIC) == 55
    assert value(registry, "latentwatch_records_scored_total", topic=TOPIC) == 47
    flagged = int(np.count_nonzero(batch["flagged"]))
    assert value(registry, "latentwatch_records_flagged_total", topic=TOPIC) == flagged
    assert value(registry, "latentwatch_severity_count") == 47
    below_50 = int(np.count_nonzero(batch["severity"][3:] <= 50))
    assert value(registry, "latentwatch_severity_bucket", le="50.0") == below_50
    assert value(registry, "latentwatch_reconstruction_nats_sum") == pytest.approx(
        np.sum(batch["reconstruction"])
    )
    assert value(registry, "latentwatch_score_nats_count") == 47
    assert value(registry, "latentwatch_latent_density_nats_count") == 50
    assert value(registry, "latentwatch_reconstruction_nats_bucket", le="+Inf") == 50
    assert value(registry, "latentwatch_drift_window_records") == 47


def test_drift_gauges_follow_the_window(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    assert value(registry, "latentwatch_drift_window_records") == 0
    assert math.isnan(value(registry, "latentwatch_drift_mean_surprise") or 0.0)
    assert value(registry, "latentwatch_reference_cluster_share", cluster="2") == 0.2
    n = 100
    metrics.record_scores(
        TOPIC,
        score=np.full(n, 50.0),
        flagged=np.ones(n, dtype=bool),
        severity=np.full(n, 99.0),
        density=np.full(n, 30.0),
        reconstruction=np.full(n, 20.0),
        clusters=np.full(n, 2),  # everything lands in the smallest cluster
        p_values=np.full(n, 1e-6),
    )
    assert value(registry, "latentwatch_cluster_share", cluster="2") == 1.0
    assert value(registry, "latentwatch_cluster_share", cluster="0") == 0.0
    assert (value(registry, "latentwatch_drift_psi") or 0.0) > 0.25
    assert value(registry, "latentwatch_drift_mean_surprise") == pytest.approx(-math.log(1e-6))


def test_set_model_exposes_info_and_resets_clusters(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    info = {"version": "v1abc", "schema": "schema9", "created_at": "2026-11-01T00:00:00Z"}
    assert value(registry, "latentwatch_model_info", **info) == 1
    assert value(registry, "latentwatch_model_false_alarm_rate") == 0.01
    metrics.set_model("v2", "schema9", "2026-11-02T00:00:00Z", 0.05, [1.0, 1.0])
    assert value(registry, "latentwatch_model_false_alarm_rate") == 0.05
    assert value(registry, "latentwatch_reference_cluster_share", cluster="1") == 0.5
    assert value(registry, "latentwatch_reference_cluster_share", cluster="2") is None
    assert value(registry, "latentwatch_cluster_share", cluster="2") is None


def test_record_scores_without_a_model_names_the_remedy(registry: CollectorRegistry) -> None:
    metrics = StreamMetrics(registry)
    with pytest.raises(RuntimeError, match="call set_model"):
        metrics.record_scores(TOPIC, **scores(3, np.random.default_rng(0)))


def test_rejects_by_reason_with_unknown_codes_as_other(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    metrics.record_rejects(TOPIC, {"not_json": 3, "wrong_type": 1})
    metrics.record_rejects(TOPIC, {"not_json": 2, "some new code": 4})
    rejected = "latentwatch_records_rejected_total"
    assert value(registry, rejected, topic=TOPIC, reason="not_json") == 5
    assert value(registry, rejected, topic=TOPIC, reason="wrong_type") == 1
    assert value(registry, rejected, topic=TOPIC, reason="other") == 4
    assert value(registry, rejected, topic=TOPIC, reason="some new code") is None


def test_persisted_latency_and_newest_event_time(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    now = 1_800_000_000.0
    metrics.record_persisted(TOPIC, np.array([now - 0.003, now - 0.2, np.nan, now - 30]), now)
    assert value(registry, "latentwatch_end_to_end_latency_seconds_count") == 3
    assert value(registry, "latentwatch_end_to_end_latency_seconds_bucket", le="0.005") == 1
    assert value(registry, "latentwatch_end_to_end_latency_seconds_bucket", le="0.25") == 2
    last = "latentwatch_last_record_timestamp_seconds"
    assert value(registry, last, topic=TOPIC) == now - 0.003
    metrics.record_persisted(TOPIC, np.array([now - 100]), now + 1)  # a late partition
    assert value(registry, last, topic=TOPIC) == now - 0.003  # never moves back


def test_the_last_batch_time_starts_at_the_start_and_follows_committed_batches(
    registry: CollectorRegistry,
) -> None:
    before = time.time()
    metrics = StreamMetrics(registry)
    started = value(registry, "latentwatch_last_batch_timestamp_seconds")
    assert started is not None and before <= started <= time.time()  # not 1970: not 56 years
    metrics.batch_done(0.02, now_s=started + 10)
    assert value(registry, "latentwatch_last_batch_timestamp_seconds") == started + 10
    assert value(registry, "latentwatch_batch_duration_seconds_count") == 1
    assert value(registry, "latentwatch_batch_duration_seconds_bucket", le="0.025") == 1
    assert value(registry, "latentwatch_batch_duration_seconds_bucket", le="0.01") == 0


def test_lag_series_follow_the_assignment(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    metrics.set_lags({(TOPIC, 0): 120, (TOPIC, 3): 7}, {(TOPIC, 0): 4.5})
    assert value(registry, "latentwatch_consumer_lag", topic=TOPIC, partition="3") == 7
    assert value(registry, "latentwatch_consumer_lag_seconds", topic=TOPIC, partition="0") == 4.5
    assert value(registry, "latentwatch_consumer_lag_seconds", topic=TOPIC, partition="3") == 0
    metrics.rebalance()
    assert value(registry, "latentwatch_rebalances_total") == 1
    # after the rebalance this member owns 1 and 3: partition 0 must not keep a frozen series
    metrics.set_lags({(TOPIC, 1): 4, (TOPIC, 3): 9}, {(TOPIC, 1): 2.0})
    for name in ("latentwatch_consumer_lag", "latentwatch_consumer_lag_seconds"):
        assert value(registry, name, topic=TOPIC, partition="0") is None
    assert value(registry, "latentwatch_consumer_lag", topic=TOPIC, partition="1") == 4
    assert value(registry, "latentwatch_consumer_lag", topic=TOPIC, partition="3") == 9
    metrics.set_lags({}, {})  # every partition revoked
    assert value(registry, "latentwatch_consumer_lag", topic=TOPIC, partition="3") is None
    assert value(registry, "latentwatch_consumer_lag_seconds", topic=TOPIC, partition="1") is None


def test_stuck_operations_readiness_and_lookup_errors(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    assert value(registry, "latentwatch_ready") == 0  # not consuming yet
    metrics.set_ready(True)
    assert value(registry, "latentwatch_ready") == 1
    metrics.set_stuck("db_write", 12.5)
    assert value(registry, "latentwatch_operation_stuck_seconds", operation="db_write") == 12.5
    metrics.lag_lookup_error()
    assert value(registry, "latentwatch_lag_lookup_errors_total") == 1


def test_histograms_cover_incident_ranges(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    """Scores of tens of thousands of nats and latencies of minutes land in finite buckets, so
    a p99 during an incident reads the value, not the old top bound (5000 nats, 60 s)."""
    n = 4
    metrics.record_scores(
        TOPIC,
        score=np.array([75_829.0, 7000.0, 10.0, 90_000.0]),
        flagged=np.ones(n, dtype=bool),
        severity=np.full(n, 99.0),
        density=np.array([60_000.0, 1.0, 1.0, 1.0]),
        reconstruction=np.array([15_829.0, 1.0, 1.0, 1.0]),
        clusters=np.zeros(n, dtype=int),
        p_values=np.full(n, 1e-6),
    )
    score = "latentwatch_score_nats_bucket"
    assert value(registry, score, le="5000.0") == 1
    assert value(registry, score, le="10000.0") == 2
    assert value(registry, score, le="50000.0") == 2
    assert value(registry, score, le="100000.0") == 4
    assert value(registry, "latentwatch_latent_density_nats_bucket", le="100000.0") == 4
    assert value(registry, "latentwatch_reconstruction_nats_bucket", le="20000.0") == 4
    now = 1_800_000_000.0
    metrics.record_persisted(TOPIC, np.array([now - 11 * 60, now - 59 * 60, now - 0.01]), now)
    latency = "latentwatch_end_to_end_latency_seconds_bucket"
    assert value(registry, latency, le="60.0") == 1
    assert value(registry, latency, le="1200.0") == 2
    assert value(registry, latency, le="3600.0") == 3
    metrics.batch_done(11 * 60, now_s=now)
    assert value(registry, "latentwatch_batch_duration_seconds_bucket", le="1200.0") == 1
    assert value(registry, "latentwatch_batch_duration_seconds_bucket", le="600.0") == 0


def test_process_and_platform_metrics_are_registered(
    registry: CollectorRegistry, metrics: StreamMetrics
) -> None:
    """Restarts, memory and CPU can be watched (the collectors read /proc on Linux)."""
    start = value(registry, "process_start_time_seconds")
    assert start is not None and 0 < start <= time.time()
    assert (value(registry, "process_resident_memory_bytes") or 0) > 0
    assert value(registry, "process_cpu_seconds_total") is not None
    names = {family.name for family in registry.collect()}
    assert "python_info" in names


def test_the_drift_window_is_in_time(
    registry: CollectorRegistry, metrics: StreamMetrics, clock: Clock
) -> None:
    batch = scores(30, np.random.default_rng(5))
    metrics.record_scores(TOPIC, **batch)
    assert value(registry, "latentwatch_drift_window_records") == 30
    clock.now += 30
    metrics.record_scores(TOPIC, **batch)
    assert value(registry, "latentwatch_drift_window_records") == 60
    clock.now += 31  # the first batch is now 61 s old: out of the 60 s window
    metrics.record_scores(TOPIC, **batch)
    assert value(registry, "latentwatch_drift_window_records") == 60


def test_error_counters(registry: CollectorRegistry, metrics: StreamMetrics) -> None:
    metrics.db_write_error()
    metrics.db_write_retry()
    metrics.db_write_retry()
    metrics.deadletter_error()
    metrics.commit_failure()
    assert value(registry, "latentwatch_db_write_errors_total") == 1
    assert value(registry, "latentwatch_db_write_retries_total") == 2
    assert value(registry, "latentwatch_deadletter_errors_total") == 1
    assert value(registry, "latentwatch_commit_failures_total") == 1


def test_serve_metrics_with_probes(registry: CollectorRegistry, metrics: StreamMetrics) -> None:
    state = {"ready": False}
    probes = {
        "/ready": lambda: (state["ready"], {"why": "not in the group"}),
        "/health": lambda: (True, {}),
    }
    server = serve_metrics(registry, port=0, probes=probes)
    try:
        base = server.base_url
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/ready", timeout=5)
        assert refused.value.code == 503
        assert json.loads(refused.value.read()) == {"ok": False, "why": "not in the group"}
        state["ready"] = True
        with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
            assert json.loads(response.read())["ok"] is True
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert "latentwatch_ready" in response.read().decode()
    finally:
        server.close()


def test_serve_metrics_on_a_free_port(registry: CollectorRegistry, metrics: StreamMetrics) -> None:
    metrics.record_scores(TOPIC, **scores(10, np.random.default_rng(2)))
    server = serve_metrics(registry, port=0)
    try:
        assert not server.url.endswith(":0/metrics")
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
    finally:
        server.close()
    for name in (
        "latentwatch_records_scored_total",
        "latentwatch_severity_bucket",
        "latentwatch_model_info",
        "latentwatch_drift_psi",
        "latentwatch_batch_duration_seconds_bucket",
    ):
        assert name in body
