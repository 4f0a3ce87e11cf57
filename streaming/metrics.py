"""Prometheus metrics of the streaming job: a StreamingQueryListener plus what each batch reports.

Exported on ``127.0.0.1:<streaming.metrics_port>/metrics`` (default 19102), scraped by the
local stack's Prometheus (job ``streaming``).
"""

from __future__ import annotations

import json
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
END_OFFSETS = Gauge(
    "churn_stream_source_end_offsets",
    "Sum over its Kafka partitions of the offsets a query's last batch read up to: the difference between "
    "two queries of the same topic is how many records one is behind the other", ["query"],
)


class MetricsListener(StreamingQueryListener):
    """Turns every query progress event into the gauges and histograms above."""

    def __init__(self):
        super().__init__()
        self._names: dict[str, str] = {}  # query id -> name (idle and terminated events carry only the id)

    def onQueryStarted(self, event) -> None:
        self._names[str(event.id)] = event.name or str(event.id)
        QUERY_UP.labels(event.name or str(event.id)).set(1)

    def onQueryProgress(self, event) -> None:
        record_progress(json.loads(event.progress.json))

    def onQueryIdle(self, event) -> None:
        record_idle(self._names.get(str(event.id), str(event.id)))

    def onQueryTerminated(self, event) -> None:
        QUERY_UP.labels(self._names.get(str(event.id), str(event.id))).set(0)


def record_progress(progress: dict) -> None:
    """One query progress (Spark's ``StreamingQueryProgress`` as JSON) into the gauges and histograms: the
    listener's events, and those a query in another process (``streaming.bronze_process``) sends back."""
    name = progress.get("name") or str(progress["id"])
    INPUT_RATE.labels(name).set(progress.get("inputRowsPerSecond") or 0.0)  # left out when not computable
    PROCESSED_RATE.labels(name).set(progress.get("processedRowsPerSecond") or 0.0)
    INPUT_ROWS.labels(name).inc(progress["numInputRows"])
    BATCH_DURATION.labels(name).observe(progress["batchDuration"] / 1000.0)
    LAST_BATCH.labels(name).set(progress["batchId"])
    ends = [source_end_offsets(source.get("endOffset")) for source in progress.get("sources") or []]
    if any(end is not None for end in ends):
        END_OFFSETS.labels(name).set(sum(end or 0 for end in ends))
    for op in progress.get("stateOperators") or []:
        dropped = (op.get("customMetrics") or {}).get("numDroppedDuplicateRows")
        if dropped:
            DUPLICATES.labels(name).inc(dropped)


def source_end_offsets(end) -> int | None:
    """The sum of a Kafka source's end offsets in a progress report (``{topic: {partition: offset}}``, as an
    object or as JSON text); ``None`` for another kind of source.

    >>> source_end_offsets({"cdr": {"0": 10, "1": 32}})
    42
    >>> source_end_offsets('{"cdr": {"0": 5}}'), source_end_offsets(None)
    (5, None)
    """
    if isinstance(end, str):
        try:
            end = json.loads(end)
        except ValueError:
            return None
    if not isinstance(end, dict) or not all(isinstance(parts, dict) for parts in end.values()):
        return None
    return sum(int(offset) for parts in end.values() for offset in parts.values())


def record_idle(name: str) -> None:
    """No new data for query ``name``: nothing arrives (a stalled query reports neither progress nor idleness)."""
    INPUT_RATE.labels(name).set(0.0)
    PROCESSED_RATE.labels(name).set(0.0)


def record_batch(silver_rows: int, quarantined: dict[str, int]) -> None:
    SILVER_ROWS.inc(silver_rows)
    for reason, n in quarantined.items():
        QUARANTINED.labels(reason).inc(n)


def record_push(newest_event_time_s: float) -> None:
    NEWEST_PUSHED.set(newest_event_time_s)
    lag = time.time() - newest_event_time_s
    FRESHNESS.set(lag)
    FRESHNESS_AT_PUSH.observe(lag)
