"""The Grafana dashboards, as code (Grafana Foundation SDK): ``churn monitoring dashboards`` writes
them to ``monitoring/grafana/dashboards/*.json``, which Grafana provisions (``provisioning/``).

Every panel reads the Prometheus datasource provisioned with uid ``prometheus``; each PromQL
expression is either a recording rule of ``monitoring/prometheus/rules/recording.yml`` or a
metric the streaming job, the scoring worker or the nightly batch exports. A test runs every
expression against the real Prometheus of a running pipeline (tests/test_monitoring.py), and
tests/test_dashboards_schema.py validates the JSON against Grafana's dashboard schema
(``schema/dashboard.schema.json``).

>>> sorted(d.uid for d in DASHBOARDS)
['churn-health', 'churn-latency', 'churn-model']
>>> len(expressions()) > 20
True
>>> json.loads(as_json(LATENCY))["panels"][0]["fieldConfig"]["defaults"]["unit"]
's'
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import prometheus as prometheus_m

FOLDER = Path(__file__).parent / "dashboards"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="prometheus")
Panel = timeseries_b.Panel | stat_b.Panel | heatmap_b.Panel


def _target(i: int, expr: str, legend: str,
            fmt: prometheus_m.PromQueryFormat = prometheus_m.PromQueryFormat.TIME_SERIES) -> prometheus_b.Dataquery:
    return (prometheus_b.Dataquery().ref_id(chr(ord("A") + i)).datasource(DATASOURCE).expr(expr)
            .legend_format(legend).format(fmt).range())


def _thresholds(thresholds: list[tuple[float, str]] | None, base: str = "green") -> dashboard_b.ThresholdsConfig:
    """Grafana threshold steps: ``base`` below the first (value, colour)."""
    steps = [model.Threshold(value=None, color=base)]
    steps += [model.Threshold(value=v, color=c) for v, c in (thresholds or [])]
    return dashboard_b.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def series(title: str, description: str, *queries: tuple[str, str], unit: str = "short", width: int = 12,
           thresholds: list[tuple[float, str]] | None = None) -> timeseries_b.Panel:
    """A time-series panel; ``queries`` are (PromQL, legend) pairs."""
    return (timeseries_b.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets([_target(i, expr, legend) for i, (expr, legend) in enumerate(queries)])
            .unit(unit).thresholds(_thresholds(thresholds))
            .grid_pos(model.GridPos(h=8, w=width, x=0, y=0))
            .color_scheme(dashboard_b.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
            .draw_style(common.GraphDrawStyle.LINE).line_width(1).fill_opacity(0)
            .show_points(common.VisibilityMode.AUTO)
            .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(
                common.GraphTresholdsStyleMode.LINE if thresholds else common.GraphTresholdsStyleMode.OFF))
            .legend(common_b.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).calcs([]))
            .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE).sort(common.SortOrder.NONE)))


def stat(title: str, description: str, expr: str, legend: str = "", unit: str = "short",
         thresholds: list[tuple[float, str]] | None = None, base: str = "green") -> stat_b.Panel:
    """A single-value panel: the last non-null value of ``expr``, coloured ``base`` below the first threshold."""
    return (stat_b.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets([_target(0, expr, legend)]).unit(unit).thresholds(_thresholds(thresholds, base)).no_value("none")
            .grid_pos(model.GridPos(h=4, w=6, x=0, y=0))
            .color_mode(common.BigValueColorMode.VALUE).graph_mode(common.BigValueGraphMode.AREA)
            .justify_mode(common.BigValueJustifyMode.AUTO).orientation(common.VizOrientation.AUTO)
            .text_mode(common.BigValueTextMode.AUTO)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)))


def buckets(title: str, description: str, expr: str, legend: str = "{{le}}", width: int = 12) -> heatmap_b.Panel:
    """A heatmap of a Prometheus histogram's buckets (``expr`` sums ``rate(..._bucket)`` by ``le``)."""
    return (heatmap_b.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets([_target(0, expr, legend, prometheus_m.PromQueryFormat.HEATMAP)])
            .grid_pos(model.GridPos(h=8, w=width, x=0, y=0))
            .calculate(False).rows_frame(heatmap_b.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
            .color(heatmap_b.HeatmapColorOptions().mode(heatmap_m.HeatmapColorMode.SCHEME).scheme("Oranges")
                   .scale(heatmap_m.HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(128))
            .y_axis(heatmap_b.YAxisConfig().axis_placement(common.AxisPlacement.LEFT).reverse(False))
            .cell_gap(2).show_value(common.VisibilityMode.NEVER).hide_legend().show_tooltip())


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> model.Dashboard:
    """Panels left to right, wrapping at Grafana's 24 columns; ids in order."""
    board = (dashboard_b.Dashboard(title).uid(uid).description(description).tags(["churn"]).timezone("utc")
             .refresh("10s").time("now-30m", "now").tooltip(model.DashboardCursorSync.OFF)
             .annotations([]).variables([]))
    x = y = row_h = 0
    for i, panel in enumerate(panels, start=1):
        size = panel.build().grid_pos
        assert size is not None
        w, h = size.w, size.h
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        board.with_panel(panel.id(i).grid_pos(model.GridPos(h=h, w=w, x=x, y=y)))
        x, row_h = x + w, max(row_h, h)
    return board.build()


LATENCY = dashboard("churn-latency", "Churn: latency", "How fast a CDR becomes a score, an alert and a feature.", [
    series("CDR produced → scored (end to end)",
           "Kafka produce time of the CDR to the time its score (and any alert) was produced, in the same "
           "transaction. Budget: p99 under 1 s (alert ChurnEndToEndLatencyHigh).",
           ("churn:score_e2e_latency_seconds:p50", "p50"), ("churn:score_e2e_latency_seconds:p95", "p95"),
           ("churn:score_e2e_latency_seconds:p99", "p99"), unit="s", thresholds=[(1.0, "red")]),
    series("CDR produced → alert emitted",
           "The same for the CDRs that raised a churn-risk alert (empty while no alerts are raised).",
           ("churn:alert_e2e_latency_seconds:p50", "p50"), ("churn:alert_e2e_latency_seconds:p99", "p99"),
           unit="s"),
    series("Scoring a batch", "One scoring batch: feature lookup, both models, alert rules, produce.",
           ("churn:score_batch_seconds:p99", "batch p99"),
           ("histogram_quantile(0.99, sum by (le) (rate(churn_score_model_seconds_bucket[1m])))", "model call p99"),
           unit="s", width=8),
    series("Feast online lookup", "One batched read of profile and activity features from Feast's Redis store.",
           ("churn:score_lookup_seconds:p99", "p99"),
           ("histogram_quantile(0.5, sum by (le) (rate(churn_score_lookup_seconds_bucket[1m])))", "p50"),
           unit="s", width=8),
    series("Scorer transaction commits",
           "Committing the scorer's transactions (scores, alerts and offsets of each partition; every "
           "COMMIT_INTERVAL_S) and how long a batch waited for the commit in flight: part of the latency tail.",
           ("histogram_quantile(0.99, sum by (le) (rate(churn_score_commit_seconds_bucket[1m])))", "commit p99"),
           ("histogram_quantile(0.99, sum by (le) (rate(churn_score_commit_wait_seconds_bucket[1m])))",
            "batch wait p99"),
           unit="s", width=8),
    series("Spark micro-batch duration", "Duration of the streaming job's micro-batches, per query.",
           ("churn:stream_batch_duration_seconds:p99", "{{query}} p99"),
           ("sum by (query) (rate(churn_stream_batch_duration_seconds_sum[5m])) / "
            "sum by (query) (rate(churn_stream_batch_duration_seconds_count[5m]))", "{{query}} mean"),
           unit="s", width=24),
    series("Feast staleness",
           "How old the newest event whose features reached Feast is (alert ChurnFeatureFreshnessStale over "
           "2 min). Decisions do not wait for it: the scorer adds the CDRs Feast lacks (next panels).",
           ("time() - churn_stream_newest_pushed_event_timestamp_seconds", "now − newest pushed event"),
           ("churn:stream_feature_push_lag_seconds:p99", "at push, p99"),
           unit="s", width=12, thresholds=[(120, "red")]),
    series("CDRs left out of decisions",
           "Valid CDRs up to the trigger that a decision's input lacked (must be 0; above 0 only when the "
           "overlay's cap was reached because the streaming job stopped), and inexact decisions by cause.",
           ("sum(rate(churn_score_events_not_included_total[5m]))", "left out/s"),
           ("sum by (basis) (rate(churn_score_inexact_decisions_total[5m]))", "inexact: {{basis}}"),
           unit="ops", width=12, thresholds=[(0.0001, "red")]),
    series("Scorer overlay",
           "CDRs the scorer holds because the streaming job's pushed state does not cover them yet, dropped "
           "at the cap, and CDRs added per decision on top of the pushed state (p99).",
           ("sum(churn_score_overlay_buffered_events)", "buffered"),
           ("sum(churn_score_overlay_dropped_events)", "dropped at the cap"),
           ("histogram_quantile(0.99, sum by (le) (rate(churn_score_overlay_added_events_bucket[5m])))",
            "added per decision, p99"), width=12),
    series("Rescored quiet customers",
           "Customers scored again at the current time after SCORING__RESCORE_AFTER_S without a CDR.",
           ("sum(rate(churn_score_rescored_total[5m]))", "rescored/s"), unit="ops", width=12),
])

HEALTH = dashboard("churn-health", "Churn: throughput and health", "Events per stage, lag, dead letters, degradation.", [
    series("Events per second, by stage",
           "Rows read from Kafka by each streaming query, valid events written to Silver, CDRs scored.",
           ("churn:stream_input_rows:rate1m", "stream {{query}} in"),
           ("sum(rate(churn_stream_silver_rows_total[1m]))", "to Silver"),
           ("churn:score_events:rate1m", "scored"), unit="ops"),
    series("Scoring consumer lag, per partition", "CDRs on each cdr partition not yet scored (alert ChurnScorerLagGrowing).",
           ("churn_score_consumer_lag", "partition {{partition}}"), ("churn:score_consumer_lag:sum", "total")),
    series("Dead-lettered CDRs by reason", "Quarantined (Delta) and sent to cdr.dlq, per reason; share of input "
           "(alert ChurnDeadLetterRateHigh over 5 %).",
           ("sum by (reason) (rate(churn_stream_quarantined_rows_total[5m]))", "{{reason}}"), unit="ops"),
    series("Degraded scores", "Decisions marked degraded: the online store did not answer, or the input was not "
           "exactly the CDRs up to the trigger (alert ChurnScorerDegraded).",
           ("sum(rate(churn_score_degraded_events_total[5m]))", "degraded/s"),
           ("min(churn_score_online_store_up)", "online store up")),
    stat("Dead-letter share (5 min)", "Quarantined over input rows.", "churn:stream_quarantined_share:rate5m",
         unit="percentunit", thresholds=[(0.05, "red")]),
    stat("Duplicates dropped (total)", "Repeated event_ids dropped by the stream's de-duplication.",
         "sum(churn_stream_duplicates_dropped_total)"),
    stat("Last nightly quality gate", "1 = the Gold quality gate passed in the last nightly run "
         "(alert ChurnQualityGateFailed).", "min(churn_batch_quality_gate_passed)",
         thresholds=[(0.5, "green")], base="red"),
    stat("Hours since the nightly run", "Alert ChurnNightlyMissing over 26 h.",
         "(time() - max(churn_batch_last_run_timestamp_seconds)) / 3600", thresholds=[(26, "red")]),
    series("Components up", "1 when Prometheus can scrape the component; Kafka and Redis as probed by the "
           "blackbox exporter (TCP connect, Redis PING).",
           ("up", "{{job}}"), ("probe_success", "{{job}} answers ({{instance}})"),
           ("churn_stream_query_active", "query {{query}}"), width=24),
])

MODEL = dashboard("churn-model", "Churn: model", "What the models say and whether the world still looks like training.", [
    series("Alerts by band", "Churn-risk alerts emitted per minute, by band.",
           ("sum by (band) (rate(churn_alerts_total[5m])) * 60", "{{band}}"), unit="short"),
    buckets("Score distribution", "Champion risk of scored events, per 0.05 bucket.",
            "sum by (le) (rate(churn_score_risk_bucket[5m]))"),
    series("Online ROC AUC, champion vs challenger",
           "Rolling ROC AUC on arriving churn labels (predict, then learn): the XGBoost champion and the river "
           "online challenger.", ("churn_score_online_auc", "{{model}}"), unit="percentunit"),
    series("Drift: PSI of the 10 most drifted inputs",
           "Population stability index of each model input over customers' latest scored inputs against the "
           "champion's training data, each input once the pipeline has seen a customer long enough for it "
           "(3x its horizon; 29 days for the 30-day inputs). < 0.1 stable, 0.1-0.25 moderate, > 0.25 "
           "significant (alert ChurnFeatureDrift).",
           ("topk(10, churn_drift_psi)", "{{feature}}"), thresholds=[(0.1, "yellow"), (0.25, "red")]),
    series("Drift: PSI of the risk", "The same for the champion's risk itself, once the pipeline has seen "
           "customers for 29 days (no data before: a young pipeline's risks reflect its short history).",
           ("churn_drift_psi{feature=\"risk\"}", "risk"), thresholds=[(0.1, "yellow"), (0.25, "red")], width=8),
    series("Champion version", "1 for the model version each worker scores with.",
           ("churn_score_model_info", "{{version}}"), width=8),
    series("Labels learned", "Churn labels seen by the online evaluation, by outcome.",
           ("sum by (churned) (increase(churn_score_labels_total[1h]))", "churned={{churned}}"), width=8),
    stat("Champion trained on synthetic data",
         "1 while the champion was trained on the simulator's synthetic world (the bootstrap): its validation "
         "scores say nothing about real customers. The first retrain on real churn labels that passes the sanity "
         "checks replaces it; 0 from then on.",
         "max(churn_score_champion_synthetic)", thresholds=[(1, "orange")]),
    stat("Alerts per 1,000 customers per day",
         "On the latest labelled window (the nightly's validation rows): customers at or above the alerting band "
         "(SCORING__ALERT_MIN_BAND) per 1,000 customers per day, each alerted at most once over the window.",
         "max(churn_model_alerts_per_1000_customers_per_day)"),
    series("Alert precision and recall, by band",
           "On the latest labelled window: of the customers at or above each band, the share who churned "
           "(precision), and the share of all churners at or above it (recall).",
           ("max by (band) (churn_model_alert_precision)", "precision {{band}}"),
           ("max by (band) (churn_model_alert_recall)", "recall {{band}}"), unit="percentunit", width=12),
    series("Lift of the riskiest customers",
           "Churn rate of the top 1 % and 5 % of customers by risk over the window's churn rate: what a retention "
           "team calling only those gets over calling at random.",
           ("max by (top) (churn_model_lift)", "top {{top}}"), width=6),
])

DASHBOARDS = [LATENCY, HEALTH, MODEL]


def as_json(d: model.Dashboard) -> str:
    return json.dumps(d, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def expressions() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every target of every panel, read from the JSON files."""
    out = []
    for path in sorted(FOLDER.glob("*.json")):
        data = json.loads(path.read_text())
        for panel in data["panels"]:
            for target in panel.get("targets", []):
                out.append((data["uid"], panel["title"], target["expr"]))
    return out


def write(folder: Path = FOLDER, check: bool = False) -> list[Path]:
    """Write each dashboard's JSON; with ``check``, only report the files that are out of date."""
    stale = []
    for d in DASHBOARDS:
        path = folder / f"{d.uid}.json"
        text = as_json(d)
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
