"""``churn batch nightly``: Gold, quality gate, publish, retrain, promotion, materialization, in that order.

Each step is a plain function of the settings and the date range (``STEPS``: ``batch.gold``'s
``stage_gold``, ``check_gold`` and ``publish_gold``, ``batch.train``'s ``train_challenger`` and
``promote_challengers``, ``materialize_profiles`` here); data goes from one to the next through the
lake and the model registry, never in memory. ``run_step`` runs one and turns its outcome into a
``StepResult`` (it never raises). ``run_nightly`` runs them in order with progress, each only if
the step it needs (``NEEDS``) succeeded, so a failed quality gate stops the run (nothing is
published, nothing is trained on unchecked data), and records the outcome as Prometheus metrics in
a text file (``<run_dir>/metrics/batch.prom``, the node-exporter textfile format), also pushed to the
stack's Pushgateway, which Prometheus scrapes (alerts ``ChurnQualityGateFailed``, ``ChurnNightlyMissing``).

A scheduler runs the same steps one task each (the Airflow DAG ``batch/dags/churn_nightly.py``, or
``churn batch step``): ``scheduled_step(name, day)`` runs one step for one day, keeps its result with
the day's others (``<run_dir>/nightly/<day>_<day>.json``) and returns an exit code for the scheduler
(0, ``SKIPPED``, ``BLOCKED``; any other failure raises, to be retried); its last task, ``report``,
writes the run's metrics from them as ``run_nightly`` does.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from churn.config import Settings

log = logging.getLogger("churn.nightly")

#: The steps, in order; each is one task of the Airflow DAG.
STEPS = ("gold", "quality_gate", "publish", "train", "promotion", "materialize")
#: The step each step needs to have succeeded (not skipped) before it runs: the DAG's edges.
NEEDS = {"quality_gate": "gold", "publish": "quality_gate", "train": "publish", "promotion": "train",
         "materialize": "publish"}
#: ``scheduled_step``'s exit codes besides 0: the step had nothing to do (the scheduler marks it skipped,
#: and the steps that need it), the quality gate failed (failed for good: rerunning the same data fails again).
SKIPPED, BLOCKED = 99, 3


class NothingToDo(RuntimeError):
    """A step with nothing to do (no model awaiting promotion): skipped."""


class StepFailed(RuntimeError):
    """A step failed for a reason a retry may fix (``scheduled_step``)."""


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str
    skipped: bool = False  # nothing to do (too few labels, no model to promote): ok, and the steps after it skip
    blocked: bool = False  # the quality gate failed: rerunning will not help until the data or the expectations change
    #: ``churn.model.alerting.alert_report`` of the champion after the promotion step (None for other steps).
    alerting: dict | None = field(default=None, repr=False)
    trace: str | None = field(default=None, repr=False)  # the traceback of an unexpected exception


@dataclass
class NightlyReport:
    steps: list[StepResult] = field(default_factory=list)
    #: ``churn.model.alerting.alert_report`` of the champion after the promotion step, on the latest labelled
    #: window (None: the step did not run, or there is no champion).
    alerting: dict | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def add(self, result: StepResult) -> None:
        """Add a step's result, replacing an earlier one of the same step (a retry)."""
        self.steps = [s for s in self.steps if s.name != result.name] + [result]
        self.steps.sort(key=lambda s: STEPS.index(s.name))
        if result.alerting is not None:
            self.alerting = result.alerting


def materialize_profiles(settings: Settings) -> str:
    """Load profile features changed since the last run into the online store (``materialize_incremental``)."""
    from churn.feature_store import ensure_applied, store

    ensure_applied(settings)
    store(settings, role="batch").materialize_incremental(end_date=datetime.now(timezone.utc), feature_views=["customer_profile"])
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
        next((1 if s.ok else 0 for s in report.steps if s.name == "quality_gate"), 0))
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


# -- the steps -----------------------------------------------------------------------------------
def _gold(settings: Settings, date_from: date, date_to: date, trials: int | None) -> str:
    from batch.gold import stage_gold

    run = stage_gold(settings, date_from, date_to)
    return (f"{run.silver_rows:,} Silver rows -> {run.customer_day_rows:,} customer-days, "
            f"{run.snapshot_rows:,} customer snapshots, staged")


def _quality_gate(settings: Settings, date_from: date, date_to: date, trials: int | None) -> str:
    from batch.gold import check_gold

    return check_gold(settings, date_from, date_to).text()


def _publish(settings: Settings, date_from: date, date_to: date, trials: int | None) -> str:
    from batch.gold import publish_gold

    run = publish_gold(settings, date_from, date_to)
    return (f"Gold {run.date_from} .. {run.date_to} published: {run.customer_day_rows:,} customer-days, "
            f"{run.snapshot_rows:,} customer snapshots; Silver compacted")


def _train(settings: Settings, date_from: date, date_to: date, trials: int | None) -> str:
    from batch.train import train_challenger
    from churn.model.alerting import alert_summary
    from churn.model.registry import ModelRegistry

    version = train_challenger(settings, trials=trials)
    card = ModelRegistry(settings.scoring.registry_dir).card(version)
    return (f"{version} ROC AUC {card['validation']['roc_auc']}, awaiting the promotion step; "
            f"alerts on the latest labelled window: {alert_summary(card['alerting'])}; trained on {card['trained_on']}")


def _promotion(settings: Settings, date_from: date, date_to: date, trials: int | None) -> tuple[str, dict | None]:
    from batch.train import promote_challengers

    releases = promote_challengers(settings)
    if not releases:
        raise NothingToDo("no model awaiting promotion")
    detail = "; ".join(f"{r.version} ROC AUC {r.metrics['roc_auc']}: "
                       f"{'promoted' if r.promoted else 'kept as challenger'} ({r.reason})" for r in releases)
    return detail, releases[-1].serving_alerting


def _materialize(settings: Settings, date_from: date, date_to: date, trials: int | None) -> str:
    return materialize_profiles(settings)


_FUNCTIONS = {"gold": _gold, "quality_gate": _quality_gate, "publish": _publish, "train": _train,
              "promotion": _promotion, "materialize": _materialize}


def run_step(settings: Settings, name: str, date_from: date, date_to: date, trials: int | None = None) -> StepResult:
    """Run one step for the range; its outcome as a ``StepResult``, whatever happens (never raises)."""
    from batch.gold import QualityGateFailed
    from batch.train import NotEnoughLabels

    if name not in _FUNCTIONS:
        raise ValueError(f"unknown nightly step {name!r}: one of {', '.join(STEPS)}")
    t0 = time.perf_counter()
    ok, skipped, blocked, alerting, trace = True, False, False, None, None
    try:
        out = _FUNCTIONS[name](settings, date_from, date_to, trials)
        detail, alerting = out if isinstance(out, tuple) else (out, None)
    except QualityGateFailed as exc:
        detail, ok, blocked = str(exc), False, True
    except (NotEnoughLabels, NothingToDo) as exc:  # nothing to learn from yet / nothing to decide: the champion stays
        detail, skipped = f"skipped: {exc}", True
    except RuntimeError as exc:  # e.g. too few labels to train on: reported, not a crash
        detail, ok = str(exc), False
    except Exception as exc:  # anything else: a clear line in the summary, the traceback in a file
        trace = traceback.format_exc()
        path = settings.run_dir / "logs" / f"nightly-{name}-error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(trace)
        detail, ok = f"failed: {type(exc).__name__}: {exc} (traceback in {path})", False
    return StepResult(name, ok, round(time.perf_counter() - t0, 1), detail, skipped, blocked, alerting, trace)


def run_nightly(settings: Settings, date_from: date, date_to: date, trials: int | None = None,
                progress=None) -> NightlyReport:
    """Every step in order, each only if the step it needs succeeded; the outcome as metrics."""
    report = NightlyReport()
    done: set[str] = set()
    for name in STEPS:
        if name in NEEDS and NEEDS[name] not in done:
            continue
        if progress:
            progress(name)
        result = run_step(settings, name, date_from, date_to, trials)
        report.add(result)
        if result.ok and not result.skipped:
            done.add(name)
    write_metrics(settings, report)
    return report


# -- one step at a time, for a scheduler --------------------------------------------------------
def report_path(settings: Settings, date_from: date, date_to: date) -> Path:
    """Where ``scheduled_step`` keeps the results of a range's steps."""
    return settings.run_dir / "nightly" / f"{date_from}_{date_to}.json"


@contextmanager
def _locked_report(path: Path, fresh: bool = False):
    """The range's report, read and written back under a lock (tasks of one run may run at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = NightlyReport()
        if path.exists() and not fresh:
            saved = json.loads(path.read_text())
            report = NightlyReport([StepResult(**s) for s in saved["steps"]], saved["alerting"])
        yield report
        path.write_text(json.dumps({"steps": [asdict(s) for s in report.steps], "alerting": report.alerting},
                                   indent=2, default=str))


def scheduled_step(name: str, day: str | date, settings: Settings | None = None, trials: int | None = None) -> int:
    """Run one step for one day (``day``: an ISO date, a scheduler's logical date) as a scheduler's task
    does, or ``report``: write the metrics of the day's run from its steps' results. The first step starts
    the day's results afresh; every step adds its own (a retry replaces it). Returns 0, ``SKIPPED`` (nothing
    to do) or ``BLOCKED`` (the quality gate failed); raises ``StepFailed`` for any other failure."""
    settings = settings or Settings()
    day = date.fromisoformat(str(day)[:10])
    path = report_path(settings, day, day)
    if name == "report":
        with _locked_report(path) as report:
            write_metrics(settings, report)
        print(f"nightly {day}: " + ("; ".join(f"{s.name} {_verdict(s)}" for s in report.steps) or "no step ran"),
              flush=True)
        return 0
    result = run_step(settings, name, day, day, trials)
    with _locked_report(path, fresh=name == STEPS[0]) as report:
        report.add(result)
    print(f"{name} {day}: {_verdict(result)} in {result.seconds} s: {result.detail}", flush=True)
    if result.trace:
        print(result.trace, file=sys.stderr, flush=True)
    if result.skipped:
        return SKIPPED
    if result.blocked:
        return BLOCKED
    if not result.ok:
        raise StepFailed(f"{name} {day}: {result.detail}")
    return 0


def _verdict(s: StepResult) -> str:
    return "skipped" if s.skipped else "ok" if s.ok else "QUALITY GATE FAILED" if s.blocked else "FAILED"
