"""Gold rebuild time versus CDR volume (1M, 2M, 5M CDRs in Silver), and one training run.

For each volume, a Silver table of that many simulated CDRs (all 7,043 customers, as many days as
it takes) is written with Spark as the stream writes it (not timed), then ``run_gold`` rebuilds
Gold for the whole range behind the quality gate (timed: read, aggregate, snapshot features,
gate, publish, compaction). Training time is measured once on the snapshot's customers.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from churn.config import Settings
from churn.features import DAY
from churn.lake import LakePaths, silver_frame
from churn.simulator import Simulator

EVENTS_PER_DAY = 138_000  # all 7,043 customers, about 20 CDRs each per day


def _write_silver(spark, settings: Settings, events: int) -> tuple[datetime, datetime, int]:
    end = datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp()
    days = events / EVENTS_PER_DAY
    sim = Simulator(seed=9, start_s=end - days * DAY, end_s=end)
    ids = np.asarray(sim.pop.customer_id, dtype=object)
    path = LakePaths(Path(settings.streaming.lake_dir)).silver
    written = 0

    def flush(chunk: list[dict]) -> int:
        frame = silver_frame({k: np.concatenate([c[k] for c in chunk]) for k in chunk[0]}, first_id=written)
        spark.createDataFrame(frame).write.format("delta").mode("append").partitionBy("event_date").save(path)
        return len(frame)

    chunk: list[dict] = []
    for step in sim.backfill_steps(slice_s=6 * 3600.0):
        chunk.append(step.good.silver_columns(ids))
        if sum(len(c["event_time"]) for c in chunk) >= 500_000:
            written += flush(chunk)
            chunk = []
    if chunk:
        written += flush(chunk)
    first = datetime.fromtimestamp(end - days * DAY, timezone.utc)
    return first, datetime.fromtimestamp(end - 1, timezone.utc), written


def bench_gold(base: Settings) -> dict[str, tuple[float, str, dict]]:
    """Gold rebuild (Spark, quality gate, publish, compaction) time at 1M, 2M and 5M CDRs; scaling factor."""
    from batch.gold import run_gold
    from churn.spark import spark_session

    results: dict[str, tuple[float, str, dict]] = {}
    seconds = {}
    for events in (1_000_000, 2_000_000, 5_000_000):
        tmp = Path(tempfile.mkdtemp(prefix="churn-bench-gold-"))
        s = base.model_copy(deep=True)
        s.streaming.lake_dir = tmp / "lake"
        spark = spark_session(s, app_name="bench-gold")
        spark.sparkContext.setLogLevel("ERROR")
        first, last, written = _write_silver(spark, s, events)
        t0 = time.perf_counter()
        run = run_gold(s, first.date(), last.date(), spark=spark)
        seconds[events] = time.perf_counter() - t0
        label = f"{events // 1_000_000}m"
        results[f"gold_rebuild_{label}_cdrs"] = (seconds[events], "s", {
            "silver_rows": run.silver_rows, "customer_days": run.customer_day_rows, "snapshots": run.snapshot_rows,
            "days": (last.date() - first.date()).days + 1, "gate_passed": run.gate.passed})
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["gold_rebuild_scaling_5m_vs_1m"] = (seconds[5_000_000] / seconds[1_000_000], "x", {
        "ideal_linear": 5.0})

    from churn.model.bootstrap import simulated_training_set
    from churn.model.inputs import MODEL_FEATURES
    from churn.model.training import train

    ts = simulated_training_set(base, customers=7043, days=60)
    t0 = time.perf_counter()
    result = train(ts.X, ts.y, ts.at_s, MODEL_FEATURES, n_trials=base.training.trials)
    results["train_seconds_7043_customers"] = (time.perf_counter() - t0, "s", {
        "rows": len(ts.y), "trials": base.training.trials, "validation_roc_auc": result.metrics["roc_auc"]})
    return results
