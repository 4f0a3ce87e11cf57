"""Gold: customer-day behaviour aggregates and a customer snapshot, rebuilt from Silver behind a quality gate.

``run_gold(settings, date_from, date_to)``:

1. reads Silver for the date range (and, for the snapshot, everything up to its end);
2. builds ``customer_day`` (per customer and UTC day: every ``churn.features`` measure as a plain
   daily sum, plus dropped-call rate and care share) and ``customer_snapshot`` (per customer as
   of the end of ``date_to``: profile plus every activity feature, computed with the same Spark
   feature code as the stream and read with the same ``churn.model.inputs`` code as the scorer);
3. runs the quality gate (``batch.quality``) on Silver and on both Gold frames;
4. only if it passes, publishes both: ``customer_day`` overwrites exactly the range
   (``replaceWhere``), the snapshot overwrites its date, so a rerun replaces rather than appends;
   then compacts Silver's small streaming files for the range (``OPTIMIZE``);
5. records the run (passed or failed, with the gate's report) in ``gold/runs``.

A failed gate publishes nothing (the previous Gold stays current) and raises ``QualityGateFailed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from churn.config import Settings
from churn.features import MEASURES
from churn.lake import LakePaths


class QualityGateFailed(RuntimeError):
    def __init__(self, report):
        super().__init__(report.text())
        self.report = report


@dataclass
class GoldRun:
    date_from: date
    date_to: date
    silver_rows: int
    customer_day_rows: int
    snapshot_rows: int
    gate: object  # batch.quality.GateReport
    published: bool


def _end_of(day: date) -> float:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc).timestamp()


def customer_day(silver):
    """Per customer and day: each measure's plain daily sum (the same filters and weights as the features)."""
    from pyspark.sql import functions as F

    sums = [F.sum(F.when(F.expr(m.spark_filter()), F.expr(m.spark_weight())).otherwise(F.lit(0.0))).cast("double")
            .alias(name) for name, m in MEASURES.items()]
    daily = silver.groupBy("customer_id", "event_date").agg(
        *sums, F.min("event_time").alias("first_event_time"), F.max("event_time").alias("last_event_time"))
    rate = lambda num, den: F.when(F.col(den) > 0, F.col(num) / F.col(den)).otherwise(F.lit(0.0))  # noqa: E731
    return (daily.withColumn("events", F.col("events").cast("long"))
            .withColumn("dropped_rate", rate("dropped_calls", "calls"))
            .withColumn("care_share", rate("care_calls", "calls")))


def customer_snapshot(spark, settings: Settings, silver_until, as_of_s: float, snapshot_date: date):
    """Per customer as of ``as_of_s``: the profile version in force then (``churn.profiles.as_of``) and every
    activity feature (scorer's definitions)."""
    import pandas as pd

    from churn import profiles
    from churn.features import partial_sums
    from churn.model.inputs import ACTIVITY_FEATURES, PROFILE_COLUMNS, activity_matrix

    states = partial_sums(silver_until).toPandas()
    records = states.to_dict("records")
    for r in records:
        r["active_days"] = list(r["active_days"])
    activity = activity_matrix(records, [as_of_s] * len(records))
    frame = pd.DataFrame(activity, columns=ACTIVITY_FEATURES)
    frame.insert(0, "customer_id", states["customer_id"].to_numpy())
    frame = frame.merge(profiles.as_of(settings, as_of_s)[["customer_id", *PROFILE_COLUMNS]], on="customer_id",
                        how="left")
    frame["snapshot_date"] = snapshot_date
    frame["as_of"] = pd.Timestamp(as_of_s, unit="s", tz="UTC")
    return spark.createDataFrame(frame)


def _last_published_rows(spark, lake: LakePaths, days: int) -> int | None:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, lake.gold_runs):
        return None
    from pyspark.sql import functions as F

    last = (spark.read.format("delta").load(lake.gold_runs).filter(F.col("published"))
            .orderBy(F.col("finished_at").desc()).limit(1).collect())
    if not last:
        return None
    return int(last[0].customer_day_rows / max(last[0].days, 1) * days)


def run_gold(settings: Settings, date_from: date, date_to: date, spark=None, max_change: float = 0.5,
             freshness_s: float = 86400.0) -> GoldRun:
    from pyspark.sql import functions as F

    from batch import quality
    from churn.spark import spark_session

    spark = spark or spark_session(settings, app_name="churn-gold")
    lake = LakePaths(Path(settings.streaming.lake_dir))
    silver_all = spark.read.format("delta").load(lake.silver)
    in_range = silver_all.filter((F.col("event_date") >= F.lit(date_from)) & (F.col("event_date") <= F.lit(date_to)))
    in_range = in_range.withColumn("event_time_s", F.col("event_time").cast("double")).persist()
    until = silver_all.filter(F.col("event_time") < F.lit(_end_of(date_to)).cast("timestamp"))
    days = (date_to - date_from).days + 1

    daily = customer_day(in_range).persist()
    snapshot = customer_snapshot(spark, settings, until, _end_of(date_to), date_to).persist()
    previous = _last_published_rows(spark, lake, days)
    bounds = None if previous is None else (int(previous * (1 - max_change)), int(previous * (1 + max_change)) + 1)
    report = quality.gate({
        "silver": (in_range, quality.silver_suite(min_rows=1, newest_at_least_s=_end_of(date_to) - freshness_s)),
        "customer_day": (daily, quality.customer_day_suite(bounds)),
        "customer_snapshot": (snapshot, quality.snapshot_suite()),
    })
    run = GoldRun(date_from, date_to, in_range.count(), daily.count(), snapshot.count(), report, report.passed)
    if report.passed:
        (daily.write.format("delta").mode("overwrite").partitionBy("event_date")
         .option("replaceWhere", f"event_date >= '{date_from}' AND event_date <= '{date_to}'")
         .save(lake.gold_customer_day))
        (snapshot.write.format("delta").mode("overwrite").partitionBy("snapshot_date")
         .option("replaceWhere", f"snapshot_date = '{date_to}'").save(lake.gold_customer_snapshot))
        _compact(spark, lake, date_from, date_to)
    _record(spark, lake, run)
    for frame in (in_range, daily, snapshot):
        frame.unpersist()
    if not report.passed:
        raise QualityGateFailed(report)
    return run


def _compact(spark, lake: LakePaths, date_from: date, date_to: date) -> None:
    from delta.tables import DeltaTable

    (DeltaTable.forPath(spark, lake.silver).optimize()
     .where(f"event_date >= '{date_from}' AND event_date <= '{date_to}'").executeCompaction())


def _record(spark, lake: LakePaths, run: GoldRun) -> None:
    import json

    row = [(run.date_from, run.date_to, run.date_to.toordinal() - run.date_from.toordinal() + 1, run.silver_rows,
            run.customer_day_rows, run.snapshot_rows, run.published,
            json.dumps([c.__dict__ for c in run.gate.failures]), datetime.now(timezone.utc))]
    schema = ("date_from date, date_to date, days int, silver_rows long, customer_day_rows long, snapshot_rows long, "
              "published boolean, failures string, finished_at timestamp")
    spark.createDataFrame(row, schema).write.format("delta").mode("append").save(lake.gold_runs)
