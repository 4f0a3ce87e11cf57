"""The streaming job: Kafka ``cdr`` -> Bronze, Silver and quarantine Delta tables, and ``cdr.dlq``;
Kafka ``customer-profiles`` -> the profile history and Feast.

Two queries, each with its own stable checkpoint (three with ``streaming.bronze_writer`` = ``query``):

* **bronze**: every Kafka record as it arrived (key, value, headers, topic,
  partition, offset, Kafka timestamp, ingest time). Written by the silver query's
  batches (``bronze_writer`` = ``silver_batch``: Kafka is read once), or by a query of
  its own through Delta's streaming sink (``query``). Exactly once across restarts either way.
* **silver**: records parsed and validated by the contract's validator
  (``streaming.parse``), de-duplicated on ``event_id`` in Spark's state store
  (state kept for ``dedup_window_s`` of processing time, so it stays bounded and
  no row is ever dropped by Spark as late), then in ``foreachBatch`` (whose one Spark job brings the
  batch to the driver, which writes the tables through delta-rs and the dead letters with a producer): events
  older than the event-time watermark (newest event time of earlier batches
  minus ``allowed_lateness_s``, per Kafka partition) are marked ``late_event``; valid on-time events
  go to Silver, the rest to the quarantine table and to ``cdr.dlq`` with their
  reason and original bytes; one accounting row per batch goes to ``batches``.
  Features: the batch's decayed sums per customer are merged into the customers'
  state held in memory (``streaming.feature_state``) and pushed to Feast's online
  store while the batch's Delta writes run, so freshness does not wait for them;
  the new state rows are also appended to ``feature_history`` (Feast's offline source).
  Every Delta write is tagged with the writer and the batch id (``_append``), so a
  batch replayed after a crash changes nothing it already wrote.

* **profiles**: upserts from ``customer-profiles`` (CDC style), each validated with the
  ``customer_profile`` contract as ``churn profiles load`` validates an extract's rows
  (``churn.profiles.ingest_upserts``): new versions appended to ``profile_history`` (idempotent by
  customer and ``updated_at``) and written to Feast's online store, which keeps each customer's newest;
  invalid ones to ``profile_quarantine`` and ``customer-profiles.dlq`` with their reason.

Invariant (tests check it): Bronze rows = Silver rows + quarantined rows + duplicates dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timezone

import pyarrow as pa

from churn import storage
from churn.config import Settings
from churn.feature_store import ACTIVITY_ONLINE
from churn.features import INPUT_COLUMNS, SUM_FEATURES, partial_sums_table
from churn.lake import LakePaths
from churn.security import redis_options, spark_kafka_options
from churn.spark import BACKGROUND_POOL
from streaming import bronze_process, metrics
from streaming.deferred_query import DeferredQuery
from streaming.feature_state import HISTORY_SCHEMA, FeatureState
from streaming.pending_batches import PendingBatches, pending_url
from streaming.parse import CONTRACT_COLUMNS, KAFKA_INPUTS, RAW_INPUTS, spark_schema, start_workers, validate_arrow

LATE_EVENT = "late_event:event_time"
#: How long a dead letter may take to be delivered (Spark's Kafka sink: the Java producer's 120 s default).
DLQ_DELIVERY_TIMEOUT_S = 120.0
#: Every Delta table writes a checkpoint of its log when its version is a multiple of its
#: ``delta.checkpointInterval`` (10 by default), inside the write that made that version. Here a
#: checkpoint costs 2-5 s even for a tiny table (an append: 0.2-0.5 s), and the job writes each of
#: these tables once per batch, so at the default every tenth batch paid all four of them at once (its
#: writes took ~5 s instead of ~0.3). Writes do not slow down with more commits since the last
#: checkpoint (measured up to 80); a cold reader replays at most this many small commit files. Distinct
#: primes near 100, so the tables rarely checkpoint in the same batch. Set when the job creates a table.
CHECKPOINT_INTERVAL = {"silver": 101, "feature_history": 103, "quarantine": 107, "batches": 109, "bronze": 113}
#: The silver query's Spark settings, set on the session only while the query starts (which keeps a copy).
#: Spark checks the size of the Arrow batch it is filling for Python after every row it adds, unless the limit
#: is ``Int.MaxValue``: for the silver query's Kafka headers (a list of structs) that check walked the batch's
#: nested vectors per row, a fifth of the executors' time. The batches stay bounded by their row count
#: (``spark.sql.execution.arrow.maxRecordsPerBatch``, 10,000).
#:
#: With the de-duplications by the batches' own time (``buckets``, ``processing_timers``) the plan holds no value of the batch's,
#: so Spark's generated code, compiled by the first batch, serves every batch after it: the executors used 27 %
#: less CPU on a catch-up than interpreted (``SILVER_QUERY_CONF_COMPILED``). No batch without data there: a
#: processing-time operator asks Spark for one on every trigger, to fire its timers, and with ``availableNow``
#: the query would never end; the de-duplication forgets a key whose time has come when the key comes again, and
#: the data batches fire the other expired timers.
#:
#: The older kinds need the batch's time as a column and a watermark, which Spark writes into each batch's
#: generated code (five new classes per batch, 5-30 ms each to compile, then run unoptimised by the JVM): their
#: query runs interpreted (``SILVER_QUERY_CONF``), 0.25-0.3 s faster per batch than compiled anew.
SILVER_QUERY_CONF_COMPILED = {"spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1),
                              "spark.sql.streaming.noDataMicroBatches.enabled": "false"}
SILVER_QUERY_CONF = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN",
                     "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1)}
#: How Spark's ``toArrow`` gives a timestamp column (``ingest_time``).
INGEST_TIME = pa.timestamp("us", tz="UTC")
log = logging.getLogger("churn.stream")


class _PhaseClock:
    """Seconds spent in each phase of a batch, for the log line."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases.append((phase, now - self.last))
        self.last = now

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {sec:.2f}" for name, sec in self.phases)
        return f"{self.last - self.start:.2f} s [{parts}]"


def _newest_by_partition(table) -> dict[int, float]:
    """Newest ``event_time`` (epoch seconds) per ``kafka_partition`` of an Arrow table (none when empty)."""
    import pyarrow as pa

    if table.num_rows == 0:
        return {}
    newest = table.select(["kafka_partition", "event_time"]).group_by("kafka_partition").aggregate(
        [("event_time", "max")])
    micros = newest.column("event_time_max").cast(pa.int64()).to_pylist()  # Spark's timestamps: microseconds
    return {int(p): t / 1e6 for p, t in zip(newest.column("kafka_partition").to_pylist(), micros)
            if t is not None}


def _on_time(batch: pa.Table) -> pa.Table:
    """A batch's rows bound for Silver: valid, on time and (where Bronze is written from it) not duplicates."""
    import pyarrow.compute as pc

    keep = pc.is_null(batch.column("reason"))
    if "duplicate" in batch.schema.names:
        keep = pc.and_(keep, pc.invert(batch.column("duplicate")))
    return batch.filter(keep)


def _app_id(settings: Settings, checkpoints: str, query: str) -> str:
    """A writer id tied to the checkpoint: a new checkpoint (a fresh start) gets a new id,
    so Delta's idempotent-write log never mistakes its batch 0 for an old one."""
    path = storage.join(checkpoints, f"{query}.writer-id")
    if not storage.exists(settings, path):
        storage.write_text(settings, path, f"churn-{query}-{uuid.uuid4().hex[:12]}")
    return storage.read_text(settings, path).strip()


def _batch_ids(settings: Settings, folder: str) -> list[int]:
    return [int(n) for n in storage.names(settings, folder) if n.isdigit()]


def last_planned_batch(settings: Settings, checkpoint: str) -> int:
    """The newest batch id in a query's offset log (-1 if none). Spark logs a batch's offsets before it
    runs the batch, so after a restart only batches up to this one can have run (and written) before."""
    return max(_batch_ids(settings, storage.join(checkpoint, "offsets")), default=-1)


def dedup_kind(settings: Settings, checkpoint: str) -> str:
    """How the silver query whose checkpoint is ``checkpoint`` de-duplicates (``StreamingSettings.dedup``):
    the kind its checkpoint's state was written by (Spark cannot resume a query's state with another
    operator), or, for a new checkpoint, the settings' kind."""
    state = storage.join(checkpoint, "state", "0", "_metadata")
    v2, v1 = storage.join(state, "v2"), storage.join(state, "metadata")  # transformWithState writes v2
    kept = None
    if storage.exists(settings, v2):
        kept = _transform_with_state_kind(settings, v2)
    elif storage.exists(settings, v1) and '"dedupeWithinWatermark"' in storage.read_text(settings, v1):
        kept = "spark"
    if kept is None:
        return settings.streaming.dedup
    if kept != settings.streaming.dedup:
        log.warning("the silver checkpoint %s de-duplicates with %s, not the settings' %s: it keeps it (a new "
                    "checkpoint takes the settings')", checkpoint, kept, settings.streaming.dedup)
    return kept


def _transform_with_state_kind(settings: Settings, metadata: str) -> str:
    """Which of our transformWithState de-duplications (``buckets``, ``processing_timers`` or ``timers``) wrote the
    operator metadata folder (``state/0/_metadata/v2``) ``metadata``: its operator properties record its time mode
    and its state variables (the buckets' map of expiries is ``expiries``)."""
    for name in storage.names(settings, metadata):
        if name.isdigit():  # one file per batch that wrote it, each the operator's: "v2", then its JSON
            operator = json.loads(storage.read_text(settings, storage.join(metadata, name)).splitlines()[1])
            properties = json.loads(operator["operatorPropertiesJson"])
            if properties.get("timeMode") != "ProcessingTime":
                return "timers"
            names = {variable.get("stateName") for variable in properties.get("stateVariables", [])}
            return "buckets" if "expiries" in names else "processing_timers"
    return "timers"


def bronze_writer(settings: Settings, checkpoints: str, dedup: str) -> str:
    """Who writes Bronze (``StreamingSettings.bronze_writer``): the way the lake's checkpoints were started with,
    recorded beside them (``bronze.writer``); checkpoints of a version without that record had Bronze's own
    query. New checkpoints take the settings' way, but ``silver_batch`` needs the timers' de-duplication
    (``dedup``), which can keep the duplicates for Bronze."""
    chosen = _recorded_bronze_writer(settings, checkpoints)
    if chosen is None:
        chosen = settings.streaming.bronze_writer
        if chosen == "silver_batch" and dedup not in FLAGGING_DEDUP:
            log.warning("Bronze is written by a query of its own: the silver query's de-duplication (%s) drops "
                        "duplicates before its batches could write them", dedup)
            chosen = "query"
        storage.write_text(settings, storage.join(checkpoints, "bronze.writer"), chosen)
    if chosen != settings.streaming.bronze_writer:
        log.warning("the lake's checkpoints in %s were started with Bronze written by %s; they keep it", checkpoints,
                    "a query of its own" if chosen == "query" else "the silver query's batches")
    return chosen


def _recorded_bronze_writer(settings: Settings, checkpoints: str) -> str | None:
    """Who writes Bronze for the lake whose checkpoints are ``checkpoints``, as its record says (``query`` for
    checkpoints of a version without the record), or None for checkpoints not started yet."""
    record = storage.join(checkpoints, "bronze.writer")
    if storage.exists(settings, record):
        return storage.read_text(settings, record).strip()
    if any(storage.exists(settings, storage.join(checkpoints, *path)) for path in (("bronze",), ("silver", "offsets"))):
        return "query"
    return None


#: The de-duplications (``StreamingSettings.dedup``) that can keep duplicates flagged instead of dropping them.
FLAGGING_DEDUP = ("buckets", "processing_timers", "timers")


def dedup_time_column(kind: str) -> str | None:
    """The column of the batch's time (``current_timestamp()``) a de-duplication of ``kind`` needs in its input
    (``ingest_time``), or None for ``buckets`` and ``processing_timers``, which go by the batches' own time."""
    return None if kind in ("buckets", "processing_timers") else "ingest_time"


def silver_query_conf(kind: str) -> dict[str, str]:
    """The Spark settings the silver query starts with, by its de-duplication's ``kind``: compiled where its plan
    holds no value of the batch's (``SILVER_QUERY_CONF_COMPILED``), interpreted where it does (``SILVER_QUERY_CONF``)."""
    return SILVER_QUERY_CONF if dedup_time_column(kind) else SILVER_QUERY_CONF_COMPILED


def drop_duplicates_within_window(rows, key: str, time: str | None, window_s: float,
                                  kind: str = "buckets", flag: str | None = None):
    """``rows`` (a streaming DataFrame) less every row whose ``key`` came within ``window_s`` before it, with the
    operator ``kind`` (``StreamingSettings.dedup``):

    * ``buckets``: ``churn.spark.DropDuplicatesByBucket`` (``jvm/churn-spark``) by the batches' own time (``time``
      is not used): keys grouped in a fixed number of buckets, each a map from key to when it expires, so a row
      costs one read of the state, and one write if it is kept; one timer per bucket clears the expired keys;
    * ``processing_timers``: ``churn.spark.DropDuplicatesWithinWindow`` (``jvm/churn-spark``) by the batches' own
      time (``time`` is not used): its cost per batch follows the batch rather than the number of keys
      remembered, and the plan holds nothing that changes from batch to batch;
    * ``timers``: the same operator by ``time`` (a watermark on it, its delay the window, is set here);
    * ``spark``: Spark's ``dropDuplicatesWithinWatermark`` by ``time``.

    With ``flag`` (a boolean column of ``rows``; ``FLAGGING_DEDUP`` only), duplicates are kept with it set to
    true instead. Returns the DataFrame and, for the timers, a counter of the duplicates so far (a JVM
    ``LongAccumulator``: ``.value()``); Spark's operator reports them in its progress (None)."""
    from pyspark.sql import DataFrame

    session = rows.sparkSession
    if dedup_time_column(kind) is None:  # by the batches' own time
        operator = (session._jvm.churn.spark.DropDuplicatesByBucket if kind == "buckets"
                    else session._jvm.churn.spark.DropDuplicatesWithinWindow)
        dropped = session.sparkContext._jsc.sc().longAccumulator("duplicates dropped")
        deduped = operator.applyInProcessingTime(rows._jdf, key, round(window_s * 1000), flag, dropped)
        return DataFrame(deduped, session), dropped
    watermarked = rows.withWatermark(time, f"{round(window_s * 1000)} milliseconds")
    if kind == "spark":
        if flag is not None:
            raise ValueError("Spark's dropDuplicatesWithinWatermark cannot keep duplicates: flag needs one of "
                             f"{FLAGGING_DEDUP}")
        return watermarked.dropDuplicatesWithinWatermark([key]), None
    dropped = session.sparkContext._jsc.sc().longAccumulator("duplicates dropped")
    deduped = session._jvm.churn.spark.DropDuplicatesWithinWindow.apply(watermarked._jdf, key, time, flag, dropped)
    return DataFrame(deduped, session), dropped


def committed_offsets(settings: Settings, checkpoint: str, topic: str) -> dict[int, int]:
    """Kafka offsets up to which a query's batches are committed (read from its checkpoint) and ended: a silver
    batch whose work on the driver may still run (``overlap_batches``) is not counted yet."""
    pending = set(PendingBatches(settings, pending_url(checkpoint)).ids())
    commits = [b for b in _batch_ids(settings, storage.join(checkpoint, "commits")) if b not in pending]
    if not commits:
        return {}
    return batch_offsets(settings, checkpoint, max(commits), topic)


def cdr_checkpoints(settings: Settings) -> list[str]:
    """The checkpoints of the queries that write the CDR tables: the silver query's, and Bronze's own query's
    where the lake has one (``bronze_writer``): Bronze and Silver hold every record below the offsets that all
    of them have committed."""
    checkpoints = storage.checkpoints_url(settings)
    own_query = _recorded_bronze_writer(settings, checkpoints) == "query"
    return [storage.join(checkpoints, query) for query in ("silver", *(("bronze",) if own_query else ()))]


def batch_offsets(settings: Settings, checkpoint: str, batch_id: int, topic: str) -> dict[int, int]:
    """The Kafka offsets up to which the query's batch ``batch_id`` reads, from its offset log."""
    lines = storage.read_text(settings, storage.join(checkpoint, "offsets", str(batch_id))).splitlines()
    source = json.loads(lines[-1])
    return {int(p): o for p, o in source.get(topic, {}).items()}


def batch_time(settings: Settings, checkpoint: str, batch_id: int) -> datetime:
    """The query's batch ``batch_id``'s own time (what ``current_timestamp()`` and processing-time timers are
    in it), from its offset log: Spark records it there before it runs the batch, so a replay has the same."""
    lines = storage.read_text(settings, storage.join(checkpoint, "offsets", str(batch_id))).splitlines()
    millis = json.loads(lines[1])["batchTimestampMs"]  # line 0 is the log's version
    return datetime.fromtimestamp(millis / 1000, timezone.utc)


def _committed(settings: Settings, path: str, tag: str, recent: int = 100) -> bool:
    """Whether one of the table's ``recent`` newest commits carries ``tag`` as its userMetadata (read by
    delta-rs from the commit files: no Spark job). The job is the tables' only appender; other commits
    (compaction, vacuum) are few."""
    from deltalake.exceptions import TableNotFoundError

    try:
        table = storage.open_delta(settings, path)
    except TableNotFoundError:  # none yet, or a log with no commit in it (a first write killed midway)
        return False
    return any(c.get("userMetadata") == tag for c in table.history(recent))


#: Bronze's columns, as Delta's streaming sink writes them from Spark's Kafka source (``StreamingJob.start_bronze``).
BRONZE_SCHEMA = pa.schema([
    ("key", pa.binary()), ("value", pa.binary()),
    ("headers", pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("kafka_timestamp", pa.timestamp("us", tz="UTC")), ("kafka_timestamp_type", pa.int32()),
    ("ingest_time", pa.timestamp("us", tz="UTC")), ("ingest_date", pa.date32()),
])


def _bronze_rows(batch: pa.Table) -> pa.Table:
    """Bronze's rows of a silver batch (``RAW_COLUMNS`` kept): every record as it arrived, duplicates included."""
    columns = {"key": "raw_key", "value": "value", "headers": "headers", "topic": "topic",
               "partition": "kafka_partition", "offset": "kafka_offset", "kafka_timestamp": "kafka_timestamp",
               "kafka_timestamp_type": "kafka_timestamp_type", "ingest_time": "ingest_time"}
    arrays = [batch.column(source) for source in columns.values()]
    ingest_date = batch.column("ingest_time").cast(pa.timestamp("us")).cast(pa.date32())
    return pa.Table.from_arrays([*arrays, ingest_date], names=[*columns, "ingest_date"]).cast(BRONZE_SCHEMA)


#: Silver's columns: the contract's, where each record came from, and the batch that wrote it.
SILVER_COLUMNS = [*(name for name, _, _ in CONTRACT_COLUMNS), "kafka_partition", "kafka_offset", "kafka_timestamp",
                  "ingest_time", "batch_id", "event_date"]
#: The quarantine's: the record as it arrived, why it was rejected, and what of it could be read.
QUARANTINE_COLUMNS = ["kafka_key", "value", "kafka_partition", "kafka_offset", "kafka_timestamp", "reason",
                      "reason_detail", "event_id", "event_time", "ingest_time", "batch_id", "quarantine_date"]


def _with_verdicts(batch: pa.Table, watermarks: dict[int, float], batch_id: int) -> pa.Table:
    """A batch's rows (as the silver query makes them) with their final verdict and the batch's own columns: a
    valid event older than its Kafka partition's watermark (``watermarks``, epoch seconds) gets ``LATE_EVENT``
    as its reason; ``batch_id``, ``event_date`` (of ``event_time``) and ``quarantine_date`` (of
    ``ingest_time``) are added.

    >>> from datetime import datetime, timezone
    >>> t = lambda s: datetime.fromtimestamp(s, timezone.utc)
    >>> rows = pa.table({"kafka_partition": pa.array([0, 0, 1, 2], pa.int32()),
    ...                  "event_time": pa.array([t(50), t(150), t(50), None], pa.timestamp("us", tz="UTC")),
    ...                  "ingest_time": pa.array([t(200)] * 4, pa.timestamp("us", tz="UTC")),
    ...                  "reason": [None, None, None, "malformed_json"], "reason_detail": [None, None, None, "x"]})
    >>> out = _with_verdicts(rows, {0: 100.0, 2: 100.0}, 7)
    >>> out.column("reason").to_pylist()
    ['late_event:event_time', None, None, 'malformed_json']
    >>> out.column("reason_detail").to_pylist()[0]
    "event_time older than its partition's watermark 1970-01-01 00:01:40"
    >>> out.column("batch_id").to_pylist(), [str(d) for d in out.column("event_date").to_pylist()[:1]]
    ([7, 7, 7, 7], ['1970-01-01'])
    """
    import pyarrow.compute as pc

    rows = batch.num_rows
    partitions = batch.column("kafka_partition")
    reason, detail = batch.column("reason"), batch.column("reason_detail")
    if watermarks and rows:
        # each row's partition's watermark (microseconds; null where its partition has none yet, so never late)
        size = max(max(watermarks), int(pc.max(partitions).as_py() or 0)) + 1
        by_partition = pa.array([None if p not in watermarks else round(watermarks[p] * 1e6) for p in range(size)],
                                pa.int64())
        row_watermark = by_partition.take(partitions)
        late = pc.fill_null(pc.and_(pc.is_null(reason), pc.less(batch.column("event_time").cast(pa.int64()),
                                                                   row_watermark)), False)
        if pc.any(late).as_py():
            text = pa.array([None if w is None else
                             "event_time older than its partition's watermark "
                             + datetime.fromtimestamp(w / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
                             .rstrip("0").rstrip(".") for w in by_partition.to_pylist()], pa.string())
            reason = pc.if_else(late, pa.scalar(LATE_EVENT), reason)
            detail = pc.if_else(late, text.take(partitions), detail)
    day = pa.date32()
    return (batch.set_column(batch.schema.get_field_index("reason"), "reason", reason)
            .set_column(batch.schema.get_field_index("reason_detail"), "reason_detail", detail)
            .append_column("batch_id", pa.repeat(pa.scalar(batch_id, pa.int64()), rows))
            .append_column("event_date", batch.column("event_time").cast(pa.timestamp("us")).cast(day))
            .append_column("quarantine_date", batch.column("ingest_time").cast(pa.timestamp("us")).cast(day)))


@contextmanager
def _session_conf(spark, conf: dict[str, str]):
    """``conf`` set on the session inside the block, then the session's own values back. A streaming query
    started inside keeps ``conf`` for its whole life (it runs on a copy of the session made at its start)."""
    before = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _nullable(table: pa.Table) -> pa.Table:
    """``table`` with every column nullable, as Spark's Delta writer declares a table's columns (some of Spark's
    columns come out of ``toArrow`` as not null)."""
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


#: The ``batches`` table: one accounting row per micro-batch.
ACCOUNTING_SCHEMA = pa.schema([
    ("batch_id", pa.int64()), ("rows", pa.int64()), ("silver_rows", pa.int64()), ("quarantined_rows", pa.int64()),
    ("quarantined_by_reason", pa.string()), ("max_event_time", pa.timestamp("us", tz="UTC")),
    ("max_event_time_by_partition", pa.string()), ("watermark_by_partition", pa.string()),
    ("recorded_at", pa.timestamp("us", tz="UTC")), ("day", pa.date32())])


class StreamingJob:
    def __init__(self, settings: Settings, spark=None, available_now: bool = False):
        from churn.spark import spark_session

        self.settings = settings
        self.available_now = available_now
        self.spark = spark or spark_session(settings, "churn-stream")
        storage.ensure_bucket(settings)
        self.lake = LakePaths(storage.lake_url(settings))
        self.checkpoints = storage.checkpoints_url(settings)
        self.silver_writer = _app_id(settings, self.checkpoints, "silver")
        self.dedup = dedup_kind(settings, storage.join(self.checkpoints, "silver"))
        self.bronze_writer = bronze_writer(settings, self.checkpoints, self.dedup)
        # the silver batches write Bronze: the query keeps every record's raw columns, and its duplicates, flagged
        self._batches_write_bronze = self.bronze_writer == "silver_batch"
        # batches at most this old may have run (and written) before this process: see ``_append``
        self._may_replay_upto = last_planned_batch(settings, storage.join(self.checkpoints, "silver"))
        self._max_event_time: dict[int, dict[int, float]] = {}
        self._lock = threading.Lock()
        self._feature_store = None
        self._profiles_store = None
        self._dlq_producer = None  # to cdr.dlq and customer-profiles.dlq, opened on the first dead letter
        self._redis = None
        self._online_writer = None  # churn.online_writer.FeastRedisWriter, opened on the first push
        self._feature_state: FeatureState | None = None
        self._writers = ThreadPoolExecutor(6, thread_name_prefix="delta-write")  # a batch's writes at once
        # a batch's work on the driver beside the next batch's Spark job (``overlap_batches``)
        self._ender = ThreadPoolExecutor(1, thread_name_prefix="end-batch")
        self._ending = None  # the last batch's work, a Future
        self._pending = PendingBatches(settings, pending_url(storage.join(self.checkpoints, "silver")))
        self.last_pushed_ref_time = 0.0
        self.queries = []
        self._duplicates = None  # the silver query's count of duplicates dropped (timers: see start_silver)
        self._duplicates_counted = 0

    # -- sources ---------------------------------------------------------------------------
    def _kafka(self, max_offsets: int, topic: str | None = None):
        s = self.settings
        return (
            self.spark.readStream.format("kafka")
            .options(**spark_kafka_options(s, "stream"))
            .option("subscribe", topic or s.topics.cdr.name)
            .option("startingOffsets", s.streaming.starting_offsets)
            .option("maxOffsetsPerTrigger", str(max_offsets))
            .option("includeHeaders", "true")
            .option("kafka.fetch.max.wait.ms", str(s.streaming.kafka_fetch_max_wait_ms))
            .load()
        )

    def _trigger(self, seconds: float) -> dict:
        if self.available_now:
            return {"availableNow": True}
        return {"processingTime": f"{seconds} seconds"}

    # -- bronze ----------------------------------------------------------------------------
    def start_bronze(self):
        from pyspark.sql import functions as F

        rows = self._kafka(self.settings.streaming.bronze_max_offsets_per_trigger).select(
            "key", "value", "headers", "topic", "partition", "offset",
            F.col("timestamp").alias("kafka_timestamp"), F.col("timestampType").alias("kafka_timestamp_type"),
            F.current_timestamp().alias("ingest_time"),
        ).withColumn("ingest_date", F.to_date("ingest_time"))
        writer = (
            rows.writeStream.format("delta").queryName("bronze").outputMode("append")
            .option("checkpointLocation", storage.join(self.checkpoints, "bronze"))
            .partitionBy("ingest_date").trigger(**self._trigger(self.settings.streaming.bronze_trigger_s))
        )
        # Bronze is off the freshness path: its jobs wait for cores while Silver's have tasks to run (a
        # query's jobs run in the pool set on the thread that starts it)
        context = self.spark.sparkContext
        context.setLocalProperty("spark.scheduler.pool", BACKGROUND_POOL)
        try:
            query = writer.start(self.lake.bronze)
        finally:
            context.setLocalProperty("spark.scheduler.pool", None)
        self.queries.append(query)
        return query

    # -- silver ----------------------------------------------------------------------------
    def start_silver(self):
        from pyspark.sql import functions as F

        self._load_progress()
        self.end_pending_batches()
        st = self.settings.streaming
        raw = self._batches_write_bronze
        records = self._kafka(st.max_offsets_per_trigger).select(*KAFKA_INPUTS, *(RAW_INPUTS if raw else ()))
        if st.validate_tasks > 0:
            records = records.coalesce(st.validate_tasks)
        parsed = records.mapInArrow(validate_arrow, spark_schema(with_raw=raw))
        # the batch's time as each row's ingest time, the same when it is replayed: added on the driver
        # (``batch_time``) where the de-duplication goes by the batches' own time, so that the plan holds no value
        # of the batch's and Spark's generated code serves every batch; by the other kinds, which need the time
        # as a column, here (as a literal the batch's generated code would hold, so they run interpreted)
        time_column = dedup_time_column(self.dedup)
        if time_column:
            parsed = parsed.withColumn(time_column, F.current_timestamp())
        checkpoint = storage.join(self.checkpoints, "silver")
        deduped, self._duplicates = drop_duplicates_within_window(
            parsed, "dedup_key", time_column, st.dedup_window_s, self.dedup, flag="duplicate" if raw else None)
        writer = (
            deduped.writeStream.queryName("silver").foreachBatch(self._silver_batch)
            .option("checkpointLocation", checkpoint)
            .trigger(**self._trigger(st.trigger_s))
        )
        with _session_conf(self.spark, silver_query_conf(self.dedup)):
            query = writer.start()
        self.queries.append(query)
        return query

    # -- profiles --------------------------------------------------------------------------
    def start_profiles(self, after=None):
        """Start the profiles query, or with ``after`` (a started query) once that one has run its first batch
        (``streaming.deferred_query``): started together, the two first batches share the cores."""
        if after is not None:
            query = DeferredQuery("profiles", self._profiles_query,
                                  ready=lambda: after.lastProgress is not None or not after.isActive)
        else:
            query = self._profiles_query()
        self.queries.append(query)
        return query

    def _profiles_query(self):
        st = self.settings.streaming
        upserts = self._kafka(st.profiles_max_offsets_per_trigger, self.settings.topics.customer_profiles.name)
        return (
            upserts.select("partition", "offset", "value").writeStream.queryName("profiles")
            .foreachBatch(self._profiles_batch)
            .option("checkpointLocation", storage.join(self.checkpoints, "profiles"))
            .trigger(**self._trigger(st.profiles_trigger_s)).start()
        )

    def _profiles_batch(self, df, batch_id: int) -> None:
        """One batch of profile upserts (few: profiles change rarely), handled on the driver."""
        from churn.profiles import ingest_upserts

        topic = self.settings.topics.customer_profiles.name
        rows = [(r.partition, r.offset, None if r.value is None else bytes(r.value)) for r in df.collect()]
        if not rows:
            return
        if self._profiles_store is None:  # its own store: the silver query's thread pushes through the other
            self._profiles_store = self._open_feature_store()
        done = ingest_upserts(self.settings, topic, rows, self._profiles_store)
        if done.invalid:
            self._dead_letter_profiles(topic, done.invalid)
        metrics.PROFILE_UPSERTS.labels("loaded").inc(done.loaded)
        metrics.PROFILE_UPSERTS.labels("already_loaded").inc(done.already_loaded)
        metrics.PROFILE_UPSERTS.labels("invalid").inc(len(done.invalid))
        log.info("profiles batch %d: %d upserts, %d new versions, %d already loaded, %d invalid", batch_id,
                 done.messages, done.loaded, done.already_loaded, len(done.invalid))

    def _dead_letter_profiles(self, topic: str, invalid) -> None:
        """Invalid upserts to ``customer-profiles.dlq``, original bytes and the reason in headers (at least
        once, like ``cdr.dlq``)."""
        self._send_dead_letters(self.settings.topics.customer_profiles_dlq.name, topic, [
            (bad.customer_id, bad.record["value"].encode(), bad.reason, bad.detail, bad.record["partition"],
             bad.record["offset"]) for bad in invalid])

    def _send_dead_letters(self, dlq: str, topic: str, letters) -> None:
        """Records to the dead-letter topic ``dlq``: each ``(key, value, reason, detail, partition, offset)``, the
        original key and bytes with the reason, its detail and where the record came from in headers.

        Delivered before this returns, or it raises (the batch fails and is replayed on restart, so no dead
        letter is lost): each is given ``DLQ_DELIVERY_TIMEOUT_S``, as long as Spark's Kafka sink gives a
        record. One producer of the job's own, thread safe: both queries' threads use it.
        """
        from churn.transport import producer

        with self._lock:
            if self._dlq_producer is None:
                self._dlq_producer = producer(self.settings, role="stream",
                                              **{"message.timeout.ms": int(DLQ_DELIVERY_TIMEOUT_S * 1000)})
        p = self._dlq_producer
        failed: list = []

        def delivered(err, _msg) -> None:
            if err is not None:
                failed.append(err)

        for key, value, reason, detail, partition, offset in letters:
            p.produce(dlq, value=value, key=None if key is None else key.encode(), on_delivery=delivered,
                      headers=[("reason", reason.encode()), ("reason_detail", (detail or "").encode()),
                               ("source_topic", topic.encode()), ("source_partition", str(partition).encode()),
                               ("source_offset", str(offset).encode())])
        left = p.flush(DLQ_DELIVERY_TIMEOUT_S + 10)
        if left or failed:
            raise RuntimeError(f"dead letters to {dlq} not delivered: {len(failed)} failed, {left} still queued"
                               + (f" ({failed[0]})" if failed else ""))

    def _load_progress(self) -> None:
        """Newest event time per Kafka partition of every batch already accounted for."""
        from delta.tables import DeltaTable

        if DeltaTable.isDeltaTable(self.spark, self.lake.batches):
            for row in self.spark.read.format("delta").load(self.lake.batches).select(
                    "batch_id", "max_event_time_by_partition").collect():
                self._max_event_time[row.batch_id] = {
                    int(p): t for p, t in json.loads(row.max_event_time_by_partition or "{}").items()}

    def watermark_before(self, batch_id: int) -> dict[int, float]:
        """Event-time watermark per Kafka partition for ``batch_id``, from earlier batches only
        (so a replay decides the same): the newest event time its partition delivered, minus
        the allowed lateness. Per partition, because producers order events per key (and so per
        partition) but partitions run at their own pace: one global maximum would call a slower
        partition's on-time events late."""
        with self._lock:
            earlier = [m for b, m in self._max_event_time.items() if b < batch_id]
        newest: dict[int, float] = {}
        for by_partition in earlier:
            for p, t in by_partition.items():
                newest[p] = max(newest.get(p, t), t)
        lateness = self.settings.streaming.allowed_lateness_s
        return {p: t - lateness for p, t in newest.items()}

    def _append(self, table: pa.Table, path: str, sink: str, batch_id: int, partition_by: str | None = None,
                merge_schema: bool = False) -> None:
        """Append ``table`` as one Delta commit tagged ``<writer>-<sink>:<batch>`` (its ``userMetadata``), written
        by delta-rs from the driver.

        Idempotent per batch: a batch that may have run before this process started (see
        ``last_planned_batch``) is first looked up by its tag in the table's recent commits and
        skipped if it is there. Later batches are new by construction, so they pay nothing:
        Delta's own ``txnAppId``/``txnVersion`` check (Spark's writer) rebuilds the table's state with
        three Spark jobs on every write, which cost ~0.5 s per table and batch here.
        """
        from deltalake import CommitProperties

        tag = self._tag_unless_written(path, sink, batch_id)
        if tag is None:
            return
        storage.write_delta(self.settings, path, table, mode="append",
                            partition_by=[partition_by] if partition_by else None,
                            schema_mode="merge" if merge_schema else None,
                            configuration={"delta.checkpointInterval": str(CHECKPOINT_INTERVAL[sink])},
                            commit_properties=CommitProperties(custom_metadata={"userMetadata": tag}))

    def _tag_unless_written(self, path: str, sink: str, batch_id: int) -> str | None:
        """The batch's commit tag in the table (its ``userMetadata``: the writer, the table, the batch), or None
        if a batch that may have run before this process (see ``_append``) already committed it there."""
        tag = f"{self.silver_writer}-{sink}:{batch_id}"
        if batch_id <= self._may_replay_upto and _committed(self.settings, path, tag):
            log.info("batch %d: %s already committed to %s, not written again", batch_id, sink, path)
            return None
        return tag

    def _silver_batch(self, df, batch_id: int) -> None:
        """One micro-batch: one Spark job brings its verdicts and rows to the driver, which ends the batch
        (``_end_batch``): here, or, with ``overlap_batches`` and the query behind, on a thread of its own while
        Spark runs the next batch's job, the batch's rows kept (``streaming.pending_batches``) until it has
        ended. Caught up, the batch ends here: its push then has the cores to itself, which keeps features
        fresh, and the next batch has no records waiting to start on."""
        clock = _PhaseClock()
        # The batch's only Spark job (Kafka read, validation, de-duplication) brings the rows to the driver as
        # Arrow, as the query made them; what depends on the batch (its id, its time, its watermarks) is added
        # here, in Arrow, instead of as expressions in the query's plan, whose generated code would then differ
        # from batch to batch. Everything after runs here too: the counts, the features (numpy), and the writes through
        # delta-rs and a Kafka producer (as Spark jobs of their own, the Silver write, the quarantine write and the
        # dead letters cost 0.3-1.0 s each per batch on two cores, whatever its size).
        wm = self.watermark_before(batch_id)
        rows = df.toArrow()
        if "ingest_time" not in rows.schema.names:
            ingest = batch_time(self.settings, storage.join(self.checkpoints, "silver"), batch_id)
            rows = rows.append_column("ingest_time", pa.repeat(pa.scalar(ingest, INGEST_TIME), rows.num_rows))
        local = _with_verdicts(rows, wm, batch_id)
        self._count_duplicates()
        clock.mark("spark job")
        self.wait_for_batches()  # the last batch's work; its failure fails this batch too (both run again on restart)
        newest = self._record_newest(batch_id, local)
        if not (self.settings.streaming.overlap_batches and self._behind(local)):
            self._end_batch(local, batch_id, newest, clock)
            return
        if local.num_rows:
            self._pending.write(batch_id, local)
        clock.mark("rows kept")
        self._ending = self._ender.submit(self._end_pending, local, batch_id, newest, clock)

    def _record_newest(self, batch_id: int, local: pa.Table) -> dict[int, float]:
        """The newest event time per Kafka partition of the batch's Silver rows, recorded before the next batch
        starts: its watermarks depend on it (``watermark_before``)."""
        newest = _newest_by_partition(_on_time(local))
        with self._lock:
            self._max_event_time[batch_id] = newest
        return newest

    def _behind(self, local: pa.Table) -> bool:
        """Whether the batch read as many records as a batch may (``max_offsets_per_trigger``, less under one per
        partition, as Spark shares the limit out by rounding down): more are waiting, and the next batch's Spark
        job can start at once. Its rows (``local``) are every record it read, or, where Bronze is a query of its
        own, all but the duplicates (a batch with many is taken as caught up: ended before the next starts)."""
        s = self.settings
        return local.num_rows > s.streaming.max_offsets_per_trigger - max(1, s.topics.cdr.partitions)

    def _end_pending(self, local: pa.Table, batch_id: int, newest: dict[int, float], clock: "_PhaseClock") -> None:
        self._end_batch(local, batch_id, newest, clock)
        self._pending.remove(batch_id)

    def end_pending_batches(self) -> None:
        """End the batches Spark committed whose work a stopped process may not have ended (``overlap_batches``),
        oldest first, before the query resumes; forget those it did not commit (Spark runs them again)."""
        self._pending.remove_leftovers()
        committed = set(_batch_ids(self.settings, storage.join(self.checkpoints, "silver", "commits")))
        for batch_id in self._pending.ids():
            if batch_id in committed:
                log.info("batch %d: committed, its work on the driver not known to have ended: ending it", batch_id)
                local = self._pending.read(batch_id)
                self._end_pending(local, batch_id, self._record_newest(batch_id, local), _PhaseClock())
            else:
                self._pending.remove(batch_id)

    def wait_for_batches(self) -> None:
        """Wait until every batch the silver query has run has also ended on the driver (``overlap_batches``);
        raise the failure of one that did not."""
        if self._ending is not None:
            self._ending.result()  # a failure stays: every later wait raises it too
            self._ending = None

    def _end_batch(self, local: pa.Table, batch_id: int, max_by_partition: dict[int, float],
                   clock: "_PhaseClock") -> None:
        """The driver's work of a batch (``local``: its rows with their verdicts; ``max_by_partition``: the newest
        event time per partition of its Silver rows, ``_record_newest``): Bronze, Silver, quarantine,
        accounting, dead letters, and the features pushed to Feast first (freshness) while the Delta writes
        and dead letters run beside them."""
        import pyarrow.compute as pc

        if local.num_rows == 0:  # nothing arrived (e.g. a batch that only advances the dedup watermark)
            return
        bronze_write = []
        if self._batches_write_bronze:
            bronze = _bronze_rows(local)
            bronze_write.append(lambda: self._append(bronze, self.lake.bronze, "bronze", batch_id, "ingest_date"))
            local = local.filter(pc.invert(local.column("duplicate")))
        total = local.num_rows
        if total == 0:  # only duplicates
            bronze_write[0]()
            return
        is_good = pc.is_null(local.column("reason"))
        on_time = local.filter(is_good)
        rejected = local.filter(pc.invert(is_good))
        good = on_time.num_rows
        bad = Counter(rejected.column("reason").to_pylist())
        clock.mark("verdicts")
        max_t = max(max_by_partition.values(), default=None)
        wm = self.watermark_before(batch_id)
        recorded_at = datetime.now(timezone.utc)
        accounting = pa.Table.from_pylist([{
            "batch_id": batch_id, "rows": total, "silver_rows": good, "quarantined_rows": total - good,
            "quarantined_by_reason": json.dumps(dict(bad)),
            "max_event_time": None if max_t is None else datetime.fromtimestamp(max_t, timezone.utc),
            "max_event_time_by_partition": json.dumps(max_by_partition), "watermark_by_partition": json.dumps(wm),
            "recorded_at": recorded_at, "day": recorded_at.date()}], schema=ACCOUNTING_SCHEMA)
        # The Delta writes and dead letters are independent and each idempotent per batch: started now, they
        # overlap the feature work below. The batch ends when all of them are done.
        writes = [*bronze_write,
                  lambda: self._append(_nullable(on_time.select(SILVER_COLUMNS)), self.lake.silver, "silver",
                                       batch_id, "event_date"),
                  lambda: self._append(accounting, self.lake.batches, "batches", batch_id, "day")]
        if bad:
            quarantine = _nullable(rejected.select(QUARANTINE_COLUMNS))
            writes.append(lambda: self._append(quarantine, self.lake.quarantine, "quarantine", batch_id,
                                               "quarantine_date"))
            writes.append(lambda: self._dead_letter(quarantine))
        pending = [self._writers.submit(write) for write in writes]
        try:
            if good:
                rows, replay = self._state_after(on_time.select(INPUT_COLUMNS), batch_id, clock)
                covered = self.covered_offsets(batch_id)
                rows["covered_offsets"] = [covered] * len(rows)
                if not replay:  # recorded alongside the push
                    pending.append(self._writers.submit(self._record_features, rows, batch_id))
                self._push_features(rows, clock, covered)
        finally:  # never leave a write running into the next batch, even when the push failed
            wait(pending)
        for future in pending:
            future.result()  # raises the first failure: the batch fails and is replayed on restart
        clock.mark("delta writes+dlq (after the push)")
        metrics.record_batch(good, dict(bad))
        log.info("batch %d: %d rows, %d to silver, %d quarantined in %s", batch_id, total, good,
                 total - good, clock)

    def _count_duplicates(self) -> None:
        """Duplicates the batch's job dropped, into ``churn_stream_duplicates_dropped_total`` (with Spark's
        operator, ``metrics.record_progress`` counts them from its progress instead)."""
        if self._duplicates is None:
            return
        total = self._duplicates.value()
        metrics.DUPLICATES.labels("silver").inc(total - self._duplicates_counted)
        self._duplicates_counted = total

    # -- features --------------------------------------------------------------------------
    @property
    def feature_state(self) -> FeatureState:
        """Every customer's state, loaded once from ``feature_history`` (see ``streaming.feature_state``)."""
        if self._feature_state is None:
            self._feature_state = self._load_feature_state()
        return self._feature_state

    def _load_feature_state(self) -> FeatureState:
        from delta.tables import DeltaTable
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        path = self.lake.feature_history
        if not DeltaTable.isDeltaTable(self.spark, path):
            return FeatureState()
        history = self.spark.read.format("delta").load(path)
        if "writer_id" not in history.columns:  # a history written before writer ids were recorded
            history = history.withColumn("writer_id", F.lit(None).cast("string")) \
                .withColumn("written_at", F.lit(None).cast("timestamp"))
        newest = Window.partitionBy("customer_id").orderBy(
            F.coalesce("written_at", F.lit(0).cast("timestamp")).desc(), F.col("batch_id").desc())
        latest = (history.withColumn("_n", F.row_number().over(newest)).filter("_n = 1")
                  .select("customer_id", "ref_time", *SUM_FEATURES, "active_days").toPandas())
        applied = history.filter(F.col("writer_id") == self.silver_writer).agg(F.max("batch_id")).first()[0]
        state = FeatureState.from_history(latest, -1 if applied is None else applied)
        log.info("feature state of %d customers loaded; batches up to %d already applied", len(state),
                 state.applied_batch)
        return state

    def _state_after(self, on_time, batch_id: int, clock: "_PhaseClock"):
        """The batch's decayed sums (of ``on_time``, its Silver rows' ``INPUT_COLUMNS`` as Arrow) merged into
        the customers' state: ``(rows, replay)``.

        The rows are applied to the in-memory state only once recorded (``_record_features``). A
        batch replayed after a crash whose rows were already recorded (``replay``) is not merged
        again: its rows are the customers' present state, and pushing them changes nothing.
        """
        partial = partial_sums_table(on_time).to_pandas()
        clock.mark("features.compute")
        state = self.feature_state
        replay = batch_id <= state.applied_batch
        return (state.current(partial["customer_id"]) if replay else state.merged(partial)), replay

    def covered_offsets(self, batch_id: int) -> list[int]:
        """Per ``cdr`` partition, the offset where ``batch_id`` ends (exclusive), from the silver query's offset
        log, which Spark writes before it runs the batch: the state after this batch holds every counted CDR
        below these offsets."""
        ends = batch_offsets(self.settings, storage.join(self.checkpoints, "silver"), batch_id,
                             self.settings.topics.cdr.name)
        return [ends.get(p, 0) for p in range(max(ends, default=-1) + 1)]

    def _push_features(self, rows, clock: "_PhaseClock", covered: list[int]) -> None:
        """State rows to Feast's online store (an upsert, newer event times only), then the offsets they cover
        (for the scorer's overlay: ``streaming.scoring.overlay``), and the freshness metric."""
        from churn.feature_store import covered_offsets_key

        if self.settings.streaming.online_writer == "redis":
            self.online_writer.write_frame("customer_activity", rows)
        else:
            from feast.data_source import PushMode

            self.feature_store.push("customer_activity_push",
                                    rows[["customer_id", "feature_time", *ACTIVITY_ONLINE]], to=PushMode.ONLINE)
        if covered:
            self.redis.hset(covered_offsets_key(self.settings), mapping={str(p): o for p, o in enumerate(covered)})
        self.last_pushed_ref_time = max(self.last_pushed_ref_time, float(rows["ref_time"].max()))
        metrics.record_push(self.last_pushed_ref_time)
        clock.mark("features.push")

    def _record_features(self, rows, batch_id: int) -> None:
        """Append the batch's new state rows to ``feature_history`` (idempotent per batch), then apply them."""
        import pandas as pd

        recorded = rows.assign(batch_id=batch_id, writer_id=self.silver_writer,
                               written_at=pd.Timestamp.now(tz="UTC").floor("us"))
        table = pa.Table.from_pandas(recorded[HISTORY_SCHEMA.names], schema=HISTORY_SCHEMA, preserve_index=False)
        self._append(table, self.lake.feature_history, "feature_history", batch_id, merge_schema=True)
        self.feature_state.apply(rows, batch_id)

    @property
    def redis(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis(**redis_options(self.settings, "stream"),
                                      socket_timeout=10, socket_connect_timeout=10)
        return self._redis

    @property
    def online_writer(self):
        if self._online_writer is None:
            from churn.online_writer import FeastRedisWriter

            self._online_writer = FeastRedisWriter.from_settings(self.settings, "stream")
        return self._online_writer

    @property
    def feature_store(self):
        if self._feature_store is None:
            self._feature_store = self._open_feature_store()
        return self._feature_store

    def _open_feature_store(self):
        """A Feast store over the settings' repo, with the definitions applied first."""
        from churn import feature_store

        feature_store.ensure_applied(self.settings, role="stream")
        return feature_store.store(self.settings, role="stream")

    def _dead_letter(self, quarantine: pa.Table) -> None:
        """Quarantined records to ``cdr.dlq``: original key and bytes, the reason in headers.

        At least once: a replayed batch may send its dead letters again; the headers
        ``source_partition``/``source_offset`` identify each original record.
        """
        columns = ["kafka_key", "value", "reason", "reason_detail", "kafka_partition", "kafka_offset"]
        self._send_dead_letters(self.settings.topics.cdr_dlq.name, self.settings.topics.cdr.name,
                                zip(*(quarantine.column(c).to_pylist() for c in columns)))

    # -- running ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """What the first batch would otherwise do: Feast's definitions applied and its store opened,
        the customers' feature state loaded. Fails early (before any query starts) if Feast is not usable."""
        _ = self.feature_store, self.feature_state  # both are opened on first use

    def start(self) -> None:
        self.prepare()
        threading.Thread(target=self._start_workers, name="start-python-workers", daemon=True).start()
        self.spark.streams.addListener(metrics.MetricsListener())
        if self.bronze_writer == "query":  # otherwise the silver query's batches write Bronze
            if bronze_process.runs_apart(self.settings, self.available_now):
                self.queries.append(bronze_process.BronzeProcess(self.settings))
            else:
                self.start_bronze()
        self.start_profiles(after=self.start_silver())

    def _start_workers(self) -> None:
        """The silver query's Python workers started while its first trigger is busy elsewhere
        (``streaming.parse.start_workers``); a failure here costs only the head start."""
        try:
            start_workers(self.spark, self.settings.streaming.validate_tasks or self.spark.sparkContext.defaultParallelism)
        except Exception as e:  # noqa: BLE001
            log.warning("the Python workers could not be started ahead of the first batch: %s", e)

    def stop(self, between_batches_within_s: float = 45.0) -> None:
        """Stop every query, each between two of its micro-batches: stopping one mid-batch interrupts
        Spark's tasks wherever they are (a ``StackOverflowError`` deep in ``java.util.regex`` was seen in
        the silver query's thread when stopped during a large batch). A query still busy after
        ``between_batches_within_s`` is stopped anyway; its checkpoint makes either way resumable."""
        deadline = time.monotonic() + between_batches_within_s
        apart = [q for q in self.queries if isinstance(q, bronze_process.BronzeProcess)]
        for q in apart:  # a query in a process of its own stops by itself meanwhile, waited for last
            q.request_stop()
        for q in [q for q in self.queries if q not in apart] + apart:
            while q.isActive and time.monotonic() < deadline:
                try:
                    if not q.status.get("isTriggerActive", False):
                        break
                except Exception:  # the query ended meanwhile
                    break
                time.sleep(0.05)
            q.stop()
        try:
            self.wait_for_batches()
        except Exception:  # noqa: BLE001 - it is the job's failure (``failure``); the batch runs again on restart
            log.exception("the silver query's last batch did not end")

    def failure(self) -> BaseException | None:
        """Why the last batch's work on the driver failed (``overlap_batches``), if it did: the silver query fails
        with it at its next batch; until then it looks healthy."""
        ending = self._ending
        if ending is None or not ending.done():
            return None
        return ending.exception()

    def await_any(self, timeout_s: float | None = None) -> None:
        self.spark.streams.awaitAnyTermination(timeout_s)
