"""Prometheus metrics of the streaming job: a StreamingQueryListener plus what each batch reports.

Exported on ``127.0.0.1:<streaming.metrics_port>/metrics`` (default 19102), scraped by the
local stack's Prometheus (job ``streaming``).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from pyspark.sql.streaming import StreamingQueryListener

INPUT_RATE = Gauge("churn_stream_input_rows_per_second", "Rows/s arriving from Kafka", ["query"])
PROCESSED_RATE = Gauge("churn_stream_processed_rows_per_second", "Rows/s processed", ["query"])
INPUT_ROWS = Counter("churn_stream_input_rows", "Rows read from Kafka", ["query"])
BATCH_DURATION = Histogram(
    "churn_stream_batch_duration_seconds", "Micro-batch duration", ["query"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89),
)
LAST_BATCH = Gauge("churn_stream_last_batch_id", "Id of the last completed micro-batch", ["query"])
DUPLICATES = Counter("churn_stream_duplicates_dropped", "Rows dropped as duplicate event_ids", ["query"])
QUARANTINED = Counter("churn_stream_quarantined_rows", "Rows quarantined and dead-lettered", ["reason"])
SILVER_ROWS = Counter("churn_stream_silver_rows", "Valid on-time events written to Silver")
PROFILE_UPSERTS = Counter("churn_stream_profile_upserts", "customer-profiles upserts, by outcome (loaded: a new "
                          "version; already_loaded: replayed; invalid: quarantined and dead-lettered)", ["outcome"])
FRESHNESS = Gauge(
    "churn_stream_feature_freshness_seconds",
    "Now minus the newest event time whose features were pushed to Feast (set after each push)",
)
FRESHNESS_AT_PUSH = Histogram(
    "churn_stream_feature_push_lag_seconds", "At each push: push time minus the newest event time pushed",
    buckets=(0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300, 3600, 86400),
)
NEWEST_PUSHED = Gauge(
    "churn_stream_newest_pushed_event_timestamp_seconds",
    "Event time (epoch s) of the newest event whose features were pushed to Feast (freshness = time() - this)",
)
QUERY_UP = Gauge("churn_stream_query_active", "1 while the query runs", ["query"])


class MetricsListener(StreamingQueryListener):
    """Turns every query progress event into the gauges and histograms above."""

    def __init__(self):
        super().__init__()
        self._names: dict[str, str] = {}  # query id -> name (idle and terminated events carry only the id)

    def onQueryStarted(self, event) -> None:
        self._names[str(event.id)] = event.name or str(event.id)
        QUERY_UP.labels(event.name or str(event.id)).set(1)

    def onQueryProgress(self, event) -> None:
        p = event.progress
        name = p.name or str(p.id)
        INPUT_RATE.labels(name).set(p.inputRowsPerSecond or 0.0)
        PROCESSED_RATE.labels(name).set(p.processedRowsPerSecond or 0.0)
        INPUT_ROWS.labels(name).inc(p.numInputRows)
        BATCH_DURATION.labels(name).observe(p.batchDuration / 1000.0)
        LAST_BATCH.labels(name).set(p.batchId)
        for op in p.stateOperators:
            dropped = (op.customMetrics or {}).get("numDroppedDuplicateRows")
            if dropped:
                DUPLICATES.labels(name).inc(dropped)

    def onQueryIdle(self, event) -> None:
        """No new data: nothing arrives (a stalled query reports neither progress nor idleness)."""
        name = self._names.get(str(event.id), str(event.id))
        INPUT_RATE.labels(name).set(0.0)
        PROCESSED_RATE.labels(name).set(0.0)

    def onQueryTerminated(self, event) -> None:
        QUERY_UP.labels(self._names.get(str(event.id), str(event.id))).set(0)


def record_batch(silver_rows: int, quarantined: dict[str, int]) -> None:
    SILVER_ROWS.inc(silver_rows)
    for reason, n in quarantined.items():
        QUARANTINED.labels(reason).inc(n)


def record_push(newest_event_time_s: float) -> None:
    NEWEST_PUSHED.set(newest_event_time_s)
    lag = time.time() - newest_event_time_s
    FRESHNESS.set(lag)
    FRESHNESS_AT_PUSH.observe(lag)
