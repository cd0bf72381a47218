"""The dashboard, recording rules and alerts: promtool accepts and unit-tests them, every metric
they name is one StreamMetrics exposes, and the dashboard JSON is generated from build.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from storage.database import make_engine, session_factory
from storage.models import FlaggedRecordRow
from storage.repository import write_flagged
from streams.metrics import StreamMetrics
from tests.support.flagged_records import make_record
from tests.support.prometheus_server import run_prometheus

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
PROMETHEUS_DIR = DASHBOARDS / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD_JSON = DASHBOARDS / "grafana" / "latentwatch.json"
# Grafana's variables, replaced by a duration or a regex so that promtool can parse the
# expressions.
GRAFANA_INTERVALS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}
# Series names a dashboard query reads: the consumer's metrics, the process collector's, the
# scrape's `up`, and recording rules (names with a colon).
SERIES_NAME = re.compile(r"\b(?:latentwatch_\w+|process_\w+|up|\w+:\w+:\w+)\b")
CONSUMER_MATCHERS = '{job=~"$job", instance=~"$instance"'
ALLOWED_TO_NAME_THE_JOB = {"LatentwatchTargetDown", "LatentwatchTargetMissing"}


def load_build() -> ModuleType:
    """dashboards/build.py is a script, not a package module: load it from its path."""
    path = DASHBOARDS / "build.py"
    spec = importlib.util.spec_from_file_location("latentwatch_dashboard_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build() -> ModuleType:
    return load_build()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD_JSON.read_text()))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: run `make system-deps` (Debian package prometheus)",
            pytrace=False,
        )
    return subprocess.run([binary, *args], check=False, capture_output=True, text=True, timeout=120)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exposed_names() -> set[str]:
    """Sample names of a StreamMetrics that has seen one of everything."""
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry, topics=["records"])
    metrics.set_model("v1", "schema", "2026-11-01T00:00:00Z", 0.01, [0.6, 0.4])
    metrics.record_consumed("records", 3)
    metrics.record_rejects("records", {"not_json": 1})
    metrics.record_scores(
        "records",
        score=np.array([1.0, 2.0]),
        flagged=np.array([False, True]),
        severity=np.array([10.0, 99.0]),
        density=np.array([0.5, 1.5]),
        reconstruction=np.array([0.5, 0.5]),
        clusters=np.array([0, 1]),
        p_values=np.array([0.5, 0.001]),
    )
    metrics.record_persisted("records", np.array([1.0e9, 1.0e9]), now_s=1.0e9 + 1)
    metrics.batch_done(0.01, now_s=1.0e9 + 1)
    metrics.set_lags({("records", 0): 5}, {("records", 0): 1.5})
    metrics.set_stuck("db_write", 0.0)
    metrics.set_ready(True)
    metrics.lag_lookup_error()
    metrics.set_roles("v1", "v2")
    metrics.record_model("records", "shadow", "v2", 2, 1)
    metrics.model_switched("live")
    metrics.model_load_failed("live", "v3")
    return {sample.name for family in registry.collect() for sample in family.samples}


def referenced_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression, outside string literals (label values)."""
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r'"[^"]*"', '""', expr)))


def test_dashboard_json_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(DASHBOARDS / "build.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{result.stderr}\nrun: python dashboards/build.py"


def test_build_check_detects_a_stale_file(
    build: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "latentwatch.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(build, "OUTPUT", stale)
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    assert json.loads(stale.read_text())["uid"] == "latentwatch"


def test_every_dashboard_query_comes_from_panel_queries(
    build: ModuleType, dashboard: dict[str, Any]
) -> None:
    used = dashboard_exprs(dashboard)
    assert set(used) == set(build.PANEL_QUERIES.values())


@pytest.mark.prometheus
def test_every_dashboard_query_parses(build: ModuleType, tmp_path: Path) -> None:
    def concrete(expr: str) -> str:
        for variable, duration in GRAFANA_INTERVALS.items():
            expr = expr.replace(variable, duration)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        return expr

    recording = [
        {"record": f"dashboard:{key}", "expr": concrete(expr)}
        for key, expr in build.PANEL_QUERIES.items()
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    assert_ok(promtool("check", "rules", str(path)))


def test_dashboard_and_rules_only_use_exposed_metrics(dashboard: dict[str, Any]) -> None:
    exposed = exposed_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exprs = dashboard_exprs(dashboard) + [rule["expr"] for rule in rules()]
    for expr in exprs:
        for name in referenced_names(expr):
            if name.startswith(("latentwatch_", "process_")):
                assert name in exposed, f"{name} (in {expr!r}) is not exposed by StreamMetrics"
            elif ":" in name:
                assert name in recorded, f"{name} (in {expr!r}) is not a recording rule"


def test_every_exposed_metric_is_on_the_dashboard_or_in_a_rule(dashboard: dict[str, Any]) -> None:
    text = " ".join(dashboard_exprs(dashboard) + [rule["expr"] for rule in rules()])
    registry = CollectorRegistry()
    StreamMetrics(registry)
    families = {family.name for family in registry.collect()}
    unused = {name for name in families if name.startswith("latentwatch_") and name not in text}
    assert not unused
    # restarts, memory and CPU are watched (the process collector is registered)
    for name in ("process_start_time_seconds", "process_resident_memory_bytes"):
        assert name in families and name in text
    assert "process_cpu_seconds" in families and "process_cpu_seconds_total" in text


def test_every_dashboard_selector_is_filtered_by_job_and_instance(build: ModuleType) -> None:
    """Two consumers (two models) in one Prometheus: every series a panel reads is narrowed to
    the consumers picked in the job and instance variables, so none pools unrelated models."""
    assert build.PANEL_QUERIES
    for key, expr in build.PANEL_QUERIES.items():
        selectors = list(SERIES_NAME.finditer(expr))
        assert selectors, key
        for match in selectors:
            following = expr[match.end() : match.end() + len(CONSUMER_MATCHERS)]
            assert following == CONSUMER_MATCHERS, f"{key}: {match.group()} unfiltered in {expr}"


def test_dashboard_variables_pick_job_consumer_and_model(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("job", "instance", "model"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        assert variable["multi"] and variable["includeAll"]
    assert variables["instance"]["query"] == (
        'label_values(latentwatch_model_info{job=~"$job"}, instance)'
    )
    assert CONSUMER_MATCHERS in variables["model"]["query"]
    table_sql = [
        t["rawSql"] for p in all_panels(dashboard) for t in p.get("targets", []) if "rawSql" in t
    ]
    assert table_sql and all("${model:sqlstring}" in sql for sql in table_sql)


def test_flagged_records_table_uses_existing_columns(build: ModuleType) -> None:
    table_name = FlaggedRecordRow.__tablename__
    sql = build.FLAGGED_RECORDS_SQL
    assert f"FROM {table_name}" in sql
    assert "ORDER BY scored_time DESC" in sql
    assert "LIMIT 50" in sql
    keywords = {"SELECT", "FROM", "WHERE", "AND", "IN", "ORDER", "BY", "DESC", "LIMIT"}
    without_macros = re.sub(r"\$__\w+|\$\{[^}]*\}", "", sql)
    identifiers = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", without_macros))
    columns = {column.name for column in FlaggedRecordRow.__table__.columns}
    assert identifiers - keywords - {table_name} <= columns
    assert "kafka_partition" in identifiers  # the SQL name, not the ORM attribute `partition`
    assert "model_version" in identifiers  # narrowed to the models of the consumers picked


@pytest.mark.postgres
def test_flagged_records_table_query_runs_on_postgresql(
    build: ModuleType, new_postgres_database: Callable[[str], str]
) -> None:
    """The table panel's SQL as Grafana sends it (its $__timeFilter macro and the model variable
    expanded the way the PostgreSQL datasource does) returns the newest flagged records of the
    range scored by the models picked."""
    url = new_postgres_database("lw_dash")
    engine = make_engine(url)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        write_flagged(
            session_factory(engine),
            [  # every fourth record, the newest among them, scored by another model
                make_record(
                    i,
                    scored_time=now - timedelta(seconds=30 * i),
                    model_version="picked" if i % 4 else "other",
                )
                for i in range(80)
            ],
        )
        start, end = now - timedelta(hours=1), now
        expanded = build.FLAGGED_RECORDS_SQL.replace(
            "$__timeFilter(scored_time)",
            f"scored_time BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        ).replace("${model:sqlstring}", "'picked'")
        with engine.connect() as connection:
            result = connection.execute(text(expanded))
            columns, rows = list(result.keys()), result.all()
    finally:
        engine.dispose()
    assert columns == list(build.FLAGGED_RECORDS_COLUMNS)
    assert len(rows) == 50
    assert {row._mapping["model_version"] for row in rows} == {"picked"}
    times = [row._mapping["scored_time"] for row in rows]
    assert times == sorted(times, reverse=True) and times[0] == now - timedelta(seconds=30)


def test_panels_have_unique_ids_and_targets_have_ref_ids(dashboard: dict[str, Any]) -> None:
    ids = [panel.get("id") for panel in all_panels(dashboard)]
    assert None not in ids
    assert len(ids) == len(set(ids))
    for panel in all_panels(dashboard):
        ref_ids = [target.get("refId") for target in panel.get("targets", [])]
        assert all(ref_ids), panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_datasources_are_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["flagged_db"]["type"] == "datasource"
    assert variables["flagged_db"]["query"] == "grafana-postgresql-datasource"
    assert dashboard["uid"] == "latentwatch"
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in {"${datasource}", "${flagged_db}"}, panel["title"]
        for target in panel.get("targets", []):
            uid = target.get("datasource", panel["datasource"])["uid"]
            assert uid == panel["datasource"]["uid"], panel["title"]


def test_provisioned_datasource_uids_match_the_dashboard_defaults(
    dashboard: dict[str, Any],
) -> None:
    provisioning = DASHBOARDS / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "latentwatch.yaml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    defaults = {v["query"]: v["current"]["value"] for v in dashboard["templating"]["list"]}
    assert by_type["prometheus"]["uid"] == defaults["prometheus"] == "prometheus"
    postgres = by_type["grafana-postgresql-datasource"]
    assert postgres["uid"] == defaults["grafana-postgresql-datasource"] == "latentwatch-postgres"
    assert postgres["jsonData"]["database"] == "latentwatch"
    providers = yaml.safe_load((provisioning / "dashboards" / "latentwatch.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_alerts_carry_severity_and_runbook_annotations() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(alerts) == {
        "LatentwatchFlaggedShareHigh",
        "LatentwatchModelRefused",
        "LatentwatchLatentDriftHigh",
        "LatentwatchMeanSurpriseHigh",
        "LatentwatchConsumerLagGrowing",
        "LatentwatchConsumerStalled",
        "LatentwatchNoRecords",
        "LatentwatchRejectRateHigh",
        "LatentwatchDatabaseWriteFailures",
        "LatentwatchKafkaErrors",
        "LatentwatchTargetDown",
        "LatentwatchTargetMissing",
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        # Only the target alerts may pin the job: the others work under any scrape job name.
        if name not in ALLOWED_TO_NAME_THE_JOB:
            assert "job=" not in rule["expr"], name
        else:
            assert 'up{job="latentwatch"}' in rule["expr"], name


def test_every_alert_and_recording_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    silent = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    exprs = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert firing == alerts
    assert silent == alerts
    assert recorded <= exprs


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    assert_ok(promtool("check", "rules", str(ALERTS)))


@pytest.mark.prometheus
def test_promtool_test_rules() -> None:
    assert_ok(promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")))


@pytest.mark.prometheus
def test_promtool_check_config() -> None:
    assert_ok(promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml")))


@pytest.mark.prometheus
def test_prometheus_helper_runs_a_server(tmp_path: Path) -> None:
    with run_prometheus([], [ALERTS], tmp_path) as prometheus:
        result = prometheus.query("vector(1)")
        assert [sample["value"][1] for sample in result] == ["1"]
        assert prometheus.alerts() == []
        process = prometheus.process
    assert process.poll() is not None  # stopped at exit


@pytest.mark.postgres
def test_shadow_comparison_table_query_runs_on_postgresql(
    build: ModuleType, new_postgres_database: Callable[[str], str]
) -> None:
    """The Models row's comparison table, its macros expanded as Grafana does, on a shadow run
    whose numbers are known: 100 scored, the live model flagged 2, the shadow model 3, one of
    them both; a row of another live model and one outside the range are left out."""
    from storage.records import ModelScore, RunCount  # noqa: PLC0415

    url = new_postgres_database("lw_dash")
    engine = make_engine(url)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    verdicts = [(True, False), (True, True), (False, True), (False, True)]  # (live, shadow)
    rows = [
        ModelScore("shadow", "cand", "t", 0, i, i, None, now, 1.0, 1.0, 1.0, f, "picked", 1.0, lf)
        for i, (lf, f) in enumerate(verdicts)
    ]
    rows.append(
        ModelScore(
            "shadow", "cand", "t", 0, 9, 9, None, now, 1.0, 1.0, 1.0, True, "other", 1.0, False
        )
    )
    old = now - timedelta(days=2)
    rows.append(
        ModelScore(
            "shadow", "cand", "t", 0, 8, 8, None, old, 1.0, 1.0, 1.0, True, "picked", 1.0, True
        )
    )
    counts = [
        RunCount("shadow", "cand", "t", now, 100, 3, 2),
        RunCount("shadow", "cand", "t", old, 50, 50, 50),
    ]
    try:
        write_flagged(session_factory(engine), [], scores=rows, run_counts=counts)
        start, end = now - timedelta(hours=1), now + timedelta(minutes=1)
        between = f"BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'"
        expanded = (
            build.SHADOW_COMPARISON_SQL.replace("$__timeFilter(minute)", f"minute {between}")
            .replace("$__timeFilter(scored_time)", f"scored_time {between}")
            .replace("${model:sqlstring}", "'picked'")
        )
        with engine.connect() as connection:
            result = connection.execute(text(expanded))
            columns, found = list(result.keys()), [tuple(r) for r in result.all()]
    finally:
        engine.dispose()
    assert columns == list(build.SHADOW_COMPARISON_COLUMNS)
    assert found == [("cand", 100, 0.02, 0.03, 1, 4)]
