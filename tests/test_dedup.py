"""The silver query's de-duplication (``streaming.job.drop_duplicates_within_window``: buckets of expiries or timers
by processing time, event-time timers in ``jvm/churn-spark``, or Spark's own operator) on real Spark with the RocksDB state store,
and which operator a checkpoint keeps."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from churn.config import Settings

WINDOW_S = 10.0  # longer than a cold first batch takes


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from churn.spark import spark_session

    s = Settings(streaming={"lake_dir": str(tmp_path_factory.mktemp("lake"))})
    session = spark_session(s, "test-dedup")
    yield session
    session.stop()


def _file(folder, name: str, ids: list[str]) -> None:
    """A file of ``ids``; Spark's file source takes files in the order of their modification times."""
    path = folder / f"{name}.parquet"
    pq.write_table(pa.table({"event_id": ids, "n": list(range(len(ids)))}), path)
    at = time.time() + int(name)  # later files later, even within the file system's time resolution
    os.utime(path, (at, at))


def _compilations(spark) -> int:
    """How many classes Spark has generated and compiled in this JVM so far (a cached one is not compiled again)."""
    return spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()


def _run(spark, folder, checkpoint, kind: str = "buckets", flagged: list | None = None,
         compiled: list | None = None) -> tuple[list[list[str]], int]:
    """One run to the end of ``folder``'s files, a file per batch, from ``checkpoint``: each batch's ids kept
    (sorted), and the rows the operator counted as dropped (-1 with Spark's, which reports them in its progress).
    With ``flagged`` (a list), duplicates are kept flagged: each batch's flagged ids (sorted) are appended to it.
    With ``compiled`` (a list), Spark's count of compiled classes is appended to it at the end of each batch.
    The query runs with the silver query's settings for ``kind``."""
    from pyspark.sql import functions as F

    from streaming.job import _session_conf, dedup_time_column, drop_duplicates_within_window, silver_query_conf

    rows = spark.readStream.schema("event_id string, n long").option("maxFilesPerTrigger", 1).parquet(str(folder))
    time_column = dedup_time_column(kind)
    if time_column:
        rows = rows.withColumn(time_column, F.current_timestamp())
    if flagged is not None:
        rows = rows.withColumn("duplicate", F.lit(False))
    deduped, dropped = drop_duplicates_within_window(rows, "event_id", time_column, WINDOW_S, kind,
                                                     flag=None if flagged is None else "duplicate")
    kept: list[list[str]] = []

    def batch(df, _batch_id) -> None:
        table = df.toArrow()
        if flagged is not None:
            duplicate = table.column("duplicate").to_pylist()
            if any(duplicate):
                flagged.append(sorted(i for i, d in zip(table.column("event_id").to_pylist(), duplicate) if d))
            table = table.filter(pc.invert(table.column("duplicate")))
        ids = sorted(table.column("event_id").to_pylist())
        if ids:
            kept.append(ids)
        if compiled is not None:
            compiled.append(_compilations(spark))

    with _session_conf(spark, silver_query_conf(kind)):
        query = (deduped.writeStream.foreachBatch(batch).trigger(availableNow=True)
                 .option("checkpointLocation", str(checkpoint)).start())
    query.awaitTermination()
    return kept, (dropped.value() if dropped is not None else -1)


@pytest.mark.parametrize("kind", ["buckets", "processing_timers"])
def test_a_key_is_dropped_while_its_window_lasts_and_kept_again_after_it_across_a_restart(spark, tmp_path, kind):
    """By the batches' own time: a key is a duplicate until the window has passed since the batch that kept it."""
    from streaming.job import dedup_kind

    files, checkpoint = tmp_path / "files", tmp_path / "checkpoint"
    files.mkdir()
    _file(files, "0", ["a", "b", "a", "c", "b"])  # duplicates within one batch
    _file(files, "1", ["c", "d", "e"])  # and across batches
    kept, dropped = _run(spark, files, checkpoint, kind=kind)
    assert kept == [["a", "b", "c"], ["d", "e"]]
    assert dropped == 3

    time.sleep(WINDOW_S + 1)  # the window of every id so far has passed
    _file(files, "2", ["e", "f"])  # e is forgotten: its window ended before this batch's time
    _file(files, "3", ["a", "f", "g", "g"])  # f came a batch ago, within the window
    kept, dropped = _run(spark, files, checkpoint, kind=kind)  # restarted from the checkpoint: the memory survived
    assert kept == [["e", "f"], ["a", "g"]]
    assert dropped == 2  # f, and the second g (the counter is this run's)
    # the checkpoint keeps its kind whatever the settings say
    assert dedup_kind(Settings(streaming={"dedup": "timers"}), str(checkpoint)) == kind


def test_the_buckets_forget_expired_keys(spark, tmp_path):
    """The buckets' state holds a key until its bucket's timer finds it expired: after the window, the next batch
    leaves only the keys it kept itself (read back with Spark's state data source)."""
    files, checkpoint = tmp_path / "files", tmp_path / "checkpoint"
    files.mkdir()
    first = [f"k{i}" for i in range(300)]  # in most of the 256 buckets
    _file(files, "0", first)
    _run(spark, files, checkpoint)
    assert sorted(_remembered(spark, checkpoint)) == sorted(first)
    time.sleep(WINDOW_S + 1)
    _file(files, "1", ["k0", "new"])  # k0 expired: kept again, and remembered anew
    kept, dropped = _run(spark, files, checkpoint)
    assert (kept, dropped) == ([["k0", "new"]], 0)
    assert sorted(_remembered(spark, checkpoint)) == ["k0", "new"]


def _remembered(spark, checkpoint) -> list[str]:
    """The keys in the buckets' state (``DropDuplicatesByBucket``'s map ``expiries``) as of the last batch."""
    state = spark.read.format("statestore").option("stateVarName", "expiries").load(str(checkpoint))
    return [row["key"] for row in state.select("user_map_key.*").toDF("key").collect()]


def test_by_event_time_timers_a_key_is_remembered_until_the_watermark_passes_it(spark, tmp_path):
    """Checkpoints started with event-time timers on the batch's time keep them: the watermark trails a batch."""
    files, checkpoint = tmp_path / "files", tmp_path / "checkpoint"
    files.mkdir()
    _file(files, "0", ["a", "b", "a", "c", "b"])  # duplicates within one batch
    _file(files, "1", ["c", "d", "e"])  # and across batches
    kept, dropped = _run(spark, files, checkpoint, kind="timers")
    assert kept == [["a", "b", "c"], ["d", "e"]]
    assert dropped == 3

    time.sleep(WINDOW_S + 1)  # the window of every id so far has passed, but no batch's watermark says so yet
    # the next batch's watermark is the last batch's time minus the window: "e" is remembered
    _file(files, "2", ["e", "f"])
    # this one's is that batch's time minus the window: past a's time (more than the window before), not f's
    _file(files, "3", ["a", "f", "g", "g"])
    kept, dropped = _run(spark, files, checkpoint, kind="timers")  # restarted from the checkpoint
    assert kept == [["f"], ["a", "g"]]
    assert dropped == 3  # e, f, and the second g (the counter is this run's)

    from streaming.job import dedup_kind

    assert dedup_kind(Settings(streaming={"dedup": "spark"}), str(checkpoint)) == "timers"
    assert dedup_kind(Settings(), str(checkpoint)) == "timers"


def test_duplicates_kept_flagged_are_the_rows_the_operator_would_drop(spark, tmp_path):
    """The silver query that writes Bronze keeps every row: the duplicates flagged, the rest as without the flag."""
    files, checkpoint = tmp_path / "files", tmp_path / "checkpoint"
    files.mkdir()
    _file(files, "0", ["a", "b", "a", "c", "b", "a"])
    _file(files, "1", ["c", "d", "e", "d"])
    flagged: list[list[str]] = []
    kept, dropped = _run(spark, files, checkpoint, flagged=flagged)
    assert kept == [["a", "b", "c"], ["d", "e"]]
    assert flagged == [["a", "a", "b"], ["c", "d"]]
    assert dropped == 5  # counted as duplicates all the same
    flagged = []
    kept, dropped = _run(spark, files, tmp_path / "timers-checkpoint", kind="processing_timers", flagged=flagged)
    assert (kept, flagged, dropped) == ([["a", "b", "c"], ["d", "e"]], [["a", "a", "b"], ["c", "d"]], 5)
    flagged = []
    kept, dropped = _run(spark, files, tmp_path / "event-time-checkpoint", kind="timers", flagged=flagged)
    assert (kept, flagged, dropped) == ([["a", "b", "c"], ["d", "e"]], [["a", "a", "b"], ["c", "d"]], 5)
    with pytest.raises(ValueError, match="timers"):
        _run(spark, files, tmp_path / "spark-checkpoint", kind="spark", flagged=[])


def test_a_checkpoint_keeps_the_operator_it_was_started_with(spark, tmp_path):
    from streaming.job import dedup_kind

    files, checkpoint = tmp_path / "files", tmp_path / "checkpoint"
    files.mkdir()
    _file(files, "0", ["a", "a", "b"])
    kept, _ = _run(spark, files, checkpoint, kind="spark")
    assert kept == [["a", "b"]]
    assert dedup_kind(Settings(), str(checkpoint)) == "spark"  # the settings' kind differs: the checkpoint says spark
    assert dedup_kind(Settings(), str(tmp_path / "new")) == "buckets"
    assert dedup_kind(Settings(streaming={"dedup": "spark"}), str(tmp_path / "new")) == "spark"


@pytest.mark.parametrize("kind", ["buckets", "processing_timers", "timers"])
def test_by_processing_time_the_query_compiles_its_code_once_for_every_batch(spark, tmp_path, monkeypatch, kind):
    """With the de-duplication by the batches' own time, the plan holds no value of the batch's: Spark's generated
    code is compiled by the first batch and serves the others. By event time (the batch's time as a column, the
    watermark in the operator) each batch's values are in its code, which is why that kind runs interpreted: here
    it is compiled, as it would be, to show each batch compiling anew."""
    files = tmp_path / "files"
    files.mkdir()
    for n in range(4):
        _file(files, str(n), [f"{n}-{i}" for i in range(50)] + [f"{n}-0"])
    monkeypatch.setattr("streaming.job.SILVER_QUERY_CONF", {"spark.sql.codegen.wholeStage": "true",
                                                            "spark.sql.codegen.factoryMode": "FALLBACK"})
    compiled: list[int] = []
    kept, dropped = _run(spark, files, tmp_path / "checkpoint", kind=kind, compiled=compiled)
    assert [len(ids) for ids in kept] == [50] * 4 and dropped == 4
    after_first = [n - compiled[0] for n in compiled[1:]]
    if kind != "timers":
        assert after_first == [0, 0, 0]
    else:  # at least the projection of the batch's time and the operator's watermark predicate, in each batch
        assert after_first[-1] >= 2 * 3
