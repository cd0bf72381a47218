"""Generate the Grafana dashboard ``dashboards/grafana/latentwatch.json`` from code.

    python dashboards/build.py           # write the JSON
    python dashboards/build.py --check   # exit 1 if the checked-in JSON is out of date

Every PromQL expression is in :data:`PANEL_QUERIES` and the SQL of the flagged-records table is
:data:`FLAGGED_RECORDS_SQL`; the tests (tests/deployment/test_deployment_dashboards.py) parse them
with promtool and check their metric and column names against the code.
Datasources are dashboard variables: ``${datasource}`` (Prometheus) and ``${flagged_db}``
(PostgreSQL), provisioned with the fixed uids ``prometheus`` and ``latentwatch-postgres``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.heatmap import RowsHeatmapOptions, YAxisConfig
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    GraphThresholdsStyleMode,
    HeatmapCellLayout,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Panel,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).resolve().parent / "grafana" / "latentwatch.json"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
FLAGGED_DB = DataSourceRef(type_val="grafana-postgresql-datasource", uid="${flagged_db}")

RATE = "$__rate_interval"
# Every selector is filtered by the dashboard's job and instance variables: two consumers with two
# models in one Prometheus are never pooled, and the panels follow the consumer(s) picked.
CONSUMER = 'job=~"$job", instance=~"$instance"'
# Ages keep growing after a consumer dies: Prometheus marks its series stale at the first failed
# scrape, and a plain `time() - gauge` would stop answering (Grafana then shows the last age it
# had, frozen). last_over_time over a day keeps the last value seen to subtract from.
AGE_LOOKBACK = "1d"


def _m(name: str, matchers: str = "") -> str:
    """``name`` filtered by the job and instance variables (and ``matchers``)."""
    return f"{name}{{{CONSUMER}{', ' + matchers if matchers else ''}}}"


def _quantile(q: float, histogram: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (instance, le) "
        f"(rate({_m(histogram + '_bucket')}[{RATE}])))"
    )


def _age(timestamp: str) -> str:
    return f"time() - max by (instance) (last_over_time({_m(timestamp)}[{AGE_LOOKBACK}]))"


def _per_s(counter: str) -> str:
    return f"sum by (instance) (rate({_m(counter)}[{RATE}]))"


def _increase(counter: str) -> str:
    return f"sum by (instance) (increase({_m(counter)}[{RATE}]))"


PANEL_QUERIES: dict[str, str] = {
    # health
    "up": f"max by (instance) ({_m('up')})",
    "ready": f"max by (instance) ({_m('latentwatch_ready')})",
    "last_batch_age": _age("latentwatch_last_batch_timestamp_seconds"),
    "event_time_age": _age("latentwatch_last_record_timestamp_seconds"),
    "stuck_operations": (
        f"max by (instance, operation) ({_m('latentwatch_operation_stuck_seconds')})"
    ),
    "restarts": f"sum by (instance) (changes({_m('process_start_time_seconds')}[1h]))",
    "resident_memory": f"max by (instance) ({_m('process_resident_memory_bytes')})",
    "cpu": _per_s("process_cpu_seconds_total"),
    "open_fds_share": (f"max by (instance) ({_m('process_open_fds')} / {_m('process_max_fds')})"),
    # overview
    "drift_window_records": f"max by (instance) ({_m('latentwatch_drift_window_records')})",
    "model_info": (
        f"max by (instance, version, schema, created_at) ({_m('latentwatch_model_info')})"
    ),
    # throughput; the share is the alert's own recording rule (10 minutes)
    "consumed_per_s": _per_s("latentwatch_records_consumed_total"),
    "scored_per_s": _per_s("latentwatch_records_scored_total"),
    "flagged_per_s": _per_s("latentwatch_records_flagged_total"),
    "flagged_share": _m("instance:latentwatch_flagged_share:ratio10m"),
    "false_alarm_rate": f"max by (instance) ({_m('latentwatch_model_false_alarm_rate')})",
    "flagged_share_alert": f"5 * max by (instance) ({_m('latentwatch_model_false_alarm_rate')})",
    # scores: the heatmap counts the records scored in each time step ($__interval), no overlap
    "severity_buckets": f"sum by (le) (increase({_m('latentwatch_severity_bucket')}[$__interval]))",
    "score_p50": _quantile(0.5, "latentwatch_score_nats"),
    "score_p99": _quantile(0.99, "latentwatch_score_nats"),
    "density_p50": _quantile(0.5, "latentwatch_latent_density_nats"),
    "density_p95": _quantile(0.95, "latentwatch_latent_density_nats"),
    "reconstruction_p50": _quantile(0.5, "latentwatch_reconstruction_nats"),
    "reconstruction_p95": _quantile(0.95, "latentwatch_reconstruction_nats"),
    "rejects_by_reason": (
        f"sum by (instance, reason) (rate({_m('latentwatch_records_rejected_total')}[{RATE}])) > 0"
    ),
    # drift
    "drift_psi": f"max by (instance) ({_m('latentwatch_drift_psi')})",
    # models (the registry's live and shadow models)
    "model_flag_rate": (
        f"sum by (role, version) (rate({_m('latentwatch_model_records_flagged_total')}[{RATE}]))"
        f" / sum by (role, version) "
        f"(rate({_m('latentwatch_model_records_scored_total')}[{RATE}]))"
    ),
    "model_role": f"max by (instance, role, version) ({_m('latentwatch_model_role')})",
    "model_switches": (
        f"sum by (instance, role) (increase({_m('latentwatch_model_switches_total')}[{RATE}]))"
    ),
    "model_load_failing": (
        f"max by (instance, role, version) ({_m('latentwatch_model_load_failing')})"
    ),
    "model_load_failures": (
        f"sum by (instance, role) (increase({_m('latentwatch_model_load_failures_total')}[{RATE}]))"
    ),
    "drift_mean_surprise": f"max by (instance) ({_m('latentwatch_drift_mean_surprise')})",
    "cluster_share": f"max by (instance, cluster) ({_m('latentwatch_cluster_share')})",
    "reference_cluster_share": (
        f"max by (instance, cluster) ({_m('latentwatch_reference_cluster_share')})"
    ),
    # consumer
    "lag_by_partition": (f"sum by (instance, topic, partition) ({_m('latentwatch_consumer_lag')})"),
    "lag_seconds_by_partition": (
        f"max by (instance, topic, partition) ({_m('latentwatch_consumer_lag_seconds')})"
    ),
    "latency_p50": _quantile(0.5, "latentwatch_end_to_end_latency_seconds"),
    "latency_p99": _quantile(0.99, "latentwatch_end_to_end_latency_seconds"),
    "batch_duration_p99": _quantile(0.99, "latentwatch_batch_duration_seconds"),
    "db_write_errors": _increase("latentwatch_db_write_errors_total"),
    "db_write_retries": _increase("latentwatch_db_write_retries_total"),
    "commit_failures": _increase("latentwatch_commit_failures_total"),
    "poll_errors": _increase("latentwatch_poll_errors_total"),
    "deadletter_errors": _increase("latentwatch_deadletter_errors_total"),
    "rebalances": _increase("latentwatch_rebalances_total"),
    "lag_lookup_errors": _increase("latentwatch_lag_lookup_errors_total"),
}

# Dashboard variables: (name, label, Prometheus variable query). The model variable carries the
# instance choice over to the flagged-records table, which reads SQL, not Prometheus.
VARIABLE_QUERIES: dict[str, tuple[str, str]] = {
    "job": ("Job", "label_values(latentwatch_model_info, job)"),
    "instance": ("Consumer", 'label_values(latentwatch_model_info{job=~"$job"}, instance)'),
    "model": ("Model", f"label_values({_m('latentwatch_model_info')}, version)"),
}

FLAGGED_RECORDS_COLUMNS = (
    "scored_time",
    "event_time",
    "severity",
    "score",
    "p_value",
    "density",
    "reconstruction",
    "cluster",
    "top_feature",
    "record_id",
    "topic",
    "kafka_partition",
    "kafka_offset",
    "model_version",
    "id",
)
FLAGGED_RECORDS_SQL = (
    f"SELECT {', '.join(FLAGGED_RECORDS_COLUMNS)}\n"
    "FROM flagged_records\n"
    "WHERE $__timeFilter(scored_time) AND model_version IN (${model:sqlstring})\n"
    "ORDER BY scored_time DESC\n"
    "LIMIT 50"
)


# Live against shadow over the time range, per shadow model, for the consumers' live models
# picked (docs/lifecycle.md; the full comparison is GET /api/models/compare).
SHADOW_COMPARISON_COLUMNS = (
    "shadow_version",
    "scored",
    "live_flag_rate",
    "shadow_flag_rate",
    "both_flagged",
    "either_flagged",
)
SHADOW_COMPARISON_SQL = (
    "SELECT c.model_version AS shadow_version, c.scored,\n"
    "  c.live_flagged::float / NULLIF(c.scored, 0) AS live_flag_rate,\n"
    "  c.flagged::float / NULLIF(c.scored, 0) AS shadow_flag_rate,\n"
    "  s.both_flagged, s.either_flagged\n"
    "FROM (SELECT model_version, SUM(scored) AS scored, SUM(flagged) AS flagged,\n"
    "    SUM(live_flagged) AS live_flagged\n"
    "  FROM run_counts WHERE run = 'shadow' AND $__timeFilter(minute)\n"
    "  GROUP BY model_version) c\n"
    "JOIN (SELECT model_version,\n"
    "    SUM(CASE WHEN flagged AND live_flagged THEN 1 ELSE 0 END) AS both_flagged,\n"
    "    COUNT(*) AS either_flagged\n"
    "  FROM model_scores\n"
    "  WHERE run = 'shadow' AND $__timeFilter(scored_time)\n"
    "    AND live_version IN (${model:sqlstring})\n"
    "  GROUP BY model_version) s ON s.model_version = c.model_version\n"
    "ORDER BY c.scored DESC"
)


@dataclass
class SqlQuery(cogvariants.Dataquery):
    """A raw-SQL target of the PostgreSQL datasource (the SDK has no builder for it)."""

    ref_id: str
    raw_sql: str

    def to_json(self) -> dict[str, Any]:
        return {
            "datasource": FLAGGED_DB.to_json(),
            "editorMode": "code",
            "format": "table",
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


@dataclass
class Sql(cogbuilder.Builder[SqlQuery]):
    ref_id: str
    raw_sql: str

    def build(self) -> SqlQuery:
        return SqlQuery(self.ref_id, self.raw_sql)


@dataclass
class Section:
    """A row and the panels under it. Grafana stores an expanded row's panels after the row at
    the top level (not inside it), so the dashboard adds them one by one."""

    row: Row
    panels: list[cogbuilder.Builder[Panel]] = field(default_factory=list)

    def with_panel(self, panel: cogbuilder.Builder[Panel]) -> Section:
        self.panels.append(panel)
        return self


def _targets(*queries: tuple[str, str]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    """Prometheus targets from (PANEL_QUERIES key, legend) pairs, refIds A, B, C, ..."""
    return [
        prometheus.Dataquery().expr(PANEL_QUERIES[key]).legend_format(legend).ref_id(chr(65 + i))
        for i, (key, legend) in enumerate(queries)
    ]


def _timeseries(
    panel_id: int, title: str, unit: str, *queries: tuple[str, str], width: int = 12
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(panel_id)
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .height(8)
        .span(width)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .targets(_targets(*queries))
    )


def _stat(panel_id: int, title: str, unit: str, key: str) -> stat.Panel:
    return (
        stat.Panel()
        .id(panel_id)
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .height(4)
        .span(6)
        .targets(_targets((key, title)))
    )


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=v, color=c) for v, c in steps])
    )


def health_row() -> Section:
    stuck = _timeseries(
        7,
        "Stuck operations (s running past the threshold)",
        "s",
        ("stuck_operations", "{{instance}} {{operation}}"),
        width=8,
    ).description(
        "How long the loop's current poll, database write, dead-letter send or commit has been "
        "running once past the consumer's stuck threshold (10 s); 0 otherwise. Published by the "
        "consumer's watchdog thread, so it keeps counting while the loop hangs."
    )
    process = _timeseries(
        8,
        "Process: restarts in the last hour, CPU, share of file descriptors",
        "short",
        ("restarts", "{{instance}} restarts (1 h)"),
        ("cpu", "{{instance}} CPU cores"),
        ("open_fds_share", "{{instance}} open fds / max"),
        width=8,
    )
    memory = _timeseries(
        9, "Resident memory", "bytes", ("resident_memory", "{{instance}}"), width=8
    )
    return (
        Section(Row("Health").id(1))
        .with_panel(
            _stat(2, "Scrape target up", "none", "up")
            .description("1: Prometheus scrapes the consumer; 0: it is down or unreachable.")
            .thresholds(_thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            _stat(3, "Ready", "none", "ready")
            .description(
                "1: the consumer is in its group and no operation is stuck (its /ready answers "
                "200); 0: starting, stuck or stopping."
            )
            .thresholds(_thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            _stat(4, "Since last committed batch", "s", "last_batch_age")
            .description(
                "Seconds since the consumer last committed a batch (or started). Keeps growing "
                "after the consumer dies. On a quiet stream it grows too: look at the lag."
            )
            .thresholds(_thresholds((None, "green"), (60, "orange"), (300, "red")))
        )
        .with_panel(
            _stat(5, "Age of the newest record", "s", "event_time_age").description(
                "now - the newest Kafka message timestamp processed: how far behind real time "
                "the stream is. Keeps growing after the consumer dies."
            )
        )
        .with_panel(stuck)
        .with_panel(process)
        .with_panel(memory)
    )


def overview_row() -> Section:
    model = (
        table.Panel()
        .id(13)
        .title("Model per consumer")
        .description("The model each consumer runs (latentwatch_model_info), one row each.")
        .datasource(PROMETHEUS)
        .height(4)
        .span(18)
        .targets(
            [
                prometheus.Dataquery()
                .expr(PANEL_QUERIES["model_info"])
                .format(PromQueryFormat.TABLE)
                .instant()
                .ref_id("A")
            ]
        )
    )
    return (
        Section(Row("Overview").id(10))
        .with_panel(_stat(11, "Records in drift window (10 min)", "short", "drift_window_records"))
        .with_panel(model)
    )


def throughput_row() -> Section:
    share = _timeseries(
        22,
        "Flagged share (10 min) vs target false-alarm rate",
        "percentunit",
        ("flagged_share", "{{instance}} flagged share"),
        ("false_alarm_rate", "{{instance}} target false-alarm rate"),
        ("flagged_share_alert", "{{instance}} alert threshold (5× target)"),
    ).description(
        "The share LatentwatchFlaggedShareHigh alerts on (recording rule, 10-minute window, held "
        "through a stall). On reference-like data it sits near the model's calibrated "
        "false-alarm rate; the alert fires above 5× for 5 minutes."
    )
    return (
        Section(Row("Throughput").id(20))
        .with_panel(
            _timeseries(
                21,
                "Records per second",
                "ops",
                ("consumed_per_s", "{{instance}} consumed"),
                ("scored_per_s", "{{instance}} scored"),
                ("flagged_per_s", "{{instance}} flagged"),
            )
        )
        .with_panel(share)
    )


def scores_row() -> Section:
    severity = (
        heatmap.Panel()
        .id(31)
        .title("Severity distribution")
        .description("Records scored per severity bucket (0-100) in each time step.")
        .datasource(PROMETHEUS)
        .height(8)
        .span(12)
        .interval("1m")  # at least a few scrapes per step, so increase() has samples to use
        .calculate(False)
        .rows_frame(RowsHeatmapOptions().layout(HeatmapCellLayout.LE).value("records"))
        .y_axis(YAxisConfig().unit("short").min(0))
        .with_target(
            prometheus.Dataquery()
            .expr(PANEL_QUERIES["severity_buckets"])
            .format(PromQueryFormat.HEATMAP)
            .legend_format("{{le}}")
            .ref_id("A")
        )
    )
    return (
        Section(Row("Scores").id(30))
        .with_panel(severity)
        .with_panel(
            _timeseries(
                32,
                "Latent density vs reconstruction (nats)",
                "none",
                ("density_p50", "{{instance}} density p50"),
                ("density_p95", "{{instance}} density p95"),
                ("reconstruction_p50", "{{instance}} reconstruction p50"),
                ("reconstruction_p95", "{{instance}} reconstruction p95"),
            ).description(
                "Which half of the score moves: density = -log p(z) (unusual combination), "
                "reconstruction = -log p(x|z) (a field the model cannot explain)."
            )
        )
        .with_panel(
            _timeseries(
                33,
                "Anomaly score (nats)",
                "none",
                ("score_p50", "{{instance}} p50"),
                ("score_p99", "{{instance}} p99"),
            ).description("Buckets reach 100,000 nats: anomalies score in the tens of thousands.")
        )
        .with_panel(
            _timeseries(
                34,
                "Rejected records by reason",
                "ops",
                ("rejects_by_reason", "{{instance}} {{reason}}"),
            )
        )
    )


def drift_row() -> Section:
    return (
        Section(Row("Drift").id(40))
        .with_panel(
            _timeseries(41, "Population stability index", "none", ("drift_psi", "{{instance}}"))
            .description("Last 10 minutes' cluster shares vs the reference: > 0.25 is a shift.")
            .thresholds(_thresholds((None, "green"), (0.1, "orange"), (0.25, "red")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
            .span(8)
        )
        .with_panel(
            _timeseries(
                42,
                "Mean surprise −ln p (reference 1.0)",
                "none",
                ("drift_mean_surprise", "{{instance}}"),
            )
            .description(
                "Mean -ln(p-value) of the last 10 minutes' records; 1.0 on reference-like data. "
                "LatentwatchMeanSurpriseHigh fires above 2."
            )
            .thresholds(_thresholds((None, "green"), (2, "orange"), (5, "red")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
            .span(8)
        )
        .with_panel(
            _timeseries(
                43,
                "Cluster share: recent vs reference",
                "percentunit",
                ("cluster_share", "{{instance}} cluster {{cluster}} recent"),
                ("reference_cluster_share", "{{instance}} cluster {{cluster}} reference"),
            ).span(8)
        )
    )


def models_row() -> Section:
    return (
        Section(Row("Models").id(70))
        .with_panel(
            _timeseries(
                71,
                "Flag rate by model (live, shadow)",
                "percentunit",
                ("model_flag_rate", "{{role}} {{version}}"),
            ).description(
                "Share of scored records each model flags; compare with its calibrated "
                "false-alarm rate (docs/lifecycle.md). Shadow flags never alert."
            )
        )
        .with_panel(
            _timeseries(
                72,
                "Models in use and refused",
                "none",
                ("model_role", "{{instance}} {{role}} {{version}}"),
                ("model_load_failing", "{{instance}} cannot load {{role}} {{version}}"),
                ("model_switches", "{{instance}} {{role}} switches"),
                ("model_load_failures", "{{instance}} {{role}} load failures"),
            ).description(
                "1 per consumer for the versions it scores with; a 'cannot load' line means "
                "the registry's model was refused here and the previous one kept."
            )
        )
        .with_panel(
            table.Panel()
            .id(73)
            .title("Live against shadow")
            .description(
                "Per shadow model over the time range: the records both models scored, each "
                "one's flag rate (compare with its calibrated false-alarm rate) and the flagged "
                "records they share (PostgreSQL; precision and rank correlation: "
                "GET /api/models/compare)."
            )
            .datasource(FLAGGED_DB)
            .height(6)
            .span(24)
            .with_target(Sql("A", SHADOW_COMPARISON_SQL))
        )
    )


def consumer_row() -> Section:
    return (
        Section(Row("Consumer").id(50))
        .with_panel(
            _timeseries(
                51,
                "Consumer lag per partition (records)",
                "short",
                ("lag_by_partition", "{{instance}} {{topic}}/{{partition}}"),
            ).description(
                "End offset - committed offset, looked up by the consumer's watchdog thread: it "
                "keeps growing while the loop hangs."
            )
        )
        .with_panel(
            _timeseries(
                52,
                "Consumer lag per partition (seconds)",
                "s",
                ("lag_seconds_by_partition", "{{instance}} {{topic}}/{{partition}}"),
            ).description("How long the next uncommitted record of each partition has waited.")
        )
        .with_panel(
            _timeseries(
                53,
                "Latency",
                "s",
                ("latency_p50", "{{instance}} end-to-end p50"),
                ("latency_p99", "{{instance}} end-to-end p99"),
                ("batch_duration_p99", "{{instance}} batch duration p99"),
            ).description(
                "End-to-end: Kafka message timestamp to its batch being persisted (buckets up to "
                "1 h)."
            )
        )
        .with_panel(
            _timeseries(
                54,
                "Database writes",
                "short",
                ("db_write_errors", "{{instance}} write errors"),
                ("db_write_retries", "{{instance}} write retries"),
            )
        )
        .with_panel(
            _timeseries(
                55,
                "Poll errors, commit failures, dead-letter errors, rebalances, lag look-ups",
                "short",
                ("poll_errors", "{{instance}} poll errors"),
                ("commit_failures", "{{instance}} commit failures"),
                ("deadletter_errors", "{{instance}} dead-letter errors"),
                ("rebalances", "{{instance}} rebalances"),
                ("lag_lookup_errors", "{{instance}} failed lag look-ups"),
            ).span(24)
        )
    )


def flagged_row() -> Section:
    records = (
        table.Panel()
        .id(61)
        .title("Latest flagged records")
        .description(
            "The 50 newest rows of flagged_records in the time range scored by the models of the "
            "consumers picked (PostgreSQL)."
        )
        .datasource(FLAGGED_DB)
        .height(12)
        .span(24)
        .with_target(Sql("A", FLAGGED_RECORDS_SQL))
    )
    return Section(Row("Flagged records").id(60)).with_panel(records)


def build_dashboard() -> Dashboard:
    dashboard = (
        Dashboard("Latentwatch")
        .uid("latentwatch")
        .description(
            "Anomaly detection on a Kafka stream: health, throughput, scores, drift, consumer."
        )
        .tags(["latentwatch", "anomaly-detection"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value="prometheus"))
        )
        .with_variable(
            DatasourceVariable("flagged_db")
            .label("Flagged records DB")
            .type("grafana-postgresql-datasource")
            .current(
                VariableOption(
                    selected=True, text="Latentwatch PostgreSQL", value="latentwatch-postgres"
                )
            )
        )
    )
    for name, (label, query) in VARIABLE_QUERIES.items():
        dashboard.with_variable(
            QueryVariable(name)
            .label(label)
            .datasource(PROMETHEUS)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
    for section in (
        health_row(),
        overview_row(),
        throughput_row(),
        scores_row(),
        drift_row(),
        consumer_row(),
        models_row(),
        flagged_row(),
    ):
        dashboard.with_row(section.row)
        for panel in section.panels:
            dashboard.with_panel(panel)
    return dashboard


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the JSON on disk is out of date"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python dashboards/build.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
