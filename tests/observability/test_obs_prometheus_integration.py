"""The metrics, the dashboard's PromQL and the alert rules, end to end against a real Prometheus.

The consumer runs in a thread on a topic of the embedded broker, with a SQLite database and its
/metrics on a free loopback port. A real Prometheus scrapes it every second under job
``latentwatch`` and evaluates dashboards/prometheus/alerts.yml every second. The rules are a test
copy (:func:`obs_stack.with_short_for`) in which every alert's ``for:`` is 5 s instead of minutes.
Nothing else changes: expressions, 10-minute range windows, labels and annotations are the real
ones. The windows can stay because the whole test fits in them: ``rate()`` and ``increase()``
over 10 minutes see every sample since the start, so the shares are whole-test shares.

1. Normal stream: the held-out benign records at 60 a second plus one malformed message per
   reject reason. Every series the dashboard and the rules read then exists. Every dashboard
   expression answers with data. Every rule evaluates without error. No alert is pending or
   firing, and LatentwatchFlaggedShareHigh never was, although its 100-record guard holds.
2. Anomalies: the malignant records. LatentwatchFlaggedShareHigh goes pending, then firing, with
   its labels and rendered annotations. The flagged counter equals the model's decisions and
   the rows stored in SQL.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cancer_model import Model
from obs_stack import (
    check_rules,
    consume_settings,
    dashboard_exprs,
    encode,
    metric_names,
    produce,
    rules,
    running_consumer,
    scrape_target,
    stored_flagged,
    with_short_for,
)
from prometheus_server import PrometheusServer, Result, run_prometheus

from latentwatch.embedded import EmbeddedBroker

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "dashboards" / "prometheus" / "alerts.yml"
DASHBOARD_JSON = REPO / "dashboards" / "grafana" / "latentwatch.json"

ALERT = "LatentwatchFlaggedShareHigh"
TEST_FOR = "5s"  # every alert's `for:` in the test copy of the rules
EVALUATION_INTERVAL_S = 1.0  # also the scrape interval
WAIT_S = 45.0  # upper bound of every wait; the test itself takes about 25 s
NORMAL_RATE_PER_S = 60.0  # ~3 s of normal stream: several scrapes see the counters rise
# Grafana sets $__rate_interval to max($__interval + scrape interval, 4 x scrape interval): 1 m
# with its default 15 s scrape interval. 1 m also spans the whole stream of this test, so the
# answers do not depend on when the queries run.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Dashboard targets allowed to answer with no series on a healthy stream, with the reason. The
# error panels use increase(), which is 0 (not absent) because the counters start at 0, and
# rejects by reason has data because the stream carries malformed messages: none is empty.
EMPTY_WHEN_HEALTHY: dict[str, str] = {}
# The alert needs increase(scored[10m]) >= 100. increase() extrapolates the last sample by up to
# 1.1 average sample intervals, at most doubling an early count: from about 50 records on, the
# share may already be compared with the threshold.
ALERT_MIN_SCORED = 40

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
    intervals (the alerts read recording rules, which may be one evaluation behind)."""
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


def wait_for_alert(prom: PrometheusServer, name: str, states: set[str]) -> dict[str, Any]:
    """Poll /api/v1/alerts until alert ``name`` is in one of ``states``; return it."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for alert in prom.alerts():
            if alert["labels"]["alertname"] == name and alert["state"] in states:
                return alert
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name} was not {'/'.join(sorted(states))} within {WAIT_S} s; active alerts: "
                f"{prom.alerts()}\n"
                f"Prometheus log tail:\n{prom.log_tail()}"
            )
        time.sleep(0.25)


# --- the stream ---------------------------------------------------------------------------


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


# --- the test -----------------------------------------------------------------------------


@pytest.mark.prometheus
@pytest.mark.kafka
@pytest.mark.slow
def test_metrics_dashboard_and_alerts_against_a_real_prometheus(
    model: Model, broker: EmbeddedBroker, test_rules: Path, tmp_path: Path
) -> None:
    fpr = model.detector.calibrations.fpr
    limit = 5 * fpr  # the alert's threshold on the flagged share
    normal_flagged = model.detector.score_records(model.normal).flagged
    # A precondition on the model, not on the system: Prometheus sees the share of a prefix of
    # the normal stream at each scrape; if one were above the threshold, alerting would be right.
    worst = float(running_shares(normal_flagged)[ALERT_MIN_SCORED - 1 :].max())
    assert worst < limit, (
        f"the model flags {worst:.1%} of a prefix of the held-out benign records (alert "
        f"threshold {limit:.1%}): the normal stream would rightly alert; retrain differently"
    )
    bad = malformed(model)
    topic = f"obs-{uuid.uuid4().hex[:8]}"
    db = f"sqlite:///{tmp_path / 'latentwatch.db'}"

    with (
        running_consumer(consume_settings(model.path, broker.bootstrap, topic, db)) as consumer,
        run_prometheus(
            [scrape_target(consumer)],
            [test_rules],
            tmp_path,
            scrape_interval=f"{EVALUATION_INTERVAL_S:.0f}s",
            evaluation_interval=f"{EVALUATION_INTERVAL_S:.0f}s",
        ) as prom,
    ):
        # The counters are scraped at 0 before the first record, so rate() counts every record
        # (and starts the 10 m windows at 0: no extrapolation before the first sample).
        prom.wait_for(
            f'latentwatch_records_scored_total{{topic="{topic}"}}',
            lambda r: values(r) == [0.0],
            timeout_s=WAIT_S,
        )

        # 1. A normal stream with a few malformed messages.
        stream = interleave(encode(model.normal), list(bad.values()))
        produce(broker.bootstrap, topic, stream, NORMAL_RATE_PER_S)
        wait_total(prom, "latentwatch_records_consumed_total", topic, len(stream))
        wait_total(prom, "latentwatch_records_scored_total", topic, len(model.normal))
        t_normal = newest_sample_s(prom, "latentwatch_records_scored_total", topic)
        loaded = rules_evaluated_after(prom, t_normal)

        assert_rules_healthy(loaded)
        check_every_series_exists(prom)
        check_dashboard_answers(prom)
        rejected = prom.query(
            f'sum by (reason) (latentwatch_records_rejected_total{{topic="{topic}"}}) > 0'
        )
        assert {s["metric"]["reason"]: float(s["value"][1]) for s in rejected} == dict.fromkeys(
            bad, 1.0
        )
        check_quiet(prom, loaded, normal_flagged, limit)

        # 2. A burst of anomalies.
        produce(broker.bootstrap, topic, encode(model.anomalous), None)
        active = wait_for_alert(prom, ALERT, {"pending", "firing"})
        firing = wait_for_alert(prom, ALERT, {"firing"})
        for alert in (active, firing):
            assert alert["labels"] == {
                "alertname": ALERT,
                "job": "latentwatch",
                "severity": "warning",
            }
            assert float(alert["value"]) > limit
            assert alert["annotations"]["summary"].startswith("latentwatch: flagged share ")
            assert "{{" not in " ".join(alert["annotations"].values())  # templates rendered
        assert firing["activeAt"] == active["activeAt"]  # one alert, active since then
        assert {a["labels"]["alertname"] for a in prom.alerts()} == {ALERT}  # and only it
        # Prometheus writes ALERTS{alertstate="pending"} at each evaluation while pending: the
        # alert waited its `for:` before firing, even if no poll above caught it pending.
        pending = prom.query(f'ALERTS{{alertname="{ALERT}", alertstate="pending"}}[1m]')
        assert pending, f"{ALERT} fired without being pending first"

        expected = model.flagged_ids(model.normal) | model.flagged_ids(model.anomalous)
        scored = len(model.normal) + len(model.anomalous)
        wait_total(prom, "latentwatch_records_scored_total", topic, scored)
        wait_total(prom, "latentwatch_records_flagged_total", topic, len(expected))
        assert stored_flagged(db, topic) == len(expected)
        # Both counters start at 0 in the window and share their scrape times, so rate()
        # extrapolates them alike and the recorded share is exactly flagged / scored.
        prom.wait_for(
            "job:latentwatch_flagged_share:ratio10m",
            lambda r: values(r) == pytest.approx([len(expected) / scored], rel=1e-9),
            timeout_s=WAIT_S,
        )
        assert_rules_healthy(prom.rules())


def check_every_series_exists(prom: PrometheusServer) -> None:
    """Every metric and recording rule the dashboard and the rules read has a series."""
    exprs = [*dashboard_exprs(DASHBOARD_JSON).values(), *(r["expr"] for r in rules(ALERTS))]
    names = set().union(*(metric_names(e) for e in exprs))
    assert "latentwatch_records_scored_total" in names  # the extraction works
    present = prom.query(f'count by (__name__) ({{__name__=~"{"|".join(sorted(names))}"}})')
    missing = names - {s["metric"]["__name__"] for s in present}
    assert not missing, f"no series in Prometheus for {sorted(missing)}"


def check_dashboard_answers(prom: PrometheusServer) -> None:
    """Every dashboard target, with Grafana's variables replaced, is valid PromQL (the query
    succeeds) and answers with at least one finite value, except those in
    EMPTY_WHEN_HEALTHY, which must still be valid."""
    problems: dict[str, str] = {}
    for target, template in dashboard_exprs(DASHBOARD_JSON).items():
        expr = template
        for variable, duration in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, duration)
        assert "$" not in expr, f"unknown Grafana variable in {target}: {expr!r}"
        result = prom.query(expr)  # raises unless status == success
        if target in EMPTY_WHEN_HEALTHY:
            continue
        if not any(math.isfinite(v) for v in values(result)):
            problems[target] = f"{expr} -> {result}"
    assert not problems, "dashboard targets without data:\n" + "\n".join(
        f"{k}: {v}" for k, v in problems.items()
    )


def check_quiet(
    prom: PrometheusServer, loaded: Result, normal_flagged: np.ndarray, limit: float
) -> None:
    """A healthy stream raises no alert, and the flagged-share alert is quiet because of the
    share (below the limit), not because too few records were scored."""
    rule = next(r for r in loaded if r["name"] == ALERT)
    assert rule["state"] == "inactive"
    assert prom.alerts() == []
    history = prom.query(f'count_over_time(ALERTS{{alertname="{ALERT}"}}[10m])')
    assert history == [], f"{ALERT} was pending or firing during the normal stream: {history}"
    guard = prom.query("sum by (job) (increase(latentwatch_records_scored_total[10m])) >= 100")
    assert len(guard) == 1, "fewer than 100 scored records: the alert could not have fired"
    share = values(prom.query("job:latentwatch_flagged_share:ratio10m"))
    assert share == pytest.approx([float(np.mean(normal_flagged))], rel=1e-9)
    assert share[0] < limit
