"""The pieces of the end-to-end observability test (test_obs_prometheus_integration.py): a small
model trained on real data, the consumer in a thread with its metrics on a free loopback port, a
producer, the PromQL of the dashboard and the rules, and a test copy of the rules whose ``for:``
durations fit in a test. A plain module (import it), like prometheus_server.py.

The data is scikit-learn's bundled breast-cancer set: the model is trained on half of the benign
records; the other half is the normal stream and the malignant records are the anomalies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from cancer_model import Record
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from latentwatch.service import BackgroundConsumer, ConsumeSettings
from streams.replay import replay_to

# Tansu completes a group join after about session_timeout / 2: keep it short in tests.
SESSION_TIMEOUT_MS = 1000


def consume_settings(model: Path, bootstrap: str, topic: str, db: str) -> ConsumeSettings:
    """A consumer of ``topic`` with its metrics endpoint on a free loopback port."""
    return ConsumeSettings(
        model=model,
        bootstrap=bootstrap,
        topics=(topic,),
        db=db,
        group=f"obs-{topic}",
        metrics_host="127.0.0.1",
        metrics_port=0,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        max_records=50,  # several batches per second of stream: the counters rise in steps
        poll_timeout_s=0.2,
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
    """Series names a PromQL expression reads: latentwatch_* metrics, recording rules
    (names with a colon) and ``up``. Label values (string literals) are left out."""
    identifiers = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r'"[^"]*"', '""', expr))
    return {n for n in identifiers if n.startswith("latentwatch_") or ":" in n or n == "up"}


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
