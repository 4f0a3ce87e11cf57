"""Training features equal what the scorer would have served (issue 15, item 2): no training/serving skew.

The same simulated month of CDRs goes through the stream's feature path twice, once in a few large
micro-batches and once in many small ones: each micro-batch appends its events to Silver (one Delta
commit, Silver's types: ``churn.lake.silver_frame``) and merges its partial sums into the customers'
state (``churn.features.partial_sums_arrays``, ``streaming.feature_state.FeatureState``, as
``streaming/job.py`` does), whose new rows go to ``feature_history``. Kafka and Spark are left out: what
matters is what each lake holds, and the two lakes differ only in how the history was batched.

The training sets built from the two lakes must be equal, and each row's activity features must be those
of ``churn.features.partial_sums_numpy`` over that customer's events up to the row's observation time,
read at it (``churn.model.inputs.matrix``): what the scorer serves at that moment.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import settings_from
from test_training_any_base import profiles, register, write_silver

from churn.features import DAY, SUM_FEATURES, partial_sums_arrays, partial_sums_numpy
from churn.model.inputs import _N_PROFILE, MODEL_FEATURES, activity_matrix, matrix
from churn.point_in_time import read_silver, states_at
from churn.simulator import Simulator

END = 1.79e9
DAYS = 30
CUSTOMERS = 150


def stream_into(settings, cols: dict, batches: int) -> pd.DataFrame:
    """The events, in arrival order, through the stream's feature path in ``batches`` micro-batches:
    Silver and ``feature_history`` of ``settings``' lake. Returns the history rows."""
    from deltalake import write_deltalake

    from churn.lake import LakePaths
    from streaming.feature_state import FeatureState

    state = FeatureState()
    recorded = []
    next_id = 0
    for batch_id, rows in enumerate(np.array_split(np.arange(len(cols["event_time"])), batches)):
        part = {k: v[rows] for k, v in cols.items()}
        next_id = write_silver(settings, [part], first_id=next_id)
        ids, ref, sums, days = partial_sums_arrays(part)
        partial = pd.DataFrame(sums, columns=SUM_FEATURES)
        partial.insert(0, "customer_id", ids.astype(object))
        partial.insert(1, "ref_time", ref)
        partial["active_days"] = days
        new = state.merged(partial).assign(batch_id=batch_id, writer_id="test")
        new["feature_time"] = new["feature_time"].astype("datetime64[us, UTC]")
        write_deltalake(LakePaths(settings.streaming.lake_dir).feature_history, new, mode="append")
        state.apply(new, batch_id)
        recorded.append(new)
    return pd.concat(recorded, ignore_index=True)


@pytest.fixture(scope="module")
def history():
    """The simulated month: Silver's columns in arrival order (hour slices, as a backfill produces them)
    and labels: one per customer at its simulated label time, a second one 6 days earlier for every
    third customer (each with its own observation time), one before any event and one of a customer
    nobody knows."""
    sim = Simulator(seed=15, start_s=END - DAYS * DAY, end_s=END, customers=CUSTOMERS)
    cols = sim.silver_columns(slice_s=3600.0)
    ids = np.asarray(sim.pop.customer_id, dtype=object)
    labels = pd.concat([
        pd.DataFrame({"customer_id": ids, "label_time": sim.label_s, "churned": sim.pop.churner}),
        pd.DataFrame({"customer_id": ids[::3], "label_time": sim.label_s[::3] - 6 * DAY, "churned": False}),
        pd.DataFrame({"customer_id": [ids[1], "GHOST-0001"], "label_time": [END - DAYS * DAY - DAY, END],
                      "churned": [False, True]}),
    ], ignore_index=True)
    return cols, labels


def lake(tmp_path_factory, cols, labels, batches: int):
    root = tmp_path_factory.mktemp(f"skew{batches}")
    settings = settings_from({"CHURN_RUN_DIR": str(root / "run"), "CHURN_STREAMING__LAKE_DIR": str(root / "lake"),
                              "CHURN_SCORING__REGISTRY_DIR": str(root / "models"),
                              "CHURN_FEAST__PROJECT": f"p{uuid.uuid4().hex[:6]}"})
    profiles(settings, sorted(set(labels["customer_id"]) - {"GHOST-0001"}))
    recorded = stream_into(settings, cols, batches)
    return settings, recorded


def newest_recorded_state(recorded: pd.DataFrame, customer_ids, at_s) -> list[dict | None]:
    """What the training set used to join: the newest history row at or before each time."""
    by = {c: g.sort_values("ref_time") for c, g in recorded.groupby("customer_id")}
    out = []
    for c, t in zip(customer_ids, at_s):
        g = by.get(c)
        g = None if g is None else g[g["ref_time"] <= t]
        out.append(None if g is None or g.empty else
                   {"ref_time": g["ref_time"].iloc[-1], "sums": list(g["sums"].iloc[-1]),
                    "active_days": list(g["active_days"].iloc[-1])})
    return out


def test_training_set_does_not_depend_on_micro_batches_and_equals_the_scorers_features(history,
                                                                                        tmp_path_factory):
    from batch.train import activity_at_observation, point_in_time_training_set

    cols, labels = history
    built = {}
    for batches in (5, 50):  # ~17,000 and ~1,700 records per micro-batch
        settings, recorded = lake(tmp_path_factory, cols, labels, batches)
        assert recorded["batch_id"].nunique() == batches
        # the micro-batches added up to the whole: each customer's last state is its sums over all events
        last = recorded.groupby("customer_id").tail(1).set_index("customer_id")
        whole = partial_sums_numpy(cols)
        assert sorted(last.index) == sorted(whole)
        for c, w in whole.items():
            assert last.at[c, "ref_time"] == w["ref_time"] and list(last.at[c, "active_days"]) == w["active_days"]
            np.testing.assert_allclose(last.at[c, "sums"], [w[f] for f in SUM_FEATURES], rtol=1e-9, atol=1e-12)
        ts = point_in_time_training_set(settings, labels, fs=register(settings), seed=4)
        built[batches] = settings, recorded, ts
    (s_large, rec_large, large), (_, rec_small, small) = built[5], built[50]

    # the same rows, labels, times and counts, whatever the batching
    assert large.labels == small.labels == len(labels) == CUSTOMERS + CUSTOMERS // 3 + 2
    assert (large.unknown, large.without_profile, large.without_activity) == (1, 0, 1)
    assert (small.unknown, small.without_profile, small.without_activity) == (1, 0, 1)
    assert large.customer_id.tolist() == small.customer_id.tolist()
    assert np.array_equal(large.at_s, small.at_s) and np.array_equal(large.y, small.y)
    assert len(large.y) == len(labels) - 1 and int(large.y.sum()) == int(labels["churned"].sum()) - 1
    # equal features
    assert large.X.shape == small.X.shape == (len(labels) - 1, len(MODEL_FEATURES))
    np.testing.assert_allclose(large.X, small.X, rtol=1e-9, atol=0, equal_nan=True)

    # each row's activity is the scorer's: partial_sums_numpy of the customer's events up to the row's time
    customer = np.asarray(cols["customer_id"], dtype=object)
    own = {c: np.flatnonzero(customer == c) for c in set(large.customer_id)}
    expected = []
    for c, t in zip(large.customer_id, large.at_s):
        mine = {k: np.asarray(v)[own[c]] for k, v in cols.items()}
        expected.append(partial_sums_numpy(mine, at_s={c: t}).get(c))
    assert sum(e is None for e in expected) == 1  # the label observed before any event
    want = matrix([None] * len(expected), expected, large.at_s)
    np.testing.assert_allclose(large.X[:, _N_PROFILE:], want[:, _N_PROFILE:], rtol=1e-6, atol=0, equal_nan=True)
    # ... before the matrix's float32, to 1e-9: the states the training set read
    got = activity_at_observation(s_large, large.customer_id, large.at_s)
    np.testing.assert_allclose(activity_matrix(got.states(), large.at_s), activity_matrix(expected, large.at_s),
                               rtol=1e-9, atol=1e-12, equal_nan=True)
    active = got.has_activity
    assert active.sum() == len(large.y) - 1
    assert np.all(got.ref_time[active] <= large.at_s[active])
    assert np.array_equal(got.ref_time[active], np.array([e["ref_time"] for e in expected if e is not None]))

    # not vacuous: the stream's recorded states, which training joined before, lag behind the
    # observation and differ between the two batchings; the features above do not
    since = MODEL_FEATURES.index("days_since_last_event") - _N_PROFILE
    calls_7d = MODEL_FEATURES.index("calls_7d") - _N_PROFILE
    old = {n: activity_matrix(newest_recorded_state(rec, large.customer_id, large.at_s), large.at_s)
           for n, rec in ((5, rec_large), (50, rec_small))}
    exact = activity_matrix(expected, large.at_s)
    assert np.nanmean(old[5][:, since]) > np.nanmean(old[50][:, since]) > np.nanmean(exact[:, since])
    assert np.nanmean(old[5][:, since]) > np.nanmean(exact[:, since]) + 1.0, "a day or more behind, in large batches"
    assert not np.allclose(old[5], old[50], rtol=1e-3, equal_nan=True)
    assert np.nanmean(old[5][:, calls_7d]) < 0.9 * np.nanmean(exact[:, calls_7d])


def test_states_at_each_cutoff_equal_partial_sums_numpy():
    """Per query, exactly the customer's events at or before its time (equal times count), several
    queries per customer, customers without events, any chunk size."""
    rng = np.random.default_rng(5)
    n = 4000
    cols = {"customer_id": np.array([f"c{i}" for i in rng.integers(0, 40, n)], dtype=object),
            "event_time": np.round(END + rng.uniform(0, 40 * DAY, n), 3),
            "record_type": np.array(["voice", "sms", "data"], dtype=object)[rng.integers(0, 3, n)],
            "counterparty": np.array(["on_net", "off_net", "customer_care", "international", None],
                                     dtype=object)[rng.integers(0, 5, n)],
            "dropped": rng.random(n) < 0.1, "roaming": rng.random(n) < 0.1, "duration_s": rng.uniform(0, 600, n),
            "data_bytes": np.where(rng.random(n) < 0.3, rng.uniform(0, 1e8, n), np.nan),
            "charge": rng.uniform(0, 1, n)}
    cols["event_time"][:60] = cols["event_time"][60:120]  # equal times
    q = np.array([f"c{i}" for i in rng.integers(0, 45, 300)], dtype=object)  # c40..c44: no events
    at = END + rng.uniform(-DAY, 41 * DAY, 300)
    q[:30], at[:30] = cols["customer_id"][:30], cols["event_time"][:30]  # cut exactly at an event
    for chunk in (1, 50, 10**6):
        got = states_at(cols, q, at, chunk_rows=chunk)
        for i in range(len(q)):
            want = partial_sums_numpy(cols, at_s={q[i]: at[i]}).get(q[i])
            if want is None:
                assert got.events[i] == 0 and np.isnan(got.ref_time[i]) and got.states()[i] is None
                continue
            assert got.events[i] == int(((cols["customer_id"] == q[i]) & (cols["event_time"] <= at[i])).sum())
            assert got.ref_time[i] == want["ref_time"] and got.active_days[i] == want["active_days"]
            np.testing.assert_allclose(got.sums[i], [want[f] for f in SUM_FEATURES], rtol=1e-12, atol=0)
    assert (got.events == 0).sum() >= 5 and (got.events > 0).sum() >= 250


def test_read_silver_reads_the_asked_customers_up_to_a_time(tmp_path):
    """Only the asked customers' events up to ``until_s``, event times in epoch seconds, text columns with
    their nulls; no table at all reads as None (a lake the stream has not written yet)."""
    settings = settings_from({"CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake")})
    from churn.lake import LakePaths

    path = LakePaths(settings.streaming.lake_dir).silver
    assert read_silver(path) is None
    sim = Simulator(seed=3, start_s=END - 3 * DAY, end_s=END, customers=20)
    cols = sim.silver_columns(slice_s=6 * 3600.0)
    write_silver(settings, [{k: v[i::2] for k, v in cols.items()} for i in range(2)])
    asked = list(np.unique(cols["customer_id"])[:5])
    got = read_silver(path, customers=asked, until_s=END - DAY)
    keep = np.isin(cols["customer_id"], asked) & (cols["event_time"] <= END - DAY)
    assert len(got["event_time"]) == keep.sum() > 0
    key = ["customer_id", "event_time", "charge"]
    a_frame = pd.DataFrame(got).sort_values(key, ignore_index=True)
    b_frame = pd.DataFrame({k: np.asarray(cols[k])[keep] for k in got}).sort_values(key, ignore_index=True)
    for name in got:
        a, b = a_frame[name].to_numpy(), b_frame[name].to_numpy()
        if a.dtype == object:
            assert a.tolist() == b.tolist(), name
        else:
            np.testing.assert_array_equal(a.astype(float), b.astype(float), err_msg=name)
    assert None in got["counterparty"].tolist()  # data sessions have no counterparty
