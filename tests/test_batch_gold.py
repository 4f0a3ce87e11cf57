"""Gold from Silver with real Spark and Delta: the tables, the quality gate that blocks, idempotent reruns."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pytest

from batch.gold import QualityGateFailed, run_gold
from churn import profiles
from churn.config import Settings
from churn.features import DAY, partial_sums_numpy
from churn.lake import LakePaths, silver_frame
from churn.model.inputs import ACTIVITY_FEATURES, activity_at
from churn.simulator import Simulator

END = datetime(2026, 10, 5, tzinfo=timezone.utc).timestamp()
FROM, TO = date(2026, 10, 2), date(2026, 10, 4)


def simulate(customers: int = 250, seed: int = 51) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """4 simulated days of ``customers`` up to ``END``: their events as Silver's columns (``silver_frame``
    makes them a frame to write) and the churn-label events (key, value) the simulator issued meanwhile."""
    sim = Simulator(seed=seed, start_s=END - 4 * DAY, end_s=END, customers=customers)
    ids = np.asarray(sim.pop.customer_id, dtype=object)
    parts, labels = [], []
    for step in sim.backfill_steps(slice_s=6 * 3600.0):
        parts.append(step.good.silver_columns(ids))
        labels += step.labels
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, labels


def plant_quality_failure(silver: str, day: date) -> None:
    """Append a copy of one of ``day``'s Silver events with a negative charge: a duplicate ``event_id`` and a
    charge out of range, two expectations of the gate's Silver suite."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable, write_deltalake

    row = DeltaTable(silver).to_pyarrow_dataset().head(1, filter=pc.field("event_date") == pa.scalar(day))
    write_deltalake(silver, row.set_column(row.schema.get_field_index("charge"), "charge",
                                           pa.array([-5.0], row.schema.field("charge").type)), mode="append")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A Silver table of 4 simulated days of 250 customers, written with Spark as the stream would."""
    root = tmp_path_factory.mktemp("gold")
    settings = Settings(run_dir=root / "run", streaming={"lake_dir": root / "lake"})
    from churn.spark import spark_session

    spark = spark_session(settings, app_name="gold-test")
    from churn.simulator.population import telco_csv_path

    profiles.load(settings, telco_csv_path(), materialize=False)  # as `churn features apply` does
    cols, _ = simulate()
    spark.createDataFrame(silver_frame(cols)).write.format("delta").partitionBy("event_date").save(
        LakePaths(root / "lake").silver)
    return settings, spark, cols


def _table(spark, path, order):
    return spark.read.format("delta").load(path).toPandas().sort_values(order).reset_index(drop=True)


def _version(spark, path) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, path).history(1).collect()[0].version


def test_gold_tables_agree_with_silver_and_with_the_scorers_feature_definitions(lake, capfd):
    settings, spark, cols = lake
    run = run_gold(settings, FROM, TO, spark=spark)
    assert run.published and run.gate.passed, run.gate.text()
    assert "Calculating Metrics" not in capfd.readouterr().err  # no progress bar per suite from the gate
    paths = LakePaths(settings.streaming.lake_dir)
    day = _table(spark, paths.gold_customer_day, ["customer_id", "event_date"])
    in_range = [(FROM <= datetime.fromtimestamp(t, timezone.utc).date() <= TO) for t in cols["event_time"]]
    assert day["events"].sum() == sum(in_range) == run.silver_rows
    assert set(day["event_date"]) == {FROM, date(2026, 10, 3), TO}
    snap = _table(spark, paths.gold_customer_snapshot, ["customer_id"])
    assert len(snap) == run.snapshot_rows == len(set(cols["customer_id"]))
    # the snapshot's features are the scorer's: numpy state of the same events, read at the same time
    as_of = datetime(2026, 10, 5, tzinfo=timezone.utc).timestamp()
    states = partial_sums_numpy(cols, at_s={c: as_of - 1e-6 for c in set(cols["customer_id"])})
    for row in snap.head(25).itertuples():
        expected = activity_at(states[row.customer_id], as_of)
        for name in ("events_7d", "care_calls_30d", "dropped_rate_7d", "active_days_30d", "data_mb_1d"):
            assert getattr(row, name) == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name
    assert set(ACTIVITY_FEATURES) <= set(snap.columns)
    # and its profile is each customer's version from the profile history
    history = profiles.history(settings).set_index("customer_id")
    for row in snap.head(25).itertuples():
        assert (row.tenure_months, row.contract, row.monthly_charges) == tuple(
            history.loc[row.customer_id, ["tenure_months", "contract", "monthly_charges"]])


def test_rerunning_the_same_range_changes_no_content(lake):
    settings, spark, _ = lake
    paths = LakePaths(settings.streaming.lake_dir)
    run_gold(settings, FROM, TO, spark=spark)
    before_day = _table(spark, paths.gold_customer_day, ["customer_id", "event_date"])
    before_snap = _table(spark, paths.gold_customer_snapshot, ["customer_id"]).drop(columns=[])
    version = _version(spark, paths.gold_customer_day)
    run_gold(settings, FROM, TO, spark=spark)
    assert _version(spark, paths.gold_customer_day) > version  # a new version of the table ...
    pd.testing.assert_frame_equal(_table(spark, paths.gold_customer_day, ["customer_id", "event_date"]), before_day)
    pd.testing.assert_frame_equal(_table(spark, paths.gold_customer_snapshot, ["customer_id"]), before_snap)  # ... same rows


def test_a_planted_quality_failure_publishes_nothing_then_a_good_run_publishes(lake):
    from delta.tables import DeltaTable

    settings, spark, _ = lake
    paths = LakePaths(settings.streaming.lake_dir)
    run_gold(settings, FROM, TO, spark=spark)
    versions = (_version(spark, paths.gold_customer_day), _version(spark, paths.gold_customer_snapshot))
    plant_quality_failure(paths.silver, TO)  # a duplicate event_id with a negative charge
    with pytest.raises(QualityGateFailed) as failed:
        run_gold(settings, FROM, TO, spark=spark)
    text = str(failed.value)
    assert "expect_column_values_to_be_unique(event_id)" in text and "expect_column_values_to_be_between(charge)" in text
    assert (_version(spark, paths.gold_customer_day), _version(spark, paths.gold_customer_snapshot)) == versions
    runs = spark.read.format("delta").load(paths.gold_runs).orderBy("finished_at").toPandas()
    assert not runs["published"].iloc[-1] and "event_id" in runs["failures"].iloc[-1]

    DeltaTable.forPath(spark, paths.silver).delete("charge < 0")
    run = run_gold(settings, FROM, TO, spark=spark)
    assert run.published and _version(spark, paths.gold_customer_day) > versions[0]
