"""Generate the Grafana dashboard ``dashboards/grafana/latentwatch.json`` from code.

    python dashboards/build.py           # write the JSON
    python dashboards/build.py --check   # exit 1 if the checked-in JSON is out of date

Every PromQL expression is in :data:`PANEL_QUERIES` and the SQL of the flagged-records table is
:data:`FLAGGED_RECORDS_SQL`; the tests (tests/observability/test_obs_dashboards.py) parse them
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
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).resolve().parent / "grafana" / "latentwatch.json"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
FLAGGED_DB = DataSourceRef(type_val="grafana-postgresql-datasource", uid="${flagged_db}")

RATE = "$__rate_interval"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE}])))"


PANEL_QUERIES: dict[str, str] = {
    "consumed_per_s": f"sum(rate(latentwatch_records_consumed_total[{RATE}]))",
    "scored_per_s": f"sum(rate(latentwatch_records_scored_total[{RATE}]))",
    "flagged_per_s": f"sum(rate(latentwatch_records_flagged_total[{RATE}]))",
    "flagged_share": (
        f"sum(rate(latentwatch_records_flagged_total[{RATE}]))"
        f" / sum(rate(latentwatch_records_scored_total[{RATE}]))"
    ),
    "false_alarm_rate": "max(latentwatch_model_false_alarm_rate)",
    "flagged_share_alert": "5 * max(latentwatch_model_false_alarm_rate)",
    "severity_buckets": f"sum by (le) (increase(latentwatch_severity_bucket[{RATE}]))",
    "score_p50": _quantile(0.5, "latentwatch_score_nats"),
    "score_p99": _quantile(0.99, "latentwatch_score_nats"),
    "density_p50": _quantile(0.5, "latentwatch_latent_density_nats"),
    "density_p95": _quantile(0.95, "latentwatch_latent_density_nats"),
    "reconstruction_p50": _quantile(0.5, "latentwatch_reconstruction_nats"),
    "reconstruction_p95": _quantile(0.95, "latentwatch_reconstruction_nats"),
    "lag_by_partition": "sum by (topic, partition) (latentwatch_consumer_lag)",
    "latency_p50": _quantile(0.5, "latentwatch_end_to_end_latency_seconds"),
    "latency_p99": _quantile(0.99, "latentwatch_end_to_end_latency_seconds"),
    "batch_duration_p99": _quantile(0.99, "latentwatch_batch_duration_seconds"),
    "last_batch_age": "time() - max(latentwatch_last_batch_timestamp_seconds)",
    "event_time_age": "time() - max(latentwatch_last_record_timestamp_seconds)",
    "rejects_by_reason": (
        f"sum by (reason) (rate(latentwatch_records_rejected_total[{RATE}])) > 0"
    ),
    "drift_psi": "max by (instance) (latentwatch_drift_psi)",
    "drift_mean_surprise": "max by (instance) (latentwatch_drift_mean_surprise)",
    "drift_window_records": "sum(latentwatch_drift_window_records)",
    "cluster_share": "avg by (cluster) (latentwatch_cluster_share)",
    "reference_cluster_share": "max by (cluster) (latentwatch_reference_cluster_share)",
    "model_info": "max by (version, schema, created_at) (latentwatch_model_info)",
    "db_write_errors": f"sum(increase(latentwatch_db_write_errors_total[{RATE}]))",
    "db_write_retries": f"sum(increase(latentwatch_db_write_retries_total[{RATE}]))",
    "commit_failures": f"sum(increase(latentwatch_commit_failures_total[{RATE}]))",
    "poll_errors": f"sum(increase(latentwatch_poll_errors_total[{RATE}]))",
    "deadletter_errors": f"sum(increase(latentwatch_deadletter_errors_total[{RATE}]))",
    "rebalances": f"sum(increase(latentwatch_rebalances_total[{RATE}]))",
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
    "WHERE $__timeFilter(scored_time)\n"
    "ORDER BY scored_time DESC\n"
    "LIMIT 50"
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


def overview_row() -> Section:
    model = (
        table.Panel()
        .id(5)
        .title("Model")
        .description("The loaded model (latentwatch_model_info), one row per consumer model.")
        .datasource(PROMETHEUS)
        .height(4)
        .span(6)
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
        Section(Row("Overview").id(1))
        .with_panel(
            _stat(2, "Since last batch or idle poll", "s", "last_batch_age")
            .description(
                "Wall-clock age of the last batch; idle polls count, so a quiet stream stays low."
            )
            .thresholds(_thresholds((None, "green"), (60, "orange"), (300, "red")))
        )
        .with_panel(
            _stat(3, "Age of the newest record", "s", "event_time_age").description(
                "now - the newest Kafka message timestamp processed: how far behind real time "
                "the stream is."
            )
        )
        .with_panel(_stat(4, "Records in drift window", "short", "drift_window_records"))
        .with_panel(model)
    )


def throughput_row() -> Section:
    share = _timeseries(
        12,
        "Flagged share vs target false-alarm rate",
        "percentunit",
        ("flagged_share", "flagged share"),
        ("false_alarm_rate", "target false-alarm rate"),
        ("flagged_share_alert", "alert threshold (5× target)"),
    ).description(
        "On reference-like data the flagged share sits near the model's calibrated false-alarm "
        "rate. LatentwatchFlaggedShareHigh fires above 5× for 5 minutes."
    )
    return (
        Section(Row("Throughput").id(10))
        .with_panel(
            _timeseries(
                11,
                "Records per second",
                "ops",
                ("consumed_per_s", "consumed"),
                ("scored_per_s", "scored"),
                ("flagged_per_s", "flagged"),
            )
        )
        .with_panel(share)
    )


def scores_row() -> Section:
    severity = (
        heatmap.Panel()
        .id(21)
        .title("Severity distribution")
        .description("Scored records per severity bucket (0-100) and time step.")
        .datasource(PROMETHEUS)
        .height(8)
        .span(12)
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
        Section(Row("Scores").id(20))
        .with_panel(severity)
        .with_panel(
            _timeseries(
                22,
                "Latent density vs reconstruction (nats)",
                "none",
                ("density_p50", "density p50"),
                ("density_p95", "density p95"),
                ("reconstruction_p50", "reconstruction p50"),
                ("reconstruction_p95", "reconstruction p95"),
            ).description(
                "Which half of the score moves: density = -log p(z) (unusual combination), "
                "reconstruction = -log p(x|z) (a field the model cannot explain)."
            )
        )
        .with_panel(
            _timeseries(
                23,
                "Anomaly score (nats)",
                "none",
                ("score_p50", "p50"),
                ("score_p99", "p99"),
            )
        )
        .with_panel(
            _timeseries(
                24,
                "Rejected records by reason",
                "ops",
                ("rejects_by_reason", "{{reason}}"),
            )
        )
    )


def drift_row() -> Section:
    return (
        Section(Row("Drift").id(30))
        .with_panel(
            _timeseries(31, "Population stability index", "none", ("drift_psi", "{{instance}}"))
            .description("Recent cluster shares vs the reference: < 0.1 stable, > 0.25 shift.")
            .thresholds(_thresholds((None, "green"), (0.1, "orange"), (0.25, "red")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
            .span(8)
        )
        .with_panel(
            _timeseries(
                32,
                "Mean surprise −ln p (reference 1.0)",
                "none",
                ("drift_mean_surprise", "{{instance}}"),
            )
            .description("Mean -ln(p-value) of recent records; 1.0 on reference-like data.")
            .thresholds(_thresholds((None, "green"), (2, "orange"), (5, "red")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
            .span(8)
        )
        .with_panel(
            _timeseries(
                33,
                "Cluster share: recent vs reference",
                "percentunit",
                ("cluster_share", "cluster {{cluster}} recent"),
                ("reference_cluster_share", "cluster {{cluster}} reference"),
            ).span(8)
        )
    )


def consumer_row() -> Section:
    return (
        Section(Row("Consumer").id(40))
        .with_panel(
            _timeseries(
                41,
                "Consumer lag per partition (records)",
                "short",
                ("lag_by_partition", "{{topic}}/{{partition}}"),
            )
        )
        .with_panel(
            _timeseries(
                42,
                "Latency",
                "s",
                ("latency_p50", "end-to-end p50"),
                ("latency_p99", "end-to-end p99"),
                ("batch_duration_p99", "batch duration p99"),
            ).description("End-to-end: Kafka message timestamp to its batch being persisted.")
        )
        .with_panel(
            _timeseries(
                43,
                "Database writes",
                "short",
                ("db_write_errors", "write errors"),
                ("db_write_retries", "write retries"),
            )
        )
        .with_panel(
            _timeseries(
                44,
                "Poll errors, commit failures, dead-letter errors, rebalances",
                "short",
                ("poll_errors", "poll errors"),
                ("commit_failures", "commit failures"),
                ("deadletter_errors", "dead-letter errors"),
                ("rebalances", "rebalances"),
            )
        )
    )


def flagged_row() -> Section:
    records = (
        table.Panel()
        .id(51)
        .title("Latest flagged records")
        .description("The 50 newest rows of flagged_records in the time range (PostgreSQL).")
        .datasource(FLAGGED_DB)
        .height(12)
        .span(24)
        .with_target(Sql("A", FLAGGED_RECORDS_SQL))
    )
    return Section(Row("Flagged records").id(50)).with_panel(records)


def build_dashboard() -> Dashboard:
    dashboard = (
        Dashboard("Latentwatch")
        .uid("latentwatch")
        .description("Anomaly detection on a Kafka stream: throughput, scores, drift, consumer.")
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
    for section in (
        overview_row(),
        throughput_row(),
        scores_row(),
        drift_row(),
        consumer_row(),
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
