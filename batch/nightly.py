"""``churn batch nightly``: Gold, quality gate, retrain and promotion, materialization, in that order.

Each step is a plain function; this module runs them in order with progress,
stops at a failed quality gate (nothing is published, nothing is trained on
unchecked data), and records the outcome as Prometheus metrics in a text file
(``<run_dir>/metrics/batch.prom``, the node-exporter textfile format), also pushed to the
stack's Pushgateway, which Prometheus scrapes (alerts ``ChurnQualityGateFailed``, ``ChurnNightlyMissing``).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from churn.config import Settings

log = logging.getLogger("churn.nightly")


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class NightlyReport:
    steps: list[StepResult] = field(default_factory=list)
    #: ``churn.model.alerting.alert_report`` of the champion after the train step, on the latest labelled
    #: window (None: the step did not train, or there is no champion).
    alerting: dict | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


def materialize_profiles(settings: Settings) -> str:
    """Load profile features changed since the last run into the online store (``materialize_incremental``)."""
    from churn.feature_store import ensure_applied, store

    ensure_applied(settings)
    store(settings).materialize_incremental(end_date=datetime.now(timezone.utc), feature_views=["customer_profile"])
    return "customer_profile materialized up to now"


def write_metrics(settings: Settings, report: NightlyReport) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

    registry = CollectorRegistry()
    ok = Gauge("churn_batch_step_success", "1 if the step of the last nightly run succeeded", ["step"], registry=registry)
    secs = Gauge("churn_batch_step_seconds", "Duration of the step in the last nightly run", ["step"], registry=registry)
    for s in report.steps:
        ok.labels(s.name).set(1 if s.ok else 0)
        secs.labels(s.name).set(s.seconds)
    Gauge("churn_batch_quality_gate_passed", "1 if the last Gold quality gate passed", registry=registry).set(
        next((1 if s.ok else 0 for s in report.steps if s.name == "gold"), 0))
    Gauge("churn_batch_last_run_timestamp_seconds", "When the last nightly run finished", registry=registry).set(
        time.time())
    if report.alerting is not None:
        alerting_gauges(report.alerting, registry)
    path = settings.run_dir / "metrics" / "batch.prom"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    p = settings.prometheus
    try:  # Prometheus scrapes the Pushgateway (job "pushgateway"); the text file stays as a record
        push_to_gateway(f"{p.pushgateway_host}:{p.pushgateway_port}", job="churn-nightly", registry=registry,
                        timeout=5)
    except OSError as e:
        log.warning("nightly metrics not pushed to the Pushgateway at %s:%s (%s); they are in %s",
                    p.pushgateway_host, p.pushgateway_port, e, path)


def alerting_gauges(alerting: dict, registry) -> None:
    """The champion's alert volume, precision, recall and lift on the latest labelled window
    (``churn.model.alerting.alert_report``) as gauges in ``registry``; figures that are None are left out."""
    from prometheus_client import Gauge

    def single(name: str, doc: str, value) -> None:  # a gauge without labels is exported even if never set
        if value is not None:
            Gauge(name, doc, registry=registry).set(value)

    def labelled(name: str, doc: str, label: str, values: dict) -> None:
        g = Gauge(name, doc, [label], registry=registry)
        for key, value in values.items():
            if value is not None:
                g.labels(key).set(value)

    single("churn_model_alerts_per_1000_customers_per_day", "Alerts (risk at or above the alerting band) per 1,000 "
           "customers per day on the latest labelled window", alerting["alerts_per_1000_customers_per_day"])
    single("churn_model_base_churn_rate", "Churn rate of the latest labelled window",
           alerting["window"]["base_churn_rate"])
    bands = alerting["bands"]
    labelled("churn_model_alert_precision", "Churners among the customers at or above the band, latest labelled "
             "window", "band", {band: b["precision"] for band, b in bands.items()})
    labelled("churn_model_alert_recall", "Share of the churners at or above the band, latest labelled window",
             "band", {band: b["recall"] for band, b in bands.items()})
    labelled("churn_model_lift", "Churn rate of the top share of customers by risk over the base churn rate, "
             "latest labelled window", "top", {top: v["lift"] for top, v in alerting["lift"].items()})


def run_nightly(settings: Settings, date_from: date, date_to: date, trials: int | None = None,
                progress=None) -> NightlyReport:
    from batch.gold import QualityGateFailed, run_gold
    from batch.train import NotEnoughLabels, run_train

    report = NightlyReport()

    def step(name: str, fn) -> bool:
        t0 = time.perf_counter()
        if progress:
            progress(name)
        try:
            detail, ok = fn(), True
        except QualityGateFailed as exc:
            detail, ok = str(exc), False
        except NotEnoughLabels as exc:  # nothing to learn from yet: skipped, the champion stays
            detail, ok = f"skipped: {exc}", True
        except RuntimeError as exc:  # e.g. too few labels to train on: reported, not a crash
            detail, ok = str(exc), False
        except Exception as exc:  # anything else: a clear line in the summary, the traceback in a file
            trace = settings.run_dir / "logs" / f"nightly-{name}-error.txt"
            trace.parent.mkdir(parents=True, exist_ok=True)
            trace.write_text(traceback.format_exc())
            detail, ok = f"failed: {type(exc).__name__}: {exc} (traceback in {trace})", False
        report.steps.append(StepResult(name, ok, round(time.perf_counter() - t0, 1), detail))
        return ok

    def gold() -> str:
        run = run_gold(settings, date_from, date_to)
        return (f"{run.silver_rows:,} Silver rows -> {run.customer_day_rows:,} customer-days, "
                f"{run.snapshot_rows:,} customer snapshots; {run.gate.text()}")

    def train() -> str:
        from churn.model.alerting import alert_summary

        release = run_train(settings, trials=trials)
        report.alerting = release.serving_alerting
        verdict = "promoted" if release.promoted else "kept as challenger"
        return (f"{release.version} ROC AUC {release.metrics['roc_auc']}: {verdict} ({release.reason}); "
                f"alerts on the latest labelled window: {alert_summary(release.alerting)}; "
                f"trained on {release.source}")

    if step("gold", gold):
        step("train", train)
        step("materialize", lambda: materialize_profiles(settings))
    write_metrics(settings, report)
    return report
