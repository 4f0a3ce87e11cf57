"""Gold: customer-day behaviour aggregates and a customer snapshot, rebuilt from Silver behind a quality gate.

Three steps, each a plain function (``churn batch nightly`` and the Airflow DAG,
``batch/dags/churn_nightly.py``, call the same ones), with the lake between them:

1. ``stage_gold(settings, date_from, date_to)`` reads Silver as of its current version (recorded)
   for the date range (and, for the snapshot, everything up to its end), builds ``customer_day``
   (per customer and UTC day: every ``churn.features`` measure as a plain daily sum, plus
   dropped-call rate and care share) and ``customer_snapshot`` (per customer as of the end of
   ``date_to``: profile plus every activity feature, computed with the same Spark feature code as
   the stream and read with the same ``churn.model.inputs`` code as the scorer), and writes both to
   a staging area, ``gold/staging/<from>_<to>/``, with a manifest (``manifest.json``); the
   published Gold is not touched;
2. ``check_gold`` runs the quality gate (``batch.quality``) on that Silver version and on both staged
   tables, and records its verdict in the manifest; a failed gate is recorded in ``gold/runs`` (with
   its report) and raises ``QualityGateFailed``: nothing is published, the previous Gold stays current;
3. ``publish_gold`` publishes staged Gold whose gate passed, and nothing else: ``customer_day``
   overwrites exactly the range (``replaceWhere``), the snapshot overwrites its date, so a rerun
   replaces rather than appends; then compacts Silver's small streaming files for the range
   (``OPTIMIZE``), records the run in ``gold/runs`` and removes the staging area.

``run_gold`` runs the three in order (``churn batch gold``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from churn import storage
from churn.config import Settings
from churn.features import MEASURES
from churn.lake import LakePaths, table_rows


class QualityGateFailed(RuntimeError):
    def __init__(self, report):
        super().__init__(report.text())
        self.report = report


class NotStaged(RuntimeError):
    """Nothing staged for the range, or staged Gold that has not passed the quality gate: nothing published."""


@dataclass
class GoldRun:
    date_from: date
    date_to: date
    silver_rows: int
    customer_day_rows: int
    snapshot_rows: int
    gate: object | None  # batch.quality.GateReport (None: not run by this call)
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


# -- the staging area ------------------------------------------------------------------------
def _staging(settings: Settings, date_from: date, date_to: date) -> str:
    return LakePaths.of(settings).gold_staging(date_from, date_to)


def _manifest(settings: Settings, staging: str, date_from: date, date_to: date) -> dict:
    try:
        return json.loads(storage.read_text(settings, storage.join(staging, "manifest.json")))
    except FileNotFoundError:
        raise NotStaged(f"no Gold staged for {date_from} .. {date_to} in {staging}: run the gold step first "
                        f"(nothing published)") from None


def _write_manifest(settings: Settings, staging: str, manifest: dict) -> None:
    storage.write_text(settings, storage.join(staging, "manifest.json"), json.dumps(manifest, indent=2, default=str))


def _run(manifest: dict, gate=None, published: bool = False) -> GoldRun:
    return GoldRun(date.fromisoformat(manifest["date_from"]), date.fromisoformat(manifest["date_to"]),
                   manifest["silver_rows"], manifest["customer_day_rows"], manifest["snapshot_rows"], gate, published)


def _silver_in_range(spark, lake: LakePaths, version: int, date_from: date, date_to: date):
    from pyspark.sql import functions as F

    silver = spark.read.format("delta").option("versionAsOf", version).load(lake.silver)
    return silver, silver.filter((F.col("event_date") >= F.lit(date_from)) & (F.col("event_date") <= F.lit(date_to)))


# -- the three steps ---------------------------------------------------------------------------
def stage_gold(settings: Settings, date_from: date, date_to: date, spark=None) -> GoldRun:
    """Build ``customer_day`` and ``customer_snapshot`` for the range from Silver's current version into the
    staging area (replacing what was staged for the range before); the published Gold is not touched."""
    from pyspark.sql import functions as F

    from churn.spark import spark_session

    spark = spark or spark_session(settings, app_name="churn-gold")
    lake = LakePaths.of(settings)
    staging = _staging(settings, date_from, date_to)
    storage.remove_tree(settings, staging)  # a new stage of the range: the old one, checked or not, is gone
    silver_version = storage.open_delta(settings, lake.silver).version()
    silver_all, in_range = _silver_in_range(spark, lake, silver_version, date_from, date_to)
    until = silver_all.filter(F.col("event_time") < F.lit(_end_of(date_to)).cast("timestamp"))
    customer_day(in_range).write.format("delta").save(storage.join(staging, "customer_day"))
    customer_snapshot(spark, settings, until, _end_of(date_to), date_to).write.format("delta").save(
        storage.join(staging, "customer_snapshot"))
    manifest = {"date_from": date_from.isoformat(), "date_to": date_to.isoformat(), "silver_version": silver_version,
                "silver_rows": in_range.count(), "customer_day_rows": table_rows(storage.join(staging, "customer_day"), settings),
                "snapshot_rows": table_rows(storage.join(staging, "customer_snapshot"), settings),
                "staged_at": datetime.now(timezone.utc).isoformat(), "gate": None}
    _write_manifest(settings, staging, manifest)
    return _run(manifest)


def check_gold(settings: Settings, date_from: date, date_to: date, spark=None, max_change: float = 0.5,
               freshness_s: float = 86400.0):
    """The quality gate on the staged range: the Silver version it was built from and both staged tables.
    Returns the ``batch.quality.GateReport`` if it passed; otherwise records the run (not published, with
    the failures) in ``gold/runs`` and raises ``QualityGateFailed``. Either way the verdict goes into the
    staging manifest, which ``publish_gold`` requires to have passed."""
    from pyspark.sql import functions as F

    from batch import quality
    from churn.spark import spark_session

    staging = _staging(settings, date_from, date_to)
    manifest = _manifest(settings, staging, date_from, date_to)
    spark = spark or spark_session(settings, app_name="churn-gold-gate")
    lake = LakePaths.of(settings)
    _, in_range = _silver_in_range(spark, lake, manifest["silver_version"], date_from, date_to)
    in_range = in_range.withColumn("event_time_s", F.col("event_time").cast("double")).persist()
    daily = spark.read.format("delta").load(storage.join(staging, "customer_day")).persist()
    snapshot = spark.read.format("delta").load(storage.join(staging, "customer_snapshot")).persist()
    days = (date_to - date_from).days + 1
    previous = _last_published_rows(spark, lake, days)
    bounds = None if previous is None else (int(previous * (1 - max_change)), int(previous * (1 + max_change)) + 1)
    report = quality.gate({
        "silver": (in_range, quality.silver_suite(min_rows=1, newest_at_least_s=_end_of(date_to) - freshness_s)),
        "customer_day": (daily, quality.customer_day_suite(bounds)),
        "customer_snapshot": (snapshot, quality.snapshot_suite()),
    })
    for frame in (in_range, daily, snapshot):
        frame.unpersist()
    manifest["gate"] = {"passed": report.passed, "expectations": len(report.checks), "report": report.text(),
                        "checked_at": datetime.now(timezone.utc).isoformat()}
    _write_manifest(settings, staging, manifest)
    if not report.passed:
        _record(spark, lake, _run(manifest, report), report.failures)
        raise QualityGateFailed(report)
    return report


def publish_gold(settings: Settings, date_from: date, date_to: date, spark=None) -> GoldRun:
    """Publish the staged range, if its quality gate passed (``NotStaged`` otherwise): ``customer_day`` replaces
    exactly the range, the snapshot its date; Silver compacted for the range; the run recorded; staging removed."""
    from churn.spark import spark_session

    staging = _staging(settings, date_from, date_to)
    manifest = _manifest(settings, staging, date_from, date_to)
    if not (manifest["gate"] or {}).get("passed"):
        raise NotStaged(f"the Gold staged for {date_from} .. {date_to} has not passed the quality gate"
                        f"{' (it failed)' if manifest['gate'] else ''}: run the quality gate first (nothing published)")
    spark = spark or spark_session(settings, app_name="churn-gold-publish")
    lake = LakePaths.of(settings)
    (spark.read.format("delta").load(storage.join(staging, "customer_day"))
     .write.format("delta").mode("overwrite").partitionBy("event_date")
     .option("replaceWhere", f"event_date >= '{date_from}' AND event_date <= '{date_to}'")
     .save(lake.gold_customer_day))
    (spark.read.format("delta").load(storage.join(staging, "customer_snapshot"))
     .write.format("delta").mode("overwrite").partitionBy("snapshot_date")
     .option("replaceWhere", f"snapshot_date = '{date_to}'").save(lake.gold_customer_snapshot))
    _compact(spark, lake, date_from, date_to)
    run = _run(manifest, published=True)
    _record(spark, lake, run, [])
    storage.remove_tree(settings, staging)
    return run


def run_gold(settings: Settings, date_from: date, date_to: date, spark=None, max_change: float = 0.5,
             freshness_s: float = 86400.0) -> GoldRun:
    """Stage, gate and publish the range in one go (``churn batch gold``); a failed gate raises
    ``QualityGateFailed`` with nothing published."""
    from churn.spark import spark_session

    spark = spark or spark_session(settings, app_name="churn-gold")
    stage_gold(settings, date_from, date_to, spark=spark)
    report = check_gold(settings, date_from, date_to, spark=spark, max_change=max_change, freshness_s=freshness_s)
    run = publish_gold(settings, date_from, date_to, spark=spark)
    run.gate = report
    return run


def _compact(spark, lake: LakePaths, date_from: date, date_to: date) -> None:
    from delta.tables import DeltaTable

    (DeltaTable.forPath(spark, lake.silver).optimize()
     .where(f"event_date >= '{date_from}' AND event_date <= '{date_to}'").executeCompaction())


def _record(spark, lake: LakePaths, run: GoldRun, failures: list) -> None:
    row = [(run.date_from, run.date_to, run.date_to.toordinal() - run.date_from.toordinal() + 1, run.silver_rows,
            run.customer_day_rows, run.snapshot_rows, run.published,
            json.dumps([c.__dict__ for c in failures]), datetime.now(timezone.utc))]
    schema = ("date_from date, date_to date, days int, silver_rows long, customer_day_rows long, snapshot_rows long, "
              "published boolean, failures string, finished_at timestamp")
    spark.createDataFrame(row, schema).write.format("delta").mode("append").save(lake.gold_runs)
