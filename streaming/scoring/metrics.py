"""Prometheus metrics of the scoring worker, on ``<scoring.metrics_host>:<scoring.metrics_port>/metrics``."""

from __future__ import annotations

import gc
import time

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

EVENTS = Counter("churn_score_events", "CDRs scored")
INVALID = Counter("churn_score_invalid_events", "CDRs skipped as invalid (the stream dead-letters them)", ["reason"])
SKIPPED = Counter("churn_score_skipped_events", "CDRs skipped as already scored (redelivered after a rebalance)")
ALERTS = Counter("churn_alerts", "Churn-risk alerts emitted", ["band"])
DEGRADED = Counter("churn_score_degraded_events", "Decisions marked degraded (online store unreachable, or an input "
                   "not exactly the CDRs up to the trigger)")
STORE_UP = Gauge("churn_score_online_store_up", "1 if the last online-store read succeeded")
E2E = Histogram("churn_score_e2e_latency_seconds", "CDR produce time to score emit time", buckets=_LATENCY_BUCKETS)
ALERT_E2E = Histogram("churn_alert_e2e_latency_seconds", "CDR produce time to alert emit time", buckets=_LATENCY_BUCKETS)
BATCH = Histogram("churn_score_batch_seconds", "Scoring one batch (lookup, model, rules, produce)", buckets=_LATENCY_BUCKETS)
LOOKUP = Histogram("churn_score_lookup_seconds", "One batch feature lookup from the online store", buckets=_LATENCY_BUCKETS)
MODEL = Histogram("churn_score_model_seconds", "One batch model call (champion and challenger)", buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram("churn_score_batch_events", "Events per scoring batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000))
RISK = Histogram("churn_score_risk", "Champion risk of scored events", buckets=tuple(i / 20 for i in range(1, 21)))
MODEL_INFO = Gauge("churn_score_model_info", "1 for the champion version in use", ["version"])
CHAMPION_SYNTHETIC = Gauge("churn_score_champion_synthetic", "1 while the champion in use was trained on synthetic "
                           "data (the simulator's world: its validation scores say nothing about real customers), "
                           "0 once it was trained on real churn labels")
OVERLAY_ADDED = Histogram("churn_score_overlay_added_events", "CDRs added per decision on top of the pushed state "
                          "(what the online store did not hold yet)", buckets=(0, 1, 2, 5, 10, 20, 50, 100, 500, 1000))
OVERLAY_EVENTS = Gauge("churn_score_overlay_buffered_events", "CDRs held because the pushed state does not cover them yet")
OVERLAY_DROPPED = Gauge("churn_score_overlay_dropped_events", "CDRs dropped from the overlay at its cap (the stream "
                        "stopped or far behind) since the worker started")
NOT_INCLUDED = Counter("churn_score_events_not_included", "Counted CDRs up to the trigger that a decision lacked "
                       "(0 unless the overlay's cap was reached)")
INEXACT = Counter("churn_score_inexact_decisions", "Decisions whose input is not exactly the CDRs up to the trigger",
                  ["basis"])
LAST_PROGRESS = Gauge("churn_score_last_progress_timestamp_seconds", "When the worker last scored a batch, committed "
                      "a transaction, or had nothing to do (unix time)")
HEALTHY = Gauge("churn_score_healthy", "1 while the worker is not stalled (see /healthz)")
RESCORED = Counter("churn_score_rescored", "Customers scored again at the current time after going quiet")
COMMIT = Histogram("churn_score_commit_seconds", "Committing the due partitions' transactions (on the commit thread)",
                   buckets=_LATENCY_BUCKETS)
COMMIT_WAIT = Histogram("churn_score_commit_wait_seconds", "How long a batch filled while a commit was in flight",
                        buckets=_LATENCY_BUCKETS)
TRANSACTIONS = Counter("churn_score_transactions", "Kafka transactions committed (scores, alerts and offsets)")
LAG = Gauge("churn_score_consumer_lag", "CDRs not yet scored on each owned partition", ["partition"])
PARTITIONS = Gauge("churn_score_owned_partitions", "cdr partitions this worker owns")
LABELS = Counter("churn_score_labels", "Churn labels seen by the online evaluation", ["churned"])
ONLINE_AUC = Gauge("churn_score_online_auc", "Rolling ROC AUC on arriving labels (predict, then learn)", ["model"])
AGENT_ERRORS = Counter("churn_score_agent_errors", "Exceptions caught in an agent (the batch is retried)", ["agent"])
DRIFT_PSI = Gauge("churn_drift_psi", "Population stability index of a model input (or the risk) over customers' "
                  "latest scored inputs against the champion's training data (> 0.25: significant)", ["feature"])
GC_PAUSE = Histogram("churn_score_gc_pause_seconds", "Pauses of Python's garbage collector in the worker (each "
                     "stops the event loop: scoring, fetching and committing wait)", ["generation"],
                     buckets=_LATENCY_BUCKETS)
DRIFT_CUSTOMERS = Gauge("churn_drift_window_customers", "Customers whose latest input is in the drift window")


def time_gc_pauses() -> None:
    """Observe every garbage collection's pause in ``GC_PAUSE`` (``gc.callbacks``: a few µs per collection)."""
    started = [0.0]

    def observe(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

    if not any(getattr(cb, "gc_pauses", False) for cb in gc.callbacks):
        observe.gc_pauses = True
        gc.callbacks.append(observe)


def initialise(alert_bands) -> None:
    """Create the labelled series that must exist before their first event (so dashboards show 0, not nothing)."""
    for band in alert_bands:
        ALERTS.labels(band)
    for basis in ("stream_ahead", "buffer_cap"):  # streaming.scoring.overlay's inexact bases
        INEXACT.labels(basis)
