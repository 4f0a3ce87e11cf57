"""The direct Redis reader's pieces of Feast's storage format, against Feast's own functions, and the
scoring worker's modules importing no Feast (no stack needed; the stack test
``test_scoring.py::test_direct_redis_reader_returns_what_feast_get_online_features_returns`` reads real
hashes both ways)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn.config import PROJECT_ROOT
from churn.online_reader import decode_value, hash_field, redis_key

feast_helpers = pytest.importorskip("feast.infra.online_stores.helpers")
from feast.protos.feast.types import Value_pb2 as V  # noqa: E402
from feast.protos.feast.types.EntityKey_pb2 import EntityKey  # noqa: E402


def feast_value(proto):
    """What the reader returned when it parsed values with Feast's protos (its former ``_python_value``)."""
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    value = getattr(proto, kind)
    return list(value.val) if kind.endswith("_list_val") else value


@given(st.text(), st.text(min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_redis_key_is_feasts_entity_key_v3_then_project(customer_id, project):
    key = EntityKey(join_keys=["customer_id"], entity_values=[V.Value(string_val=customer_id)])
    assert redis_key(project, "customer_id", customer_id) == feast_helpers._redis_key(
        project, key, entity_key_serialization_version=3)


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_hash_field_is_feasts_mmh3(name):
    assert hash_field(name) == feast_helpers._mmh3(name)


INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
DOUBLE = st.floats(allow_nan=False)
FLOAT32 = st.floats(allow_nan=False, width=32)
VALUES = st.one_of(
    st.builds(lambda v: V.Value(bytes_val=v), st.binary()),
    st.builds(lambda v: V.Value(string_val=v), st.text()),
    st.builds(lambda v: V.Value(int32_val=v), INT32),
    st.builds(lambda v: V.Value(int64_val=v), INT64),
    st.builds(lambda v: V.Value(double_val=v), DOUBLE),
    st.builds(lambda v: V.Value(float_val=v), FLOAT32),
    st.builds(lambda v: V.Value(bool_val=v), st.booleans()),
    st.builds(lambda v: V.Value(unix_timestamp_val=v), INT64),
    st.builds(lambda v: V.Value(bytes_list_val=V.BytesList(val=v)), st.lists(st.binary(), max_size=5)),
    st.builds(lambda v: V.Value(string_list_val=V.StringList(val=v)), st.lists(st.text(), max_size=5)),
    st.builds(lambda v: V.Value(int32_list_val=V.Int32List(val=v)), st.lists(INT32, max_size=5)),
    st.builds(lambda v: V.Value(int64_list_val=V.Int64List(val=v)), st.lists(INT64, max_size=5)),
    st.builds(lambda v: V.Value(double_list_val=V.DoubleList(val=v)), st.lists(DOUBLE, max_size=40)),
    st.builds(lambda v: V.Value(float_list_val=V.FloatList(val=v)), st.lists(FLOAT32, max_size=5)),
    st.builds(lambda v: V.Value(bool_list_val=V.BoolList(val=v)), st.lists(st.booleans(), max_size=5)),
    st.builds(lambda v: V.Value(unix_timestamp_list_val=V.Int64List(val=v)), st.lists(INT64, max_size=5)),
    st.just(V.Value(null_val=V.NULL)),
    st.just(V.Value()),
)


@given(VALUES)
@settings(max_examples=600, deadline=None)
def test_decode_value_reads_what_feasts_value_proto_parses(proto):
    assert decode_value(proto.SerializeToString()) == feast_value(V.Value.FromString(proto.SerializeToString()))


def test_decode_value_of_a_nan_and_an_unread_kind():
    assert math.isnan(decode_value(V.Value(double_val=float("nan")).SerializeToString()))
    with pytest.raises(ValueError, match="not read"):
        decode_value(V.Value(string_set_val=V.StringSet(val=["a"])).SerializeToString())


def test_the_scoring_worker_imports_no_feast_pandas_or_sklearn():
    """What ``churn score`` loads: Feast (~170 MB resident), pandas, pyarrow and scikit-learn stay out of the
    worker process (``ensure_applied`` runs in a child process; xgboost without its scikit-learn API; the
    river challenger without ``river.preprocessing``, which imports scikit-learn and pandas)."""
    code = (
        "import sys\n"
        "import churn.cli\n"
        "from churn.model.tree import TreeModel, import_xgboost_without_sklearn\n"
        "import_xgboost_without_sklearn()  # as `churn score` does\n"
        "import streaming.scoring.app\n"
        "import xgboost\n"
        "from churn.model.online import OnlineChallenger, ProgressiveEvaluator\n"
        "OnlineChallenger(), ProgressiveEvaluator()  # river's model and metric, as the worker builds them\n"
        "heavy = ('feast', 'pandas', 'pyarrow', 'sklearn', 'google')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
