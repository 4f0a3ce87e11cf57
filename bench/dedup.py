"""What the silver query's de-duplication costs per micro-batch as the ids it remembers grow: Spark's
``dropDuplicatesWithinWatermark`` against ``churn.spark.DropDuplicatesWithinWindow`` (event-time timers,
``StreamingSettings.dedup``).

Each operator runs as the silver query runs it (RocksDB state store, two state partitions, an hour's window
on the batch's time) over Parquet files, one file per batch: files of new ids fill the state with
``remembered`` ids (a million per batch), then ``BATCHES`` files of ``BATCH_ROWS`` new ids each are the measured batches. An hour of ``cdr`` at
1,000 events/s is 3.6 M ids; at 9,000/s, 32 M.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path

from churn.config import Settings

REMEMBERED = (250_000, 2_000_000, 8_000_000)
BATCH_ROWS = 10_000
BATCHES = 6  # measured; the median of the last BATCHES - 1 (the first after the fill is colder)
FILL_BATCH = 1_000_000


def _files(folder: Path, remembered: int) -> None:
    """The fill's files (a million new ids each, a batch each), then the measured batches' files: new unique
    ids with a payload the size of a CDR's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    fill = [min(FILL_BATCH, remembered - start) for start in range(0, remembered, FILL_BATCH)]
    for i, rows in enumerate(fill + [BATCH_ROWS] * BATCHES):
        payload = b"" if i < len(fill) else b"x" * 200  # the fill's rows are only counted
        pq.write_table(pa.table({"event_id": [uuid.uuid4().hex for _ in range(rows)],
                                 "payload": pa.array([payload] * rows, pa.binary())}),
                       folder / f"part-{i:04d}.parquet")


def _run(s: Settings, folder: Path, kind: str, remembered: int) -> dict:
    """One operator over ``folder``'s files: seconds per measured batch, and in all for the fill."""
    from pyspark.sql import functions as F

    from churn.spark import spark_session
    from streaming.job import _session_conf, dedup_time_column, drop_duplicates_within_window, silver_query_conf

    spark = spark_session(s, f"bench-dedup-{kind}")
    try:
        schema = spark.read.parquet(str(folder)).schema
        rows = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(str(folder))
        time_column = dedup_time_column(kind)
        if time_column:
            rows = rows.withColumn(time_column, F.current_timestamp())
        deduped, _ = drop_duplicates_within_window(rows, "event_id", time_column, s.streaming.dedup_window_s, kind)
        seconds: list[tuple[int, float]] = []

        fill_files = -(-remembered // FILL_BATCH)

        def batch(df, batch_id) -> None:
            fill = batch_id < fill_files  # (a batch without data runs only once no file is left)
            started = time.perf_counter()
            n = df.count() if fill else df.toArrow().num_rows  # the fill's rows: not to the driver
            seconds.append((n, time.perf_counter() - started))

        with _session_conf(spark, silver_query_conf(kind)):
            query = (deduped.writeStream.foreachBatch(batch).trigger(availableNow=True)
                     .option("checkpointLocation", tempfile.mkdtemp(prefix="churn-bench-dedup-")).start())
        query.awaitTermination()
        measured = [t for n, t in seconds if n == BATCH_ROWS][1:]
        return {"batch_s": statistics.median(measured), "runs": [round(t, 3) for t in measured],
                "fill_s": round(sum(t for n, t in seconds if n != BATCH_ROWS), 1)}
    finally:
        spark.stop()


def bench_dedup_state(s: Settings) -> dict:
    """Seconds per micro-batch of 10,000 new event ids for each de-duplication operator, with 0.25, 2 and 8
    million ids remembered (the window's contents), as the silver query runs them; the median of 5 batches."""
    out: dict = {}
    for remembered in REMEMBERED:
        folder = Path(tempfile.mkdtemp(prefix="churn-bench-dedup-")) / "files"
        _files(folder, remembered)
        got = {kind: _run(s, folder, kind, remembered) for kind in ("spark", "timers")}
        label = f"{remembered / 1e6:g}m"
        for kind, result in got.items():
            out[f"stream_dedup_{kind}_batch_s_with_{label}_remembered"] = (
                result["batch_s"], "s", {"remembered": remembered, "batch_rows": BATCH_ROWS, **result})
        out[f"stream_dedup_timers_vs_spark_with_{label}_remembered"] = (
            got["timers"]["batch_s"] / got["spark"]["batch_s"], "x", {"remembered": remembered})
        print(f"{remembered:,} remembered: spark {got['spark']}, timers {got['timers']}", flush=True)
    return out


LIVE_RATE = 9_000  # events/s: about 25 % of the Bronze-alone ceiling on two cores (as stream_ab's)
LIVE_SECONDS = 360


def bench_dedup_live(s: Settings) -> dict:
    """The whole streaming job live at 9,000 events/s for 6 minutes with each de-duplication operator (one run
    each, Spark's first, on one stack): feature freshness p99 over the run, in its first and in its last minute
    (the ids remembered grow by 540,000 a minute), and the Silver batches' p50 over the last 100."""
    from run import bench_stream_sustained
    from stream_ab import _variant

    out: dict = {}
    for kind in ("spark", "timers"):
        got = bench_stream_sustained(_variant(s, [("streaming", "dedup", kind)]), {"run": LIVE_RATE},
                                     stop_when_behind=False, seconds=LIVE_SECONDS)
        p99, _, detail = got["run"]
        by_minute = detail["freshness_p99_s_by_minute"]
        out[f"stream_dedup_live_{kind}_freshness_p99"] = (p99, "s", detail)
        for which, index in (("first", 0), ("last", -1)):
            out[f"stream_dedup_live_{kind}_freshness_p99_{which}_minute"] = (
                by_minute[index] if by_minute else -1.0, "s", {"rate": LIVE_RATE, "by_minute": by_minute})
        print(f"{kind}: freshness p99 {p99} s, by minute {by_minute}, batches p50 {detail['batch_duration_p50_s']} s",
              flush=True)
    return out
