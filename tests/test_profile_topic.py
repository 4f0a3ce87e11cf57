"""Profile upserts on the ``customer-profiles`` topic, through the real streaming job: each valid version
reaches the profile history and Feast's online store within seconds (the newest wins, whatever the order
of arrival), invalid ones are quarantined and dead-lettered with their reason, and a training set built
after a plan change gives labels observed before it the old plan."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import orjson
import pandas as pd
import pytest
from conftest import CHURN_BIN, free_ports, private_pipeline_env
from test_scoring import wait_for

from churn.model.inputs import MODEL_FEATURES
from churn.transport import consumer, producer

JAN, FEB, MAR = "2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z", "2026-03-01T00:00:00.000Z"


def version(customer: str, updated_at: str, plan: str, contract: str, monthly: float) -> dict:
    return {"customer_id": customer, "updated_at": updated_at, "plan": plan, "contract": contract,
            "monthly_charges": monthly, "tenure_months": 14, "paperless_billing": True}


def ours(frame: pd.DataFrame) -> pd.DataFrame:
    """The test's customers (``churn features apply`` loaded the Telco sample into the history too)."""
    return frame[frame["customer_id"].str.startswith("P-")]


@pytest.fixture
def topic_env(live_stack, live_env, bootstrap_registry, tmp_path):
    return private_pipeline_env(live_env, bootstrap_registry, tmp_path, CHURN_STREAMING__PROFILES_TRIGGER_S="1",
                                CHURN_STREAMING__METRICS_PORT=str(free_ports(1)[0]))


def test_upserts_reach_feast_within_seconds_invalid_ones_are_dead_lettered_and_training_is_point_in_time(
        topic_env, tmp_path):
    from batch.train import point_in_time_training_set
    from churn import profiles
    from churn.feature_store import store

    env, s = topic_env
    topic = s.topics.customer_profiles.name
    p = producer(s)

    def send(value: bytes, key: str) -> float:
        p.produce(topic, key=key.encode(), value=value)
        assert p.flush(10) == 0
        return time.time()

    fs = store(s)

    def online(customer: str) -> dict:
        got = fs.get_online_features(features=["customer_profile:plan", "customer_profile:contract",
                                               "customer_profile:monthly_charges"],
                                     entity_rows=[{"customer_id": customer}]).to_dict()
        return {k: v[0] for k, v in got.items()}

    stream = subprocess.Popen([CHURN_BIN, "stream"], env={**os.environ, **env}, start_new_session=True,
                              stdout=open(tmp_path / "stream.log", "ab"), stderr=subprocess.STDOUT)
    try:
        send(orjson.dumps(version("P-1", JAN, "Basic", "Month-to-month", 20.5)), "P-1")
        send(orjson.dumps(version("P-2", JAN, "Family", "Two year", 55.0)), "P-2")
        send(orjson.dumps(version("P-3", JAN, "Basic", "36 months", 20.0)), "P-3")  # not a contract type
        send(b'{"customer_id": "P-4", "updated_at": ', "P-4")  # not JSON
        wait_for(lambda: online("P-2")["plan"] == "Family", 240, "the first upserts online (Spark starting)")
        assert online("P-1")["plan"] == "Basic"

        # a plan change, on a running job: online within seconds
        sent = send(orjson.dumps(version("P-1", MAR, "Premium", "One year", 45.0)), "P-1")
        while online("P-1")["plan"] != "Premium":
            assert time.time() - sent < 30, "the plan change did not reach the online store within 30 s"
            time.sleep(0.1)
        seconds = time.time() - sent
        print(f"profile upsert produced -> online in Feast: {seconds:.1f} s")
        assert seconds < 15
        # a version older than the one served, arriving late, is kept in the history but not served
        send(orjson.dumps(version("P-1", FEB, "Basic Plus", "Month-to-month", 25.0)), "P-1")
        wait_for(lambda: len(ours(profiles.history(s))) == 4, 30, "the late version in the history")
        assert online("P-1") == {"customer_id": "P-1", "plan": "Premium", "contract": "One year",
                                 "monthly_charges": 45.0}
    finally:
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(timeout=120) == 0, (tmp_path / "stream.log").read_text()[-3000:]

    hist = ours(profiles.history(s)).sort_values(["customer_id", "updated_at"])
    assert hist[["customer_id", "plan"]].values.tolist() == [["P-1", "Basic"], ["P-1", "Basic Plus"],
                                                             ["P-1", "Premium"], ["P-2", "Family"]]
    assert set(hist["source"]) == {topic}
    bad = profiles.quarantined(s).sort_values("row")
    assert bad["reason"].tolist() == ["unknown_value:contract", "malformed_json"]
    assert bad["customer_id"].tolist() == ["P-3", None]
    assert all(source.startswith(f"{topic}/") for source in bad["source"])  # <topic>/<partition>, row = offset
    # the dead-letter topic holds both, original bytes and the reason in headers
    c = consumer(s, group_id=f"dlq-{uuid.uuid4().hex[:6]}")
    c.subscribe([s.topics.customer_profiles_dlq.name])
    letters = {}
    deadline = time.time() + 30
    while len(letters) < 2 and time.time() < deadline:
        for m in c.consume(100, timeout=0.5):
            h = {k: v.decode() for k, v in m.headers()}
            letters[h["reason"]] = (h["source_topic"], m.value())
    c.close()
    assert letters == {"unknown_value:contract": (topic, orjson.dumps(version("P-3", JAN, "Basic", "36 months",
                                                                              20.0))),
                       "malformed_json": (topic, b'{"customer_id": "P-4", "updated_at": ')}

    # point in time: labels observed before the plan change train on the old plan, after it on the new one
    labels = pd.DataFrame({"customer_id": ["P-1", "P-1", "P-2"],
                           "label_time": [pd.Timestamp("2026-02-20", tz="UTC").timestamp(),
                                          pd.Timestamp("2026-04-20", tz="UTC").timestamp(),
                                          pd.Timestamp("2026-02-20", tz="UTC").timestamp()],
                           "churned": [1, 0, 0]})
    ts = point_in_time_training_set(s, labels, fs=store(s), lookahead_days=7.0)
    assert (len(ts.y), ts.unknown, ts.without_profile) == (3, 0, 0)
    col = lambda name: ts.X[:, MODEL_FEATURES.index(name)].tolist()  # noqa: E731
    assert col("monthly_charges") == [25.0, 45.0, 55.0]  # February's version, then March's, then P-2's
    assert col("contract_month_to_month") == [1.0, 0.0, 0.0]
    assert col("contract_one_year") == [0.0, 1.0, 0.0]
