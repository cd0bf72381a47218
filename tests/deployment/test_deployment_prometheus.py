"""The metrics, the dashboard's PromQL and the alert rules, end to end against a real Prometheus,
through the two incidents that matter most: a consumer that hangs and a consumer that dies.

Two consumers run in threads, each with its own model, topic, database and /metrics on a free
loopback port: A (PostgreSQL) and B (SQLite). One real Prometheus scrapes both every second
under job ``latentwatch`` and evaluates dashboards/prometheus/alerts.yml every second. The rules
are a test copy (:func:`obs_stack.with_short_for`) in which every alert's ``for:`` is 5 s instead
of minutes; nothing else changes (the shipped durations are tested by promtool in
test_deployment_dashboards.py). The 10-minute windows can stay because the whole test fits in them:
``rate()`` and ``increase()`` over 10 minutes see every sample since the start.

1. Normal streams to both, with one malformed message per reject reason to A. Every series the
   dashboard and the rules read exists; every rule evaluates; no alert is pending or firing, and
   LatentwatchFlaggedShareHigh never was although its guard holds. With its variables set to
   one consumer, every dashboard query answers with that consumer's series only, and with a
   consumer that does not exist, with nothing: no selector escapes the filter.
2. Anomalies to A: LatentwatchFlaggedShareHigh goes pending, then firing, for A alone, with its
   labels and rendered annotations; the flagged counter equals the model's decisions and the rows
   stored in SQL.
3. A's database hangs (``LOCK TABLE flagged_records IN ACCESS EXCLUSIVE MODE``) while records keep
   arriving: one "consumer stuck" log line, /ready 503, the stuck-operation and readiness gauges;
   lag in records and seconds keeps growing in Prometheus; LatentwatchConsumerStalled goes
   pending 30 s after A's last batch. Meanwhile B scores records far beyond the old histogram
   ranges (scores above 5,000 nats, records 15 minutes old): its p99 panels show them. Then the
   lock goes, A moves again (one line) and stores every flagged record.
4. A dies: up is 0, LatentwatchTargetDown goes pending, and the dashboard's ages keep growing
   after its series went stale. B stops too and leaves service discovery:
   LatentwatchTargetMissing (absent(up)) goes pending.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from latentwatch.embedded import EmbeddedBroker
from latentwatch.service import BackgroundConsumer
from tests.support.cancer_model import Model
from tests.support.obs_stack import (
    SteadyProducer,
    check_rules,
    consume_settings,
    dashboard_exprs,
    dashboard_variables,
    encode,
    label_values_as_promql,
    metric_names,
    produce,
    produce_timestamped,
    rules,
    running_consumer,
    scrape_target,
    second_model,
    stored_flagged,
    table_locked,
    wait_until,
    with_short_for,
    with_variables,
)
from tests.support.prometheus_server import PrometheusServer, Result, run_prometheus

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "dashboards" / "prometheus" / "alerts.yml"
DASHBOARD_JSON = REPO / "dashboards" / "grafana" / "latentwatch.json"

ALERT = "LatentwatchFlaggedShareHigh"
STALLED = "LatentwatchConsumerStalled"
STALL_AFTER_S = 30.0  # the stall rule: no committed batch for 30 s with records waiting
TEST_FOR = "5s"  # every alert's `for:` in the test copy of the rules
EVALUATION_INTERVAL_S = 1.0  # also the scrape interval
WAIT_S = 45.0  # upper bound of every wait
NORMAL_RATE_PER_S = 60.0  # ~3 s of normal stream: several scrapes see the counters rise
# Grafana sets $__rate_interval to max($__interval + scrape interval, 4 x scrape interval): 1 m
# with its default 15 s scrape interval. 1 m also spans each phase of this test.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Dashboard targets allowed to answer with no series on a healthy stream, with the reason. The
# error panels use increase(), which is 0 (not absent) because the counters start at 0, and
# rejects by reason has data because A's stream carries malformed messages: none is empty.
EMPTY_WHEN_HEALTHY: dict[str, str] = {}
# The alert's guard needs scored x fpr >= 1 (100 records at fpr 1 %). increase() extrapolates the
# last sample by up to 1.1 average sample intervals, at most doubling an early count: from about
# 50 records on, the share may already be compared with the threshold.
ALERT_MIN_SCORED = 40
OLD_SCORE_TOP_NATS = 5000.0  # the old histograms ended here ...
OLD_LATENCY_TOP_S = 60.0  # ... and here
RECORD_AGE_S = 15 * 60  # B's late records: produced 15 minutes ago

MALFORMED: dict[str, bytes] = {
    "not_utf8": b"\xff\xfe\x00",
    "not_json": b"{not json",
    "non_finite_number": b'{"id": "nan", "mean_radius": NaN}',
    "not_an_object": b"[1, 2, 3]",
    "missing_required": b'{"id": "none-of-the-fields", "colour": "blue"}',
}


@pytest.fixture(scope="module")
def model(cancer_model: Model) -> Model:
    return cancer_model


@pytest.fixture(scope="module")
def model_b(model: Model, tmp_path_factory: pytest.TempPathFactory) -> Model:
    return second_model(model, tmp_path_factory.mktemp("model-b"))


@pytest.fixture
def test_rules(tmp_path: Path) -> Path:
    return check_rules(with_short_for(ALERTS, tmp_path / "alerts.test.yml", TEST_FOR))


def test_rules_copy_only_shortens_for(tmp_path: Path) -> None:
    original = rules(ALERTS)
    copy = rules(with_short_for(ALERTS, tmp_path / "alerts.test.yml", TEST_FOR))
    alerts = [rule for rule in copy if "alert" in rule]
    assert alerts and all(rule["for"] == TEST_FOR for rule in alerts)

    def without_for(rule: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in rule.items() if key != "for"}

    assert [without_for(r) for r in copy] == [without_for(r) for r in original]


# --- reading Prometheus -------------------------------------------------------------------


def values(result: Result) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def one_value(prom: PrometheusServer, expr: str) -> float:
    result = values(prom.query(expr))
    assert len(result) == 1, f"{expr} -> {result}"
    return result[0]


def wait_total(prom: PrometheusServer, metric: str, topic: str, expected: int) -> None:
    """Until Prometheus has scraped ``metric`` of ``topic`` summed over its labels at
    ``expected``."""
    prom.wait_for(
        f'sum({metric}{{topic="{topic}"}})', lambda r: values(r) == [expected], timeout_s=WAIT_S
    )


def newest_sample_s(prom: PrometheusServer, metric: str, topic: str) -> float:
    """Scrape time (Unix s) of the newest sample of ``metric`` of ``topic``."""
    return max(values(prom.query(f'timestamp({metric}{{topic="{topic}"}})')))


def rules_evaluated_after(prom: PrometheusServer, t_s: float) -> Result:
    """Poll /api/v1/rules until every rule was evaluated after ``t_s`` plus two evaluation
    intervals."""
    deadline = time.monotonic() + WAIT_S
    after = t_s + 2 * EVALUATION_INTERVAL_S
    while True:
        loaded = prom.rules()
        evaluated = [datetime.fromisoformat(r["lastEvaluation"]).timestamp() for r in loaded]
        if loaded and min(evaluated) > after:
            return loaded
        if time.monotonic() > deadline:
            raise AssertionError(f"rules not all evaluated after {after} within {WAIT_S} s")
        time.sleep(0.25)


def assert_rules_healthy(loaded: Result) -> None:
    """Every rule evaluates against the real series without error (e.g. no many-to-many
    match), the number of rules is the file's."""
    assert len(loaded) == len(rules(ALERTS))
    broken = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
    assert not broken, broken


def wait_for_alert(
    prom: PrometheusServer, name: str, states: set[str], instance: str | None = None
) -> dict[str, Any]:
    """Poll /api/v1/alerts until alert ``name`` (of ``instance``) is in one of ``states``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for alert in prom.alerts():
            labels = alert["labels"]
            if (
                labels["alertname"] == name
                and alert["state"] in states
                and instance in (None, labels.get("instance"))
            ):
                return alert
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name} was not {'/'.join(sorted(states))} within {WAIT_S} s; active alerts: "
                f"{prom.alerts()}\n"
                f"Prometheus log tail:\n{prom.log_tail()}"
            )
        time.sleep(0.25)


def dashboard_queries(instance: str) -> dict[str, str]:
    """Every dashboard target as Grafana sends it with one consumer picked."""
    variables = {**GRAFANA_INTERVALS, "$job": "latentwatch", "$instance": instance}
    return {
        target: with_variables(expr, variables)
        for target, expr in dashboard_exprs(DASHBOARD_JSON).items()
    }


# --- the streams ----------------------------------------------------------------------------


def malformed(model: Model) -> dict[str, bytes]:
    """One message per reject reason the decoder or the scorer can give a producer's bytes."""
    record = dict(model.normal[0])
    first_feature = next(key for key in record if key != "id")
    record.update(id="wrong-type", **{first_feature: "large"})
    return {**MALFORMED, "wrong_type": encode([record])[0]}


def interleave(records: Sequence[bytes], extra: Sequence[bytes]) -> list[bytes]:
    """``extra`` spread evenly through ``records``."""
    out = list(records)
    step = len(out) // (len(extra) + 1)
    for i, value in enumerate(extra):
        out.insert((i + 1) * step + i, value)
    return out


def running_shares(flagged: np.ndarray) -> np.ndarray:
    """Flagged share of the first n records, for n = 1, 2, ..."""
    return np.cumsum(flagged) / np.arange(1, len(flagged) + 1)


def assert_normal_stream_is_quiet(model: Model) -> None:
    """A precondition on the model, not on the system: Prometheus sees the share of a prefix of
    the normal stream at each scrape; if one were above the threshold, alerting would be right."""
    limit = 5 * model.detector.calibrations.fpr
    flagged = model.detector.score_records(model.normal).flagged
    worst = float(running_shares(flagged)[ALERT_MIN_SCORED - 1 :].max())
    assert worst < limit, (
        f"the model flags {worst:.1%} of a prefix of the held-out benign records (alert "
        f"threshold {limit:.1%}): the normal stream would rightly alert; retrain differently"
    )


def beyond_the_old_score_range(model: Model, count: int) -> list[dict[str, object]]:
    """Normal records with every feature scaled until the model scores them between 10,000 and
    90,000 nats: above the old top bucket (5,000), inside the new ones (100,000)."""
    for factor in (2.0, 3.0, 5.0, 8.0, 12.0):
        scaled = [
            {k: (v * factor if k != "id" else f"far-{factor}-{i}") for k, v in r.items()}
            for i, r in enumerate(model.normal[:count])
        ]
        scores = model.detector.score_records(scaled).score
        if np.all((scores > 10_000) & (scores < 90_000)):
            return scaled
    raise AssertionError("no scale puts the model's scores between 10,000 and 90,000 nats")


def http_status(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def base_url(consumer: BackgroundConsumer) -> str:
    return consumer.wait_for_metrics().removesuffix("/metrics")


# --- the test -----------------------------------------------------------------------------


@pytest.mark.prometheus
@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_metrics_dashboard_and_alerts_against_a_real_prometheus(
    model: Model,
    model_b: Model,
    broker: EmbeddedBroker,
    new_postgres_database: Callable[[str], str],
    test_rules: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert_normal_stream_is_quiet(model)
    assert_normal_stream_is_quiet(model_b)
    assert model.detector.version != model_b.detector.version
    suffix = uuid.uuid4().hex[:8]
    topic_a, topic_b = f"obs-a-{suffix}", f"obs-b-{suffix}"
    db_a = new_postgres_database("lw_obs")
    db_b = f"sqlite:///{tmp_path / 'latentwatch-b.db'}"

    with (
        caplog.at_level(logging.INFO, logger="latentwatch.liveness"),
        running_consumer(consume_settings(model.path, broker.bootstrap, topic_a, db_a)) as a,
        running_consumer(consume_settings(model_b.path, broker.bootstrap, topic_b, db_b)) as b,
        run_prometheus(
            [scrape_target(a), scrape_target(b)],
            [test_rules],
            tmp_path,
            scrape_interval=f"{EVALUATION_INTERVAL_S:.0f}s",
            evaluation_interval=f"{EVALUATION_INTERVAL_S:.0f}s",
        ) as prom,
    ):
        instance_a, instance_b = scrape_target(a), scrape_target(b)
        # The counters are scraped at 0 before the first record, so rate() counts every record
        # (and starts the 10 m windows at 0: no extrapolation before the first sample).
        for topic in (topic_a, topic_b):
            prom.wait_for(
                f'latentwatch_records_scored_total{{topic="{topic}"}}',
                lambda r: values(r) == [0.0],
                timeout_s=WAIT_S,
            )
        normal_phase(prom, model, model_b, broker, a, b, topic_a, topic_b)
        check_one_consumer_per_query(prom, {instance_a: model, instance_b: model_b})
        anomalies_phase(prom, model, broker, topic_a, db_a, instance_a)
        hang_phase(prom, model, model_b, broker, a, b, topic_a, topic_b, db_a, caplog)
        death_phase(prom, a, b, instance_a)


def normal_phase(
    prom: PrometheusServer,
    model: Model,
    model_b: Model,
    broker: EmbeddedBroker,
    a: BackgroundConsumer,
    b: BackgroundConsumer,
    topic_a: str,
    topic_b: str,
) -> None:
    """1. Normal streams (A's with malformed messages): everything answers, nothing alerts."""
    bad = malformed(model)
    stream_a = interleave(encode(model.normal), list(bad.values()))
    produce(broker.bootstrap, topic_b, encode(model_b.normal), None)
    produce(broker.bootstrap, topic_a, stream_a, NORMAL_RATE_PER_S)
    wait_total(prom, "latentwatch_records_consumed_total", topic_a, len(stream_a))
    wait_total(prom, "latentwatch_records_scored_total", topic_a, len(model.normal))
    wait_total(prom, "latentwatch_records_scored_total", topic_b, len(model_b.normal))
    t_normal = newest_sample_s(prom, "latentwatch_records_scored_total", topic_a)
    loaded = rules_evaluated_after(prom, t_normal)

    assert_rules_healthy(loaded)
    check_every_series_exists(prom)
    check_dashboard_answers(prom, scrape_target(a))
    rejected = prom.query(
        f'sum by (reason) (latentwatch_records_rejected_total{{topic="{topic_a}"}}) > 0'
    )
    assert {s["metric"]["reason"]: float(s["value"][1]) for s in rejected} == dict.fromkeys(
        bad, 1.0
    )
    check_quiet(prom, loaded, {scrape_target(a): model, scrape_target(b): model_b})
    for consumer in (a, b):  # in their groups, nothing stuck
        assert http_status(f"{base_url(consumer)}/ready")[0] == 200
        assert http_status(f"{base_url(consumer)}/health")[0] == 200


def anomalies_phase(
    prom: PrometheusServer,
    model: Model,
    broker: EmbeddedBroker,
    topic_a: str,
    db_a: str,
    instance_a: str,
) -> None:
    """2. A burst of anomalies to A: its flagged-share alert, and only that, fires."""
    limit = 5 * model.detector.calibrations.fpr
    produce(broker.bootstrap, topic_a, encode(model.anomalous), None)
    active = wait_for_alert(prom, ALERT, {"pending", "firing"})
    firing = wait_for_alert(prom, ALERT, {"firing"})
    for alert in (active, firing):
        assert alert["labels"] == {
            "alertname": ALERT,
            "instance": instance_a,
            "job": "latentwatch",
            "severity": "warning",
        }
        assert float(alert["value"]) > limit
        assert alert["annotations"]["summary"].startswith(f"{instance_a}: flagged share ")
        assert "{{" not in " ".join(alert["annotations"].values())  # templates rendered
    assert firing["activeAt"] == active["activeAt"]  # one alert, active since then
    assert {a["labels"]["alertname"] for a in prom.alerts()} == {ALERT}  # and only it
    # Prometheus writes ALERTS{alertstate="pending"} at each evaluation while pending: the
    # alert waited its `for:` before firing, even if no poll above caught it pending.
    pending = prom.query(f'ALERTS{{alertname="{ALERT}", alertstate="pending"}}[1m]')
    assert pending, f"{ALERT} fired without being pending first"

    expected = model.flagged_ids(model.normal) | model.flagged_ids(model.anomalous)
    scored = len(model.normal) + len(model.anomalous)
    wait_total(prom, "latentwatch_records_scored_total", topic_a, scored)
    wait_total(prom, "latentwatch_records_flagged_total", topic_a, len(expected))
    assert stored_flagged(db_a, topic_a) == len(expected)
    # Both counters start at 0 in the window and share their scrape times, so rate()
    # extrapolates them alike and the recorded share is exactly flagged / scored.
    prom.wait_for(
        f'instance:latentwatch_flagged_share:ratio10m{{instance="{instance_a}"}}',
        lambda r: values(r) == pytest.approx([len(expected) / scored], rel=1e-9),
        timeout_s=WAIT_S,
    )
    assert_rules_healthy(prom.rules())


def hang_phase(
    prom: PrometheusServer,
    model: Model,
    model_b: Model,
    broker: EmbeddedBroker,
    a: BackgroundConsumer,
    b: BackgroundConsumer,
    topic_a: str,
    topic_b: str,
    db_a: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """3. A's database hangs while records arrive; B meanwhile scores beyond the old ranges."""
    instance_a, instance_b = scrape_target(a), scrape_target(b)
    on_a = f'instance="{instance_a}"'
    # every other record an anomaly: A's batches carry flagged records, so they write
    steady = [r for pair in zip(model.normal, model.anomalous, strict=False) for r in pair]
    values_a = encode([dict(r, id=f"hang-{i}-{r['id']}") for i, r in enumerate(steady[:100])])
    consumed_before = a.consumed
    with SteadyProducer(broker.bootstrap, topic_a, values_a, interval_s=0.05) as producer:
        wait_until(lambda: a.consumed > consumed_before + 20, 20, "A consuming the steady stream")
        with table_locked(db_a, "flagged_records"):
            locked_at = time.time()
            stuck = "latentwatch_operation_stuck_seconds"
            wait_until(
                lambda: a.metric(stuck, operation="db_write") > 0, 20, "A's watchdog to see it"
            )
            last_batch = a.metric("latentwatch_last_batch_timestamp_seconds")
            assert last_batch <= locked_at + 1
            status, ready = http_status(f"{base_url(a)}/ready")
            assert status == 503 and ready["stuck"] is True and ready["operation"] == "db_write"
            assert http_status(f"{base_url(a)}/health")[0] == 200  # alive, though stuck

            extreme_scores_and_latencies(prom, model_b, broker, b, topic_b, instance_b)

            # lag, in records and in seconds, keeps growing in Prometheus while A hangs
            lag = f"sum(latentwatch_consumer_lag{{{on_a}}})"
            waited = f"max(latentwatch_consumer_lag_seconds{{{on_a}}})"
            first_lag, first_waited = one_value(prom, lag), one_value(prom, waited)
            prom.wait_for(lag, lambda r: values(r)[0] > first_lag + 20, timeout_s=WAIT_S)
            prom.wait_for(waited, lambda r: values(r)[0] > first_waited + 1.5, timeout_s=WAIT_S)
            assert one_value(prom, f"latentwatch_ready{{{on_a}}}") == 0
            assert one_value(prom, f'{stuck}{{{on_a}, operation="db_write"}}') > 2

            stalled = wait_for_alert(prom, STALLED, {"pending", "firing"}, instance_a)
            active_at = datetime.fromisoformat(stalled["activeAt"]).timestamp()
            # pending at the stated time: 30 s after the last batch (scrape and evaluation
            # intervals and the watchdog's look at the lag add a few seconds at most)
            assert STALL_AFTER_S <= active_at - last_batch <= STALL_AFTER_S + 5
            assert stalled["labels"]["severity"] == "critical"
            assert float(stalled["value"]) >= STALL_AFTER_S
            # the flagged-share alert does not resolve while A hangs
            assert wait_for_alert(prom, ALERT, {"firing"}, instance_a)
        # the lock is gone: A moves again and loses nothing
        wait_until(lambda: a.metric("latentwatch_ready") == 1, 20, "A ready again")
        producer.close()
        sent = list(producer.sent)
    wait_until(lambda: a.consumed >= consumed_before + len(sent), 30, "A catching up")
    lines = [r.getMessage() for r in caplog.records if r.name == "latentwatch.liveness"]
    stuck_lines = [line for line in lines if line.startswith("consumer stuck: writing flagged")]
    moving_lines = [line for line in lines if line.startswith("consumer moving again: writing")]
    assert len(stuck_lines) == 1 and len(moving_lines) == 1, lines


def extreme_scores_and_latencies(
    prom: PrometheusServer,
    model_b: Model,
    broker: EmbeddedBroker,
    b: BackgroundConsumer,
    topic_b: str,
    instance_b: str,
) -> None:
    """4. Scores and latencies beyond the old top buckets: B's p99 panels show them."""
    far = encode(beyond_the_old_score_range(model_b, 40))
    late = encode([dict(r, id=f"late-{r['id']}") for r in model_b.normal[:40]])
    consumed = b.consumed
    produce(broker.bootstrap, topic_b, far, None)
    produce_timestamped(broker.bootstrap, topic_b, late, int((time.time() - RECORD_AGE_S) * 1000))
    wait_until(lambda: b.consumed >= consumed + len(far) + len(late), 30, "B scoring them")
    wait_total(prom, "latentwatch_records_consumed_total", topic_b, consumed + len(far) + 40)
    queries = dashboard_queries(instance_b)
    score_p99 = one_value(prom, queries["Anomaly score (nats) / B"])
    latency_p99 = one_value(prom, queries["Latency / B"])
    # well above the old top buckets, and below the new ones (a quantile in +Inf reads as the
    # last bound: it would be pinned at 100,000 nats or 3,600 s)
    assert OLD_SCORE_TOP_NATS * 2 < score_p99 < 100_000
    assert OLD_LATENCY_TOP_S * 10 < latency_p99 < 3600


def death_phase(
    prom: PrometheusServer, a: BackgroundConsumer, b: BackgroundConsumer, instance_a: str
) -> None:
    """5. A dies: TargetDown, and the dashboard's ages keep growing. Then no target is left."""
    a.close()
    prom.wait_for(f'up{{instance="{instance_a}"}}', lambda r: values(r) == [0.0], WAIT_S)
    down = wait_for_alert(prom, "LatentwatchTargetDown", {"pending", "firing"}, instance_a)
    assert down["labels"]["severity"] == "critical"
    queries = dashboard_queries(instance_a)
    ages = [
        queries["Since last committed batch / A"],
        queries["Age of the newest record / A"],
    ]
    # a plain `time() - gauge` has nothing to answer once the series are stale
    plain = f'time() - latentwatch_last_batch_timestamp_seconds{{instance="{instance_a}"}}'
    assert prom.query(plain) == []
    started = time.time()
    first = [one_value(prom, age) for age in ages]
    time.sleep(2.0)
    later = [one_value(prom, age) for age in ages]
    elapsed = time.time() - started
    for before, after in zip(first, later, strict=True):
        assert 1.5 <= after - before <= elapsed + 1  # they keep counting

    b.close()
    prom.set_targets([])  # no consumer left in service discovery
    missing = wait_for_alert(prom, "LatentwatchTargetMissing", {"pending", "firing"})
    assert missing["labels"] == {
        "alertname": "LatentwatchTargetMissing",
        "job": "latentwatch",
        "severity": "critical",
    }


def check_every_series_exists(prom: PrometheusServer) -> None:
    """Every metric and recording rule the dashboard and the rules read has a series (the stall
    rule has one only during a stall: checked in the hang phase)."""
    exprs = [*dashboard_exprs(DASHBOARD_JSON).values(), *(r["expr"] for r in rules(ALERTS))]
    names = set().union(*(metric_names(e) for e in exprs))
    names.discard("instance:latentwatch_last_batch_age_seconds:stalled")
    assert "latentwatch_records_scored_total" in names  # the extraction works
    present = prom.query(f'count by (__name__) ({{__name__=~"{"|".join(sorted(names))}"}})')
    missing = names - {s["metric"]["__name__"] for s in present}
    assert not missing, f"no series in Prometheus for {sorted(missing)}"


def check_dashboard_answers(prom: PrometheusServer, instance: str) -> None:
    """Every dashboard target, with Grafana's variables replaced, is valid PromQL (the query
    succeeds) and answers with at least one finite value, except those in
    EMPTY_WHEN_HEALTHY, which must still be valid."""
    problems: dict[str, str] = {}
    for target, expr in dashboard_queries(instance).items():
        result = prom.query(expr)  # raises unless status == success
        if target in EMPTY_WHEN_HEALTHY:
            continue
        if not any(math.isfinite(v) for v in values(result)):
            problems[target] = f"{expr} -> {result}"
    assert not problems, "dashboard targets without data:\n" + "\n".join(
        f"{k}: {v}" for k, v in problems.items()
    )


def check_one_consumer_per_query(prom: PrometheusServer, models: dict[str, Model]) -> None:
    """3. Two consumers, two models, one Prometheus: the variables list both; with one picked,
    every query answers with that consumer's series only (every series it returns carries its
    instance, and the model table its model's version); with a consumer that does not exist,
    every query answers nothing, so no selector escapes the filter."""
    variables = dashboard_variables(DASHBOARD_JSON)
    query, label = label_values_as_promql(variables["instance"].replace("$job", "latentwatch"))
    assert {s["metric"][label] for s in prom.query(query)} == set(models)
    for instance, model in models.items():
        for target, expr in dashboard_queries(instance).items():
            result = prom.query(expr)
            assert result or target == "Rejected records by reason / A", target
            seen = {s["metric"].get("instance", instance) for s in result}
            assert seen == ({instance} if result else set()), f"{target}: {seen}"
        table = prom.query(dashboard_queries(instance)["Model per consumer / A"])
        assert [s["metric"]["version"] for s in table] == [model.detector.version]
        query, label = label_values_as_promql(
            with_variables(variables["model"], {"$job": "latentwatch", "$instance": instance})
        )
        assert [s["metric"][label] for s in prom.query(query)] == [model.detector.version]
    for target, expr in dashboard_queries("no-such-consumer:1").items():
        assert prom.query(expr) == [], f"{target} answers for a consumer that does not exist"


def check_quiet(prom: PrometheusServer, loaded: Result, models: dict[str, Model]) -> None:
    """A healthy stream raises no alert, and the flagged-share alert is quiet because of the
    share (below the limit), not because too few records were scored."""
    rule = next(r for r in loaded if r["name"] == ALERT)
    assert rule["state"] == "inactive"
    assert prom.alerts() == []
    history = prom.query(f'count_over_time(ALERTS{{alertname="{ALERT}"}}[10m])')
    assert history == [], f"{ALERT} was pending or firing during the normal stream: {history}"
    for instance, model in models.items():
        on = f'{{instance="{instance}"}}'
        fpr = model.detector.calibrations.fpr
        guard = one_value(prom, f"instance:latentwatch_records_scored:increase10m{on}") * fpr
        assert guard >= 1, "too few records scored: the alert could not have fired"
        share = one_value(prom, f"instance:latentwatch_flagged_share:ratio10m{on}")
        flagged = model.detector.score_records(model.normal).flagged
        assert share == pytest.approx(float(np.mean(flagged)), rel=1e-9)
        assert share < 5 * fpr
