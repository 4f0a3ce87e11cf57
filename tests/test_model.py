"""Model inputs, the feature renderings (numpy and Spark), the registry and the champion's reasons."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from churn.config import Settings
from churn.features import DAY, SUM_FEATURES, partial_sums_numpy
from churn.model.inputs import MODEL_FEATURES, matrix, vector
from churn.model.registry import ChampionWatcher, ModelRegistry
from churn.model.tree import TreeModel, dense_contributions
from churn.simulator import Simulator

END = 1.79e9


@pytest.fixture(scope="module")
def simulated():
    sim = Simulator(seed=3, start_s=END - 20 * DAY, end_s=END, customers=150)
    cols = sim.silver_columns(slice_s=6 * 3600.0)
    return sim, cols


def test_numpy_and_spark_renderings_of_the_features_agree(simulated):
    """The scorer's bootstrap model and tests use the numpy rendering, the stream and the nightly job
    the Spark one: the same events must give the same state."""
    import pandas as pd

    from churn.features import partial_sums, partial_sums_by_executors
    from churn.spark import spark_session

    _, cols = simulated
    fast = partial_sums_numpy(cols)
    frame = pd.DataFrame({k: (v if k != "event_time" else
                              pd.to_datetime(np.round(v * 1e6).astype("int64"), unit="us", utc=True))
                          for k, v in cols.items()})
    frame["data_bytes"] = frame["data_bytes"].astype("Int64")
    spark = spark_session(Settings(), app_name="features-agree")
    events = spark.createDataFrame(frame)
    rows = partial_sums(events).collect()
    # the stream's rendering: numpy inside Spark's executors
    by_executors = {r.customer_id: r for r in partial_sums_by_executors(events).collect()}
    assert len(rows) == len(fast) == len(by_executors) > 100
    for r in rows:
        for mine in (fast[r.customer_id], by_executors[r.customer_id].asDict()):
            assert mine["ref_time"] == pytest.approx(r.ref_time, abs=1e-3)
            assert list(mine["active_days"]) == list(r.active_days)
            for name in SUM_FEATURES:
                assert mine[name] == pytest.approx(getattr(r, name), rel=1e-9, abs=1e-9), name


def test_matrix_equals_vector_row_by_row_on_real_states(simulated):
    sim, cols = simulated
    from churn.feature_store import profile_frame

    profiles = profile_frame().set_index("customer_id").to_dict("index")
    states = partial_sums_numpy(cols)
    ids = list(states)[:120]
    rng = np.random.default_rng(0)
    at = [states[c]["ref_time"] + rng.uniform(0, 3 * DAY) for c in ids]
    chosen = [None if i % 7 == 0 else states[c] for i, c in enumerate(ids)]  # some customers without activity
    fast = matrix([profiles[c] for c in ids], chosen, at)
    slow = np.array([vector(profiles[c], st, t) for c, st, t in zip(ids, chosen, at)], dtype=np.float32)
    assert fast.shape == (len(ids), len(MODEL_FEATURES))
    np.testing.assert_allclose(fast, slow, rtol=1e-6, equal_nan=True)
    assert np.isnan(fast[0, MODEL_FEATURES.index("care_calls_7d")])
    assert not np.isnan(fast[1, MODEL_FEATURES.index("care_calls_7d")])


def test_point_in_time_state_ignores_later_events(simulated):
    _, cols = simulated
    c = cols["customer_id"][0]
    t = float(np.median(cols["event_time"][cols["customer_id"] == c]))
    at = partial_sums_numpy(cols, at_s={c: t})[c]
    keep = (cols["customer_id"] == c) & (cols["event_time"] <= t)
    only_before = partial_sums_numpy({k: v[keep] for k, v in cols.items()})[c]
    assert at == only_before


def _model(seed: int = 0) -> TreeModel:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, len(MODEL_FEATURES))).astype(np.float32)
    y = (X[:, MODEL_FEATURES.index("care_calls_7d")] > 0.3).astype(int)
    return TreeModel.fit(X[:300], y[:300], X[300:], y[300:], MODEL_FEATURES, params={"n_estimators": 20})


def test_the_direct_margin_call_equals_xgboosts_own_at_every_size_with_missing_values():
    model = TreeModel.from_bytes(_model(seed=4).to_bytes())  # as the worker loads it: one thread
    rng = np.random.default_rng(5)
    for rows in (1, 3, 25, 64, 65, 700):  # XGBoost predicts in blocks of 64 rows
        X = rng.normal(size=(rows, len(MODEL_FEATURES))).astype(np.float32)
        X[rng.random(X.shape) < 0.3] = np.nan
        own = model.booster.inplace_predict(X, predict_type="margin", missing=np.nan)
        direct = model.margin(X)
        assert direct.dtype == np.float32 and direct.shape == (rows,)
        assert np.array_equal(direct, own)
        assert np.array_equal(model.margin(np.asfortranarray(X)), own)  # any memory layout
        assert np.array_equal(model.margin(X.astype(np.float64)), own)
    assert len(set(model.margin(X[:5]).tolist())) > 1  # the rows' margins differ: the inputs are read
    assert model.margin(np.zeros((0, len(MODEL_FEATURES)), dtype=np.float32)).shape == (0,)
    # nothing left to the garbage collector (XGBoost's wrapper leaves ~27 objects in cycles per call)
    assert _cyclic_garbage_left_by(lambda: model.margin(X[:25])) == 0
    assert _cyclic_garbage_left_by(lambda: model.booster.inplace_predict(X[:25], predict_type="margin",
                                                                         missing=np.nan)) > 0


def _cyclic_garbage_left_by(call, times: int = 20) -> int:
    """How many objects ``times`` calls of ``call`` leave in reference cycles, for the collector to find."""
    import gc

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(times):
            call()
        gc.collect()
        return len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_the_direct_contributions_call_equals_xgboosts_own_and_leaves_no_garbage():
    import xgboost as xgb

    model = TreeModel.from_bytes(_model(seed=4).to_bytes())
    rng = np.random.default_rng(6)
    n = len(MODEL_FEATURES)
    for rows in (1, 3, 25, 64, 65, 300):
        X = rng.normal(size=(rows, n)).astype(np.float32)
        X[rng.random(X.shape) < 0.3] = np.nan
        own = model.booster.predict(xgb.DMatrix(X, missing=np.nan), pred_contribs=True, validate_features=False)
        direct = dense_contributions(model.booster, X)
        assert direct.dtype == np.float32 and direct.shape == (rows, n + 1)
        assert np.array_equal(direct, own)
        assert np.array_equal(dense_contributions(model.booster, np.asfortranarray(X)), own)
        assert np.array_equal(dense_contributions(model.booster, X.astype(np.float64)), own)
        # a row's contributions add up to its margin: the calibrated ones to the calibrated log-odds
        assert np.allclose(direct.sum(axis=1), model.margin(X), atol=1e-4)
        assert np.allclose(model.contributions(X).sum(axis=1), model.a * model.margin(X) + model.b, atol=1e-4)
    assert dense_contributions(model.booster, np.zeros((0, n), dtype=np.float32)).shape[0] == 0
    assert _cyclic_garbage_left_by(lambda: model.reasons(X[:25])) == 0
    assert _cyclic_garbage_left_by(lambda: model.booster.predict(xgb.DMatrix(X[:25], missing=np.nan),
                                                                 pred_contribs=True)) > 0


def test_promotion_is_atomic_and_a_watcher_switches_without_restart(tmp_path):
    registry = ModelRegistry(tmp_path)
    model = _model()
    v1 = registry.register(model.to_bytes(), {"kind": "test"}, version="v1")
    registry.promote(v1, reason="first")
    now = [0.0]
    watcher = ChampionWatcher(registry, interval_s=1.0, clock=lambda: now[0])
    assert watcher.current().meta["version"] == "v1"
    v2 = registry.register(model.to_bytes(), {"kind": "test"}, version="v2")

    # readers racing a stream of promotions only ever see a whole pointer naming a real version
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(registry.champion_version())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        registry.promote(v2 if i % 2 else v1, reason="flip")
    stop.set()
    reader.join()
    assert seen <= {"v1", "v2"}
    registry.promote(v2, reason="second")
    assert watcher.current().meta["version"] == "v1"  # not checked again yet
    now[0] = 1.5
    assert watcher.current().meta["version"] == "v2"
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(history) == 302 and '"reason": "second"' in history[-1]
    with pytest.raises(FileExistsError):
        registry.register(model.to_bytes(), {}, version="v1")
    with pytest.raises(FileNotFoundError):
        registry.promote("nope", reason="x")


def test_reasons_are_the_largest_positive_contributions_in_plain_words():
    model = _model()
    x = np.zeros((1, len(MODEL_FEATURES)), dtype=np.float32)
    x[0, MODEL_FEATURES.index("care_calls_7d")] = 4.0
    (reasons,) = model.reasons(x, top=3)
    assert reasons[0]["feature"] == "care_calls_7d"
    assert reasons[0]["text"] == "4 calls to customer care in the last 7 days"
    contributions = [r["contribution"] for r in reasons]
    assert contributions == sorted(contributions, reverse=True) and all(c > 0 for c in contributions)
    # contributions (with the base column) add up to the calibrated log-odds
    total = float(model.contributions(x).sum())
    assert total == pytest.approx(float(model.a * model.margin(x)[0] + model.b), rel=1e-4, abs=1e-4)
    p = float(model.predict(x)[0])
    if 1e-6 < p < 1 - 1e-6:
        assert total == pytest.approx(math.log(p / (1 - p)), rel=1e-3, abs=1e-3)
    # absent features are one reason, not one per feature
    x[0, :] = np.nan
    (missing,) = model.reasons(x, top=3)
    assert sum(r["feature"] == "missing_features" for r in missing) <= 1


def test_stream_state_merged_batch_by_batch_equals_the_computation_over_all_events(simulated):
    """The streaming job's in-memory state: batches of events (out of time order, one of them
    replayed after a reload from the recorded history) end in the same sums as all events at once."""
    import pandas as pd

    from streaming.feature_state import FeatureState

    _, cols = simulated
    order = np.random.default_rng(5).permutation(len(cols["event_time"]))
    batches = np.array_split(order, 7)
    state, recorded = FeatureState(), []
    for batch_id, rows in enumerate(batches):
        partial = partial_sums_numpy({k: v[rows] for k, v in cols.items()})
        frame = pd.DataFrame([{"customer_id": c, **v} for c, v in partial.items()])
        if batch_id == 4:  # a crash after batch 3 was recorded: reload the newest recorded row per customer
            history = pd.concat(recorded).groupby("customer_id").tail(1)
            state = FeatureState.from_history(history, applied_batch=3)
            assert batch_id > state.applied_batch
        new = state.merged(frame)
        state.apply(new, batch_id)
        recorded.append(new)
    expected = partial_sums_numpy(cols)
    got = state.current(list(expected))
    assert len(got) == len(expected) > 100
    for row in got.itertuples(index=False):
        want = expected[row.customer_id]
        assert row.ref_time == want["ref_time"]
        assert row.active_days == want["active_days"]
        for i, name in enumerate(SUM_FEATURES):
            assert getattr(row, name) == pytest.approx(want[name], rel=1e-9, abs=1e-12), name
            assert row.sums[i] == getattr(row, name)


def test_the_side_by_side_benchs_feast_view_writes_every_field_of_customer_activity(simulated, tmp_path):
    """``bench/feast_processor.py`` hands Feast's ``SparkKafkaProcessor`` our feature code; Feast writes the
    view's schema by name, so a field of ``customer_activity`` the transformation lacks fails that bench."""
    import importlib.util

    import pandas as pd

    from churn.config import PROJECT_ROOT
    from churn.spark import spark_session
    from feature_repo.activity import customer_activity

    spec = importlib.util.spec_from_file_location("feast_processor_bench", PROJECT_ROOT / "bench" / "feast_processor.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    spark = spark_session(Settings(), app_name="feast-view")  # first: Feast's view would start one without our jars
    view = bench._feast_processor_view(Settings(), tmp_path / "activity.parquet")

    _, cols = simulated
    frame = pd.DataFrame({k: (v if k != "event_time" else
                              pd.to_datetime(np.round(v * 1e6).astype("int64"), unit="us", utc=True))
                          for k, v in cols.items()})
    frame["data_bytes"] = frame["data_bytes"].astype("Int64")
    rows = {r.customer_id: r.asDict() for r in view.udf(spark.createDataFrame(frame)).collect()}
    fields = [f.name for f in customer_activity.features]
    assert fields == [f.name for f in view.features]
    fast = partial_sums_numpy(cols)
    assert set(rows) == set(fast) and len(rows) > 100
    for customer, row in rows.items():
        assert set(fields) | {"customer_id", "feature_time"} <= set(row)
        assert row["covered_offsets"] == []  # it keeps no offsets: its states cover none
        assert row["ref_time"] == pytest.approx(fast[customer]["ref_time"], abs=1e-3)
        np.testing.assert_allclose(row["sums"], [fast[customer][n] for n in SUM_FEATURES], rtol=1e-9, atol=1e-9)
