"""The pieces of the end-to-end observability test (test_deployment_prometheus.py): small
models trained on real data, consumers in threads with their metrics on free loopback ports,
producers (paced, continuous, with old timestamps), a database table lock, the PromQL of the
dashboard and the rules with Grafana's variables filled in, and a test copy of the rules whose
``for:`` durations fit in a test. A plain module (import it), like prometheus_server.py.

The data is scikit-learn's bundled breast-cancer set: the models are trained on half of the
benign records; the other half is the normal stream and the malignant records are the anomalies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from detector import artifact
from detector.calibration import threshold_for
from latentwatch.service import BackgroundConsumer
from latentwatch.settings import ConsumeSettings
from streams.kafka import make_producer
from streams.replay import replay_to
from streams.settings import KafkaSettings, LivenessSettings, LoopSettings
from tests.support.cancer_model import Model, Record

# Tansu completes a group join after about session_timeout / 2: keep it short in tests.
SESSION_TIMEOUT_MS = 1000


# The watchdog looks four times a second and calls an operation stuck after 2 s (10 s in
# production): the hang is seen within seconds of a test.
TEST_LIVENESS = LivenessSettings(interval_s=0.25, stuck_after_s=2.0)


def second_model(model: Model, directory: Path, fpr: float = 0.02) -> Model:
    """``model`` calibrated to another false-alarm rate: another model version, for a second
    consumer in the same Prometheus, without a second training."""
    d = model.detector
    calibrations = replace(
        d.calibrations, threshold=threshold_for(d.calibrations.score, fpr), fpr=fpr
    )
    other = replace(d, calibrations=calibrations, config=replace(d.config, fpr=fpr), version="")
    path = directory / "model"
    artifact.save(other, path)
    return Model(other, path, model.normal, model.anomalous)


def consume_settings(model: Path, bootstrap: str, topic: str, db: str) -> ConsumeSettings:
    """A consumer of ``topic`` with its metrics endpoint on a free loopback port."""
    return ConsumeSettings(
        model=model,
        db=db,
        kafka=KafkaSettings(
            bootstrap, f"obs-{topic}", (topic,), session_timeout_ms=SESSION_TIMEOUT_MS
        ),
        # several batches per second of stream: the counters rise in steps
        loop=LoopSettings(max_records=50, poll_timeout_s=0.2),
        metrics_host="127.0.0.1",
        metrics_port=0,
        liveness=TEST_LIVENESS,
    )


@contextmanager
def running_consumer(settings: ConsumeSettings) -> Iterator[BackgroundConsumer]:
    with BackgroundConsumer(settings, name="obs-consumer") as consumer:
        yield consumer


def scrape_target(consumer: BackgroundConsumer, timeout_s: float = 30.0) -> str:
    """host:port Prometheus scrapes, once the consumer's endpoint is up."""
    return urlsplit(consumer.wait_for_metrics(timeout_s)).netloc


def encode(records: Sequence[Record]) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def produce(bootstrap: str, topic: str, values: Sequence[bytes], rate_per_s: float | None) -> None:
    """Send ``values`` in order, at most ``rate_per_s`` a second (None: as fast as possible);
    returns once the producer has flushed every one (failed sends are retried)."""
    report = replay_to(bootstrap, values, topic, rate=rate_per_s, linger_ms=5)
    assert report.failed == 0, f"{report.failed} records were not delivered"


def produce_timestamped(
    bootstrap: str, topic: str, values: Sequence[bytes], timestamp_ms: int
) -> None:
    """Send ``values`` with the Kafka timestamp ``timestamp_ms`` (a producer's CreateTime)."""
    producer = make_producer(bootstrap, linger_ms=5)
    try:
        futures = [producer.send(topic, value, timestamp_ms=timestamp_ms) for value in values]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=10)


class SteadyProducer:
    """Sends ``values`` round and round, one every ``interval_s``, until closed: records keep
    arriving while the consumer hangs. ``sent`` is what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, values: Sequence[bytes], interval_s: float):
        self._producer = make_producer(bootstrap, linger_ms=0)
        self._topic, self._values, self._interval_s = topic, values, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self.sent: list[bytes] = []

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self._interval_s):
            value = self._values[i % len(self._values)]
            self._producer.send(self._topic, value).get(timeout=30)  # one record per batch
            self.sent.append(value)
            i += 1

    def __enter__(self) -> SteadyProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._producer.close(timeout=10)


@contextmanager
def table_locked(db_url: str, table: str) -> Iterator[None]:
    """Hold ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` on PostgreSQL: every write to ``table``
    waits, without an error, until the block exits (the lock of an open transaction)."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def wait_until(condition: Any, timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(poll_s)


def stored_flagged(db_url: str, topic: str) -> int:
    """Rows of flagged_records for ``topic`` (what the dashboard's table shows)."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            query = text("SELECT count(*) FROM flagged_records WHERE topic = :topic")
            return int(connection.execute(query, {"topic": topic}).scalar_one())
    finally:
        engine.dispose()


# --- PromQL of the dashboard and the rules ------------------------------------------------


def with_variables(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's variables replaced (longest names first: $__interval is not
    $__interval_ms)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def dashboard_variables(dashboard_json: Path) -> dict[str, str]:
    """The Prometheus query of each of the dashboard's query variables, by name."""
    dashboard = json.loads(dashboard_json.read_text())
    return {v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"}


def label_values_as_promql(query: str) -> tuple[str, str]:
    """Grafana's ``label_values(selector, label)`` as PromQL ``group by (label) (selector)``, and
    the label."""
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
    assert match is not None, query
    selector, label = match.groups()
    return f"group by ({label}) ({selector})", label


def dashboard_exprs(dashboard_json: Path) -> dict[str, str]:
    """Every PromQL target of the Grafana dashboard, keyed "panel title / refId"."""
    dashboard = json.loads(dashboard_json.read_text())
    out: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:  # a collapsed row keeps its panels inside
            for target in p.get("targets", []):
                if "expr" in target:
                    out[f"{p['title']} / {target['refId']}"] = target["expr"]
    return out


def rules(rules_yml: Path) -> list[dict[str, Any]]:
    groups = yaml.safe_load(rules_yml.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads: latentwatch_* and process_* metrics, recording
    rules (names with a colon) and ``up``. Label values (string literals) are left out."""
    identifiers = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r'"[^"]*"', '""', expr))
    return {
        n
        for n in identifiers
        if n.startswith(("latentwatch_", "process_")) or ":" in n or n == "up"
    }


def with_short_for(rules_yml: Path, out: Path, for_: str) -> Path:
    """Write a copy of the rules file whose alerts all wait ``for_`` instead of their
    production ``for:``; nothing else changes (expressions, range windows, labels,
    annotations). Returns ``out``."""
    document = yaml.safe_load(rules_yml.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_
    out.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    return out


def check_rules(path: Path) -> Path:
    """``promtool check rules path``; fails (never skips) when promtool is missing."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: run `make system-deps` (Debian package prometheus)",
            pytrace=False,
        )
    result = subprocess.run(
        [binary, "check", "rules", str(path)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return path
