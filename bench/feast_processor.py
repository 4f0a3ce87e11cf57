"""Side by side on the same topic and the same Redis: our streaming job vs Feast's contrib
``SparkKafkaProcessor`` ingesting the same activity features.

Both catch up on the same CDRs already in Kafka, with the same micro-batch cap
(``maxOffsetsPerTrigger``; ours applies it to its silver query, whose batches also
write Bronze) and the same feature code (``partial_sums_by_executors``, the numpy
rendering run inside Spark's executors), writing the same online features (the
fields of ``customer_activity``). Feast's processor is given a ``StreamFeatureView``
whose transformation is that feature code, as Feast's documentation shows for
Spark stream feature views. Each runs in a fresh process (so a fresh JVM): neither
inherits the other's warm-up.

What each does per micro-batch:

* ours: Bronze (every record), validation, Silver (deduplicated), quarantine and
  ``cdr.dlq``, each customer's decayed sums *merged* with their state, pushed to
  Feast and appended to the offline history; exactly once across restarts;
* Feast's: ``from_json`` of the value, the transformation, the newest row per
  customer written to the online store. Nothing is kept between batches, so each
  batch's sums *replace* the customer's values: after more than one batch the
  served features are those of the customer's last batch, not of their history.

Reported: events/s for each (from start to the last record, and once warm: every
batch but the first; the two run one after the other, which first alternating from
run to run), their ratios, and the share of customers whose served
features equal the batch computation over every event (rel 1e-6).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np

from churn.config import Settings

DAY = 86400.0
BATCH_ROWS = 30_000
BACKLOG_DAYS = 1.2  # simulated days in the side-by-side backlog: ~147,000 CDRs
#: Where SparkKafkaProcessor checkpoints: hard-coded in Feast (``/tmp/checkpoint/``), shared by every
#: processor on the machine, so a second run resumes from the first one's offsets unless it is removed.
FEAST_CHECKPOINT = Path("/tmp/checkpoint")


def _feast_processor_view(s: Settings, batch_path: Path):
    """A StreamFeatureView on the CDR topic whose transformation is our feature code."""
    from feast import Field, FileSource, KafkaSource
    from feast.data_format import JsonFormat
    from feast.stream_feature_view import stream_feature_view

    from feature_repo.activity import customer_activity
    from feature_repo.entities import customer
    from streaming.parse import CONTRACT_COLUMNS

    source = KafkaSource(
        name="cdr_kafka", timestamp_field="event_time", topic=s.topics.cdr.name,
        kafka_bootstrap_servers=s.kafka.bootstrap_servers,
        message_format=JsonFormat(schema_json=", ".join(f"{n} {d}" for n, _, d in CONTRACT_COLUMNS)),
        batch_source=FileSource(name="cdr_kafka_batch", path=str(batch_path), timestamp_field="feature_time"),
    )

    # the same online features as ours (the fields of feature_repo's customer_activity)
    @stream_feature_view(
        entities=[customer], ttl=timedelta(days=90), mode="spark", timestamp_field="feature_time", source=source,
        schema=[Field(name=f.name, dtype=f.dtype) for f in customer_activity.features],
    )
    def customer_activity_feast(df):
        from pyspark.sql import functions as F

        from churn.features import SUM_FEATURES, partial_sums_by_executors

        sums = partial_sums_by_executors(df.where(F.col("customer_id").isNotNull()))
        return sums.select("customer_id", F.timestamp_seconds("ref_time").alias("feature_time"), "ref_time",
                           F.col("active_days").cast("array<bigint>").alias("active_days"),
                           F.array(*[F.col(n) for n in SUM_FEATURES]).alias("sums"),
                           # it keeps no Kafka offsets: its states cover none (the scorer's overlay adds every CDR)
                           F.array().cast("array<bigint>").alias("covered_offsets"))

    return customer_activity_feast


def _run_feast_processor(s: Settings, total: int) -> tuple[float, dict]:
    """Feast's SparkKafkaProcessor from the earliest offset until it has read ``total`` records."""
    from feast.infra.contrib.spark_kafka_processor import SparkKafkaProcessor, SparkProcessorConfig

    from churn import feature_store
    from churn.spark import spark_session
    from feature_repo.entities import customer

    # the session first: with none, Feast's apply of a Spark stream view starts one without our jars
    spark = spark_session(s, app_name="feast-spark-kafka-processor")
    batch_path = Path(tempfile.mkdtemp(prefix="churn-bench-feast-")) / "activity.parquet"
    fs = feature_store.store(s)
    view = _feast_processor_view(s, batch_path)
    fs.apply([customer, view])
    shutil.rmtree(FEAST_CHECKPOINT, ignore_errors=True)
    config = SparkProcessorConfig(mode="spark", source="kafka", spark_session=spark,
                                  processing_time="0 seconds", query_timeout=1)
    processor = SparkKafkaProcessor(fs=fs, sfv=view, config=config, stream_source_options={
        "startingOffsets": "earliest", "maxOffsetsPerTrigger": str(BATCH_ROWS), "failOnDataLoss": "false"})
    started = time.perf_counter()
    query = processor.ingest_stream_feature_view()  # returns after query_timeout; the query runs on
    try:
        while True:
            read = sum(p["numInputRows"] for p in query.recentProgress)
            if read >= total:
                break
            if query.exception() is not None:
                raise RuntimeError(f"SparkKafkaProcessor failed: {query.exception()}")
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        progress = list(query.recentProgress)
    finally:
        query.stop()
        spark.stop()
        shutil.rmtree(FEAST_CHECKPOINT, ignore_errors=True)
    return total / elapsed, {"elapsed_s": round(elapsed, 1), **batch_summary(progress)}


def batch_summary(progress: list[dict]) -> dict:
    """Micro-batches that read rows: how many, duration p50, and the rate once warm (every batch but
    the first, whose time is mostly the JVM and Python workers starting: rows / summed durations)."""
    batches = [p for p in progress if p["numInputRows"]]
    durations = sorted(p["batchDuration"] / 1000 for p in batches)
    warm = batches[1:]
    warm_s = sum(p["batchDuration"] for p in warm) / 1000
    return {"batches": len(batches), "batch_duration_p50_s": round(durations[len(durations) // 2], 1),
            "first_batch_s": round(batches[0]["batchDuration"] / 1000, 1),
            "warm_events_per_s": round(sum(p["numInputRows"] for p in warm) / warm_s) if warm_s else None}


def stream_catch_up(s: Settings) -> tuple[float, list[dict]]:
    """Our streaming job on everything in Kafka, to the end (available-now): elapsed seconds and the
    silver query's progress reports."""
    from streaming.job import StreamingJob

    job = StreamingJob(s, available_now=True)
    job.prepare()  # Feast's store opened before the clock starts, as for Feast's processor
    started = time.perf_counter()
    job.start()
    for q in job.queries:
        q.awaitTermination()
    job.wait_for_batches()  # the last batch's work on the driver
    elapsed = time.perf_counter() - started
    progress = list(next(q for q in job.queries if q.name == "silver").recentProgress)
    job.spark.stop()
    return elapsed, progress


def _run_ours(s: Settings) -> tuple[float, dict]:
    elapsed, progress = stream_catch_up(s)
    return elapsed, {"elapsed_s": round(elapsed, 1), **batch_summary(progress)}


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new interpreter, so a new JVM: each system starts cold, as an operator starts
    it, and neither inherits the JVM the other warmed up (the JIT, loaded classes, Python workers). Not a
    pool's daemonic worker: ``fn`` may start processes of its own (a producer)."""
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_reporting_failures, args=(results, fn, *args))
    proc.start()
    while True:
        try:
            ok, value = results.get(timeout=1)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__} died with exit code {proc.exitcode}") from None
    proc.join()
    if not ok:
        raise RuntimeError(value)
    return value


def _reporting_failures(results, fn, *args):
    """``fn(*args)`` into ``results`` as (True, value), or its failure as (False, the traceback): Spark's
    exceptions do not pickle."""
    import traceback

    try:
        results.put((True, fn(*args)))
    except BaseException:
        results.put((False, traceback.format_exc()))


def _served_correctly(s: Settings, view: str, truth: dict[str, dict], at_most: int = 2000) -> float:
    """Share of customers whose served sums equal ``truth`` (the batch computation) to rel 1e-6."""
    from churn.features import SUM_FEATURES
    from churn.online_reader import FeastRedisReader

    customers = sorted(truth)[:at_most]
    rows = FeastRedisReader.from_settings(s).read(view, ["ref_time", "sums"], customers)
    good = 0
    for c, row in zip(customers, rows):
        if row is None or row["sums"] is None:
            continue
        expected = np.array([truth[c][n] for n in SUM_FEATURES])
        good += bool(np.allclose(row["sums"], expected, rtol=1e-6, atol=1e-9)
                     and abs(row["ref_time"] - truth[c]["ref_time"]) < 1e-3)
    return good / len(customers)


def side_by_side_backlog(base: Settings, stream_settings, days: float = BACKLOG_DAYS) -> tuple[Settings, int, float]:
    """The side-by-side set-up: settings with a topic of their own holding ``days`` simulated days of seed 2
    ending a day ago, micro-batches of at most ``BATCH_ROWS``, Feast keys of their own and
    Feast's definitions applied; the CDRs produced, and the simulation's end (epoch seconds)."""
    from churn import feature_store
    from churn.simulator.produce import run_backfill

    s = stream_settings(base)
    s.streaming.max_offsets_per_trigger = BATCH_ROWS
    # keys of its own in Redis: a run's customers may hold newer values left by the run before (the windows
    # overlap), which the online store's newer-only rule would keep over this run's
    s.feast.project = f"ours{uuid.uuid4().hex[:6]}"
    end = time.time() - DAY
    report = run_backfill(s, _backlog_simulator(end, days))
    feature_store.apply(s)
    return s, report.cdr_messages, end


def _backlog_simulator(end: float, days: float):
    """The side-by-side backlog's simulator (deterministic: a second one replays the same CDRs)."""
    from churn.simulator import Simulator

    return Simulator(seed=2, start_s=end - days * DAY, end_s=end)


_RUNS = itertools.count()  # side-by-side runs in this process


def bench_stream_vs_feast_processor(base: Settings, stream_settings, days: float = BACKLOG_DAYS,
                                    name: str = "stream_vs_feast_processor") -> dict:
    """Our streaming job vs Feast's SparkKafkaProcessor, same topic, same Redis, same feature code:
    events/s of each (catch-up on the same ``days`` of CDRs), ratio, and whether the served features are
    right. Figures are named ``name``_..."""
    from churn.features import partial_sums_numpy

    s, total, end = side_by_side_backlog(base, stream_settings, days)
    # the truth: the batch computation over every event (the simulator is deterministic)
    truth = partial_sums_numpy(_backlog_simulator(end, days).silver_columns())

    theirs_settings = s.model_copy(deep=True)
    theirs_settings.feast.project = f"feastproc{uuid.uuid4().hex[:6]}"  # same Redis, its own keys
    # The first to read a fresh backlog meets the broker colder: the order alternates from run to run
    ours_first = next(_RUNS) % 2 == 0
    for system in ("ours", "feast") if ours_first else ("feast", "ours"):
        if system == "ours":
            ours_elapsed, ours = in_fresh_process(_run_ours, s)
            ours_correct = _served_correctly(s, "customer_activity", truth)
        else:
            theirs_rate, theirs = in_fresh_process(_run_feast_processor, theirs_settings, total)
            theirs_correct = _served_correctly(theirs_settings, "customer_activity_feast", truth)
    ours_rate = total / ours_elapsed
    detail = {"events": total, "batch_rows_max": BATCH_ROWS, "first": "ours" if ours_first else "feast",
              "ours": {**ours, "events_per_s": round(ours_rate), "customers_served_correctly": ours_correct},
              "feast_spark_kafka_processor": {**theirs, "events_per_s": round(theirs_rate),
                                              "customers_served_correctly": theirs_correct}}
    print(detail, flush=True)
    return {
        f"{name}_ours_rate": (ours_rate, "events/s", detail),
        f"{name}_feast_rate": (theirs_rate, "events/s", detail),
        f"{name}_ratio": (ours_rate / theirs_rate, "x", detail),
        f"{name}_warm_ratio": (ours["warm_events_per_s"] / theirs["warm_events_per_s"], "x", {
            "ours_warm_events_per_s": ours["warm_events_per_s"],
            "feast_warm_events_per_s": theirs["warm_events_per_s"], "what": "every batch but the first"}),
        f"{name}_ours_correct_pct": (100 * ours_correct, "% of customers", {}),
        f"{name}_feast_correct_pct": (100 * theirs_correct, "% of customers", {}),
    }

