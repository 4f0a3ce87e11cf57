"""The streaming job's direct writer of Feast's Redis online store: its encodings against Feast's protobufs,
and, on the real Redis, the same hashes and the same newer-only rule as Feast's own push."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import recent_evening, settings_from
from hypothesis import given, settings
from hypothesis import strategies as st

from churn.online_writer import double_list_value, double_value, int64_list_value, timestamp_value

Value_pb2 = pytest.importorskip("feast.protos.feast.types.Value_pb2")
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
DOUBLE = st.floats(allow_nan=True, allow_infinity=True)


@given(st.one_of(st.none(), DOUBLE), st.lists(DOUBLE, max_size=40), st.lists(INT64, max_size=40),
       st.integers(min_value=0, max_value=1 << 40), st.integers(min_value=0, max_value=999_999_999))
@settings(max_examples=300, deadline=None)
def test_values_are_encoded_byte_for_byte_as_protobuf_serializes_feasts_value_protos(scalar, doubles, ints, secs, nanos):
    V = Value_pb2
    assert double_value(scalar) == (V.Value() if scalar is None else V.Value(double_val=scalar)).SerializeToString()
    assert double_list_value(doubles) == V.Value(double_list_val=V.DoubleList(val=doubles)).SerializeToString()
    assert int64_list_value(ints) == V.Value(int64_list_val=V.Int64List(val=ints)).SerializeToString()
    assert timestamp_value(secs, nanos) == Timestamp(seconds=secs, nanos=nanos).SerializeToString()


def _rows(customers: int, at: float, seed: int) -> pd.DataFrame:
    """The streaming job's state rows for ``customers`` customers after a simulated day ending at ``at``."""
    from churn.features import SUM_FEATURES, partial_sums_arrays
    from churn.simulator import Simulator
    from streaming.feature_state import FeatureState

    sim = Simulator(seed=seed, start_s=at - 86400.0, end_s=at, customers=customers)
    ids, ref, sums, days = partial_sums_arrays(sim.silver_columns())
    partial = pd.DataFrame(sums, columns=SUM_FEATURES)
    partial.insert(0, "customer_id", ids.astype(object))
    partial.insert(1, "ref_time", ref)
    partial["active_days"] = days
    rows = FeatureState().merged(partial)
    rows["covered_offsets"] = [list(np.random.default_rng(seed).integers(0, 10**9, 12))] * len(rows)
    return rows


def test_the_writer_leaves_the_hashes_feasts_push_leaves_and_feast_reads_them(live_stack, live_env):
    """The same pushes (newer, older, equal and newer again event times) through Feast's ``push`` and
    through ``FeastRedisWriter`` leave byte-equal hashes; Feast's ``get_online_features`` reads the
    writer's values back."""
    import redis
    from feast.data_source import PushMode

    from churn import feature_store
    from churn.feature_store import ACTIVITY_ONLINE
    from churn.online_reader import FeastSdkReader, redis_key
    from churn.online_writer import FeastRedisWriter
    from churn.security import redis_options

    s = settings_from({**live_env, "CHURN_FEAST__PROJECT": f"w{uuid.uuid4().hex[:6]}"})
    feature_store.apply(s, load_profiles=False)
    fs = feature_store.store(s)
    end = recent_evening()
    first = _rows(60, end - 3600.0, seed=3)
    customers = list(first["customer_id"])
    later = first.iloc[::2].assign(  # every other customer a minute later, with other sums and offsets
        ref_time=lambda f: f["ref_time"] + 60.0, feature_time=lambda f: f["feature_time"] + pd.Timedelta(60, "s"),
        sums=lambda f: [[2.0 * x for x in v] for v in f["sums"]],
        covered_offsets=lambda f: [[o + 7 for o in v] for v in f["covered_offsets"]])
    older = first.assign(ref_time=first["ref_time"] - 10.0, feature_time=first["feature_time"] - pd.Timedelta(10, "s"),
                         sums=[[0.0] * len(v) for v in first["sums"]])
    equal = first.assign(sums=[[1.0] * len(v) for v in first["sums"]])  # same event times, other values
    pushes = [first, older, equal, later]
    assert len(customers) >= 40

    admin = redis.Redis(**redis_options(s, "admin"))
    keys = [redis_key(s.feast.project, "customer_id", c) for c in customers]

    def hashes() -> list[dict]:
        return [admin.hgetall(k) for k in keys]

    for rows in pushes:
        fs.push("customer_activity_push", rows[["customer_id", "feature_time", *ACTIVITY_ONLINE]], to=PushMode.ONLINE)
    by_feast = hashes()
    assert all(by_feast) and len(by_feast[0]) == 1 + len(ACTIVITY_ONLINE)  # the timestamp and four features
    admin.delete(*keys)

    writer = FeastRedisWriter.from_settings(s)
    written = [writer.write_frame("customer_activity", rows) for rows in pushes]
    assert written == [len(first), 0, 0, len(later)]  # the older and the equal ones are skipped, as Feast skips
    assert hashes() == by_feast

    newest = pd.concat([first.set_index("customer_id").drop(later["customer_id"]),
                        later.set_index("customer_id")]).loc[customers]
    got = FeastSdkReader(fs).read("customer_activity", ACTIVITY_ONLINE, customers)
    for c, row in zip(customers, got):
        assert row["ref_time"] == newest.loc[c, "ref_time"]
        assert row["sums"] == list(newest.loc[c, "sums"])
        assert row["active_days"] == list(newest.loc[c, "active_days"])
        assert row["covered_offsets"] == list(newest.loc[c, "covered_offsets"])
    writer.close()
    admin.close()


def test_apply_registers_the_settings_own_tables_as_feasts_offline_sources(live_stack, live_env, tmp_path):
    """Feast's offline sources name the tables of the settings given to ``apply``, not those of the process's
    own settings (which ``feature_repo/`` reads when imported): a lake elsewhere is the one registered."""
    from churn import feature_store
    from churn.config import get_settings
    from churn.lake import LakePaths

    s = settings_from({**live_env, "CHURN_FEAST__PROJECT": f"a{uuid.uuid4().hex[:6]}",
                       "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake")})
    lake, process_lake = LakePaths.of(s), LakePaths.of(get_settings())
    assert str(lake.profile_history) != str(process_lake.profile_history)
    feature_store.apply(s, load_profiles=False)
    fs = feature_store.store(s)
    assert fs.get_data_source("customer_profile_source").path == str(lake.profile_history)
    assert fs.get_data_source("customer_activity_history").path == str(lake.feature_history)
