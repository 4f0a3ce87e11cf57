"""The nightly retrain on a customer base other than the bundled sample: labels of customers without a
profile, without activity, or unknown altogether, and activity read from several Silver files.

Real Feast (file offline store: dask) over a private lake and registry, as ``churn features apply`` lays
them out, for the profiles; activity from a Silver Delta table written here (``write_silver``); no Kafka,
Redis or Spark: the labels are given as a frame and the online store is SQLite (a training set reads the
offline store only). On the bundled sample every label has a profile, and the
whole join fits in one dask partition; a larger label set spans several (``partitions``).
"""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import free_ports, settings_from, sqlite_feature_store

from churn.config import Settings
from churn.features import DAY, SUM_FEATURES
from churn.model.inputs import _N_PROFILE, ACTIVITY_FEATURES, MODEL_FEATURES

T0 = 1.79e9  # the first label's time; one more every half day


@pytest.fixture
def settings(tmp_path) -> Settings:
    tag = uuid.uuid4().hex[:6]
    return settings_from({"CHURN_RUN_DIR": str(tmp_path / "run"), "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake"),
                          "CHURN_SCORING__REGISTRY_DIR": str(tmp_path / "models"), "CHURN_FEAST__PROJECT": f"p{tag}"})


@pytest.fixture(params=[1, 4], ids=["one-partition", "four-partitions"])
def partitions(request, monkeypatch) -> int:
    """The entity rows reach each of Feast's joins after the first in this many dask partitions, in label
    order, as a label set too large for one partition does: labels of customers without a profile, later
    than the others (a new customer base), then fill partitions of their own."""
    if request.param > 1:
        import dask.dataframe as dd
        import feast.infra.offline_stores.dask as dask_store

        merge = dask_store._merge

        def split(left, right, keys):
            if isinstance(left, dd.DataFrame):
                left = dd.from_pandas(left.compute().sort_values("row"), npartitions=request.param, sort=False)
            return merge(left, right, keys)

        monkeypatch.setattr(dask_store, "_merge", split)
    return request.param


def profiles(settings: Settings, customers: list[str]) -> pd.DataFrame:
    """Profile rows for ``customers`` (the bundled table's first rows, renamed), written where apply writes them."""
    from churn.feature_store import profile_frame

    frame = profile_frame().head(len(customers)).assign(customer_id=customers)
    settings.streaming.lake_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(settings.streaming.lake_dir / "profile.parquet", index=False)
    return frame.set_index("customer_id")


def calls(customer: str, times, counterparty: str = "on_net") -> list[dict]:
    """Silver rows (``EventBatch.silver_columns``' fields) of one-minute voice calls at ``times``."""
    return [{"customer_id": customer, "event_time": float(t), "record_type": "voice", "direction": "outgoing",
             "duration_s": 60.0, "data_bytes": np.nan, "counterparty": counterparty, "dropped": False,
             "roaming": False, "charge": 0.1} for t in times]


def active_until(customer: str, t: float) -> list[dict]:
    """A customer's events as in a state at ``t``: a call to customer care and a 1 MB data session on ``t``'s
    day and the two before, the last ones at ``t`` (every trend defined: no NaN in the activity features)."""
    times = [t - 2 * DAY, t - DAY, t]
    data = [{**e, "record_type": "data", "duration_s": np.nan, "data_bytes": 1e6, "counterparty": None}
            for e in calls(customer, times)]
    return calls(customer, times, counterparty="customer_care") + data


def write_silver(settings: Settings, commits: list[dict], first_id: int = 0) -> int:
    """Append events to the lake's Silver Delta table, one commit (and file per day) for each dict of
    columns, with Silver's types (``churn.lake.silver_frame``), partitioned by day as the stream writes it.
    Returns the next free event id."""
    from deltalake import write_deltalake

    from churn.lake import LakePaths, silver_frame

    for cols in commits:
        write_deltalake(LakePaths(settings.streaming.lake_dir).silver, silver_frame(cols, first_id=first_id),
                        mode="append", partition_by=["event_date"])
        first_id += len(cols["event_time"])
    return first_id


def columns(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], str) else None)
            for k in rows[0]}


def register(settings: Settings):
    """The project's feature views, read from this test's lake, in the registry ``churn.feature_store.store``
    reads; a SQLite online store instead of Redis (nothing is materialized)."""
    from feature_repo.activity import activity_history, activity_push, customer_activity, customer_activity_named
    from feature_repo.entities import customer
    from feature_repo.profile import customer_profile, profile_source

    lake = settings.streaming.lake_dir

    def here(obj):
        obj = copy.deepcopy(obj)
        for source in (obj, getattr(obj, "batch_source", None), getattr(getattr(obj, "stream_source", None),
                                                                         "batch_source", None)):
            if source is not None and hasattr(source, "file_options"):
                source.file_options.uri = str(lake / ("profile.parquet" if source.name == profile_source.name
                                                      else "feature_history"))
        return obj

    return sqlite_feature_store(settings, [customer, *map(here, [profile_source, customer_profile, activity_history,
                                                                activity_push, customer_activity,
                                                                customer_activity_named])])


def mixed_base(settings: Settings, n_full: int, n_no_profile: int, n_no_activity: int, n_unknown: int,
               n_late: int) -> pd.DataFrame:
    """Labels, one per customer, half a day apart, every third churned, of customers with profile and
    activity (``FULL-``), activity only after their label (``LATE-``: unknown when observed), profile only
    (``NOACT-``), activity only (``NOPROF-``) and nothing at all (``GHOST-``), group after group in that
    order. Profiles also exist for customers without labels; each Silver commit holds events of several
    groups. Activity ends 20 days before the label, except for events after the label, which no row may see."""
    full = [f"FULL-{i:04d}" for i in range(n_full)]
    no_profile = [f"NOPROF-{i:04d}" for i in range(n_no_profile)]
    no_activity = [f"NOACT-{i:04d}" for i in range(n_no_activity)]
    ghosts = [f"GHOST-{i:04d}" for i in range(n_unknown)]
    late = [f"LATE-{i:04d}" for i in range(n_late)]
    customers = full + late + no_activity + no_profile + ghosts
    labels = pd.DataFrame({"customer_id": customers,
                           "label_time": T0 + 0.5 * DAY * np.arange(len(customers)),
                           "churned": np.arange(len(customers)) % 3 == 0})
    profiles(settings, full + no_activity + [f"OTHER-{i:04d}" for i in range(100)])
    at = labels.set_index("customer_id")["label_time"]
    rows = [e for c in full + no_profile for e in active_until(c, at[c] - 20 * DAY)]
    rows += [e for c in full[::2] for e in calls(c, [at[c] + 0.5 * DAY] * 50, "customer_care")]  # never seen
    rows += [e for c in late for e in active_until(c, at[c] + 3.0 * DAY)]  # all after the label
    write_silver(settings, [columns(rows[i::3]) for i in range(3)])
    return labels


def groups(ts) -> dict[str, np.ndarray]:
    prefix = np.array([c.split("-")[0] for c in ts.customer_id])
    return {g: prefix == g for g in ("FULL", "NOPROF", "NOACT", "GHOST", "LATE")}


def test_customers_without_profile_or_activity_train_with_missing_values(settings, partitions):
    """Regression: with labels of customers the profile table lacks, Feast's file store failed in its
    point-in-time join ("Divisions calculation failed for non-numeric column 'profile_time'") once the
    join spanned several partitions. Now they train with NaN for what is missing; labels of customers
    with neither profile nor activity at their observation time are left out and counted."""
    from batch.train import point_in_time_training_set
    from churn.feature_store import profile_frame

    labels = mixed_base(settings, n_full=30, n_no_profile=12, n_no_activity=10, n_unknown=16, n_late=4)
    ts = point_in_time_training_set(settings, labels, fs=register(settings), seed=3)

    g = groups(ts)
    assert len(ts.y) == len(ts.at_s) == len(ts.X) == 30 + 12 + 10
    assert [int(g[k].sum()) for k in ("FULL", "NOPROF", "NOACT", "GHOST", "LATE")] == [30, 12, 10, 0, 0]
    assert (ts.labels, ts.unknown, ts.without_profile, ts.without_activity) == (72, 20, 12, 10)
    kept = labels.set_index("customer_id").loc[ts.customer_id]
    assert ts.y.tolist() == kept["churned"].astype(int).tolist()  # each row keeps its own label
    assert int(ts.y.sum()) == 17  # labels 0, 3, .. 27 (FULL) and 36, 39, .. 54 (NOACT, NOPROF) churned
    assert np.all(ts.at_s <= kept["label_time"].to_numpy()) and np.all(ts.at_s >= kept["label_time"] - 7 * DAY)

    nan = np.isnan(ts.X)
    assert nan[g["NOPROF"], :_N_PROFILE].all() and not nan[g["NOPROF"], _N_PROFILE:].any()
    assert nan[g["NOACT"], _N_PROFILE:].all() and not nan[g["NOACT"], :_N_PROFILE].any()
    assert not nan[g["FULL"]].any()
    assert nan.sum() == 12 * _N_PROFILE + 10 * len(ACTIVITY_FEATURES)

    col = {name: ts.X[:, MODEL_FEATURES.index(name)] for name in MODEL_FEATURES}
    active = g["FULL"] | g["NOPROF"]
    assert np.all(col["active_days_30d"][active] == 3.0)
    ref = kept["label_time"].to_numpy() - 20 * DAY  # the last event before it, never one after the label
    assert np.allclose(col["days_since_last_event"][active], ((ts.at_s - ref) / DAY)[active], atol=1e-3)
    assert np.all(col["care_calls_30d"][active] < 3.0) and np.all(col["care_calls_30d"][active] > 0.0)
    expected = profile_frame().head(40)["tenure_months"].to_numpy()  # FULL-i is row i, NOACT-i row 30 + i
    index = [int(c.split("-")[1]) + (30 if c.startswith("NOACT") else 0) for c in ts.customer_id[~g["NOPROF"]]]
    assert np.array_equal(col["tenure_months"][~g["NOPROF"]], expected[index].astype(np.float32))


def test_activity_from_several_silver_files_reads_its_active_days(settings):
    """Regression: with a profile for every labelled customer, the training set failed on the activity
    Feast read back: ``active_days`` came as numpy arrays, and ``unpack_activity`` asked one for its truth
    value (``ValueError: The truth value of an array with more than one element is ambiguous``). Activity
    now comes from Silver (``churn.point_in_time``); its active days, from events in several files, too."""
    from batch.train import point_in_time_training_set

    labels = mixed_base(settings, n_full=24, n_no_profile=0, n_no_activity=0, n_unknown=0, n_late=0)
    ts = point_in_time_training_set(settings, labels, fs=register(settings))
    assert len(ts.y) == 24 and (ts.unknown, ts.without_profile, ts.without_activity) == (0, 0, 0)
    assert int(ts.y.sum()) == 8
    assert not np.isnan(ts.X).any()
    assert np.all(ts.X[:, MODEL_FEATURES.index("active_days_30d")] == 3.0)


def test_unpack_activity_takes_arrays_lists_and_nothing():
    from churn.feature_store import unpack_activity

    sums = np.arange(len(SUM_FEATURES), dtype=float)
    for days in (np.array([19000, 19001, 19002]), [19000, 19001, 19002]):
        state = unpack_activity(1.6e9, days, sums, named=False)
        assert state["active_days"] == [19000, 19001, 19002] and state["sums"] == sums.tolist()
    assert unpack_activity(1.6e9, None, sums)["active_days"] == []
    assert unpack_activity(1.6e9, np.array([], dtype=np.int64), sums)["active_days"] == []
    assert unpack_activity(1.6e9, [7], sums)[SUM_FEATURES[3]] == 3.0
    assert unpack_activity(None, [1, 2], sums) is None and unpack_activity(1.6e9, [1], None) is None


def test_nightly_training_reports_labels_of_unknown_customers(settings, monkeypatch):
    """The training step end to end (labels as the topic would give them): labels of unknown customers
    are counted in what the model was trained on (``Release.source``: the card's ``trained_on``, the
    nightly step's detail), not fatal; when no label is left the step is skipped (``NotEnoughLabels``)."""
    import batch.train
    from churn.model.registry import ModelRegistry

    labels = mixed_base(settings, n_full=190, n_no_profile=20, n_no_activity=20, n_unknown=15, n_late=5)
    register(settings)
    monkeypatch.setattr(batch.train, "labels_frame", lambda s: labels)
    release = batch.train.run_train(settings, trials=0)
    assert "250 labels" in release.source and "20 of unknown customers" in release.source, release.source
    assert "20 without a profile" in release.source and "20 without activity" in release.source
    card = ModelRegistry(settings.scoring.registry_dir).card(release.version)
    assert card["trained_on"] == release.source
    assert sum(w["rows"] for w in card["windows"].values()) == 230

    ghosts = labels.assign(customer_id=[f"GHOST-{i:04d}" for i in range(len(labels))])
    monkeypatch.setattr(batch.train, "labels_frame", lambda s: ghosts)
    with pytest.raises(batch.train.NotEnoughLabels, match="250 of unknown customers"):
        batch.train.run_train(settings, trials=0)


def test_a_failing_step_ends_the_nightly_with_its_summary_not_a_traceback(settings, monkeypatch):
    """Whatever a step raises, the nightly returns its report: that step failed with the error in one line
    (the traceback kept in a file), the steps after it not run."""
    from datetime import date

    import batch.gold
    from batch.nightly import run_nightly

    def broken(*args, **kwargs):
        raise ValueError("Divisions calculation failed for non-numeric column 'profile_time'")

    monkeypatch.setattr(batch.gold, "stage_gold", broken)
    settings.prometheus.pushgateway_port = free_ports(1)[0]  # nobody there: a user's stack must not get this run
    report = run_nightly(settings, date(2026, 10, 1), date(2026, 10, 2))
    assert [(st.name, st.ok) for st in report.steps] == [("gold", False)]
    detail = report.steps[0].detail
    assert detail.startswith("failed: ValueError: Divisions calculation failed"), detail
    trace = settings.run_dir / "logs" / "nightly-gold-error.txt"
    assert str(trace) in detail and "Traceback" in trace.read_text() and "broken" in trace.read_text()
