"""Nightly training: the Telco anchor, behaviour beating profile-only, point-in-time joins, promotion."""

from __future__ import annotations

import statistics
import uuid

import numpy as np
import orjson
import pytest
from conftest import run_cli, settings_from

from churn.config import Settings
from churn.features import DAY
from churn.model.bootstrap import simulated_training_set
from churn.model.inputs import ACTIVITY_FEATURES, MODEL_FEATURES
from churn.model.registry import ModelRegistry
from churn.model.release import train_and_release
from churn.model.training import train
from churn.transport import ensure_topics


def test_telco_profiles_cross_validated_auc_is_at_the_published_anchor_and_selection_is_never_worse():
    from batch.telco import telco_cross_validation
    from churn.model.families import FAMILY_NAMES

    aucs = {f: telco_cross_validation(Settings(), folds=5, family=f) for f in (*FAMILY_NAMES, "selected")}
    for f, a in aucs.items():
        print(f"Telco 5-fold ROC AUC, {f}: {statistics.mean(a):.4f} +/- {statistics.stdev(a):.4f}: {a}")
        assert len(a) == 5 and all(0.5 < x < 1 for x in a)
    xgb, spread = statistics.mean(aucs["xgboost"]), statistics.stdev(aucs["xgboost"])
    assert xgb >= 0.845  # measured 0.8502 (std 0.015); published anchors 0.84-0.85
    assert spread < 0.03
    # the selection made inside each fold is never worse than XGBoost alone by more than the CV spread
    assert statistics.mean(aucs["selected"]) >= xgb - spread
    assert statistics.mean(aucs["logistic_regression"]) > 0.8 and statistics.mean(aucs["random_forest"]) > 0.8


def test_behaviour_features_beat_the_profile_only_model_on_a_later_window():
    s = Settings()
    ts = simulated_training_set(s, customers=1500, days=60, end_s=1.79e9, without_activity=0.0)
    with_behaviour = train(ts.X, ts.y, ts.at_s, MODEL_FEATURES, n_trials=0)
    profile_only = ts.X.copy()
    profile_only[:, [MODEL_FEATURES.index(f) for f in ACTIVITY_FEATURES]] = np.nan
    without = train(profile_only, ts.y, ts.at_s, MODEL_FEATURES, n_trials=0)
    a, b = with_behaviour.metrics["roc_auc"], without.metrics["roc_auc"]
    print(f"later window ROC AUC: with behaviour {a}, profile only {b}")
    assert with_behaviour.windows["validate"][0] >= with_behaviour.windows["train"][1]  # validated on later rows
    assert a > b + 0.05


def test_a_better_model_is_promoted_and_an_equal_one_kept_as_challenger(tmp_path):
    s = Settings(scoring={"registry_dir": tmp_path / "models"}, training={"promotion_margin": 0.005})
    ts = simulated_training_set(s, customers=1200, days=60, end_s=1.79e9)
    profile_only = ts.X.copy()
    profile_only[:, [MODEL_FEATURES.index(f) for f in ACTIVITY_FEATURES]] = np.nan
    first = train_and_release(s, profile_only, ts.y, ts.at_s, kind="t", source="profile only", n_trials=0)
    assert first.promoted and first.reason == "no champion yet"
    better = train_and_release(s, ts.X, ts.y, ts.at_s, kind="t", source="with behaviour", n_trials=0)
    assert better.promoted and "beats the champion" in better.reason
    assert better.metrics["roc_auc"] >= better.champion_metrics["roc_auc"] + 0.005
    same = train_and_release(s, ts.X, ts.y, ts.at_s, kind="t", source="same again", n_trials=0)
    assert not same.promoted and "does not beat the champion" in same.reason
    registry = ModelRegistry(tmp_path / "models")
    assert registry.champion_version() == better.version
    card = registry.card(same.version)
    assert card["decision"] == {"promoted": False, "reason": same.reason}
    assert card["champion_on_same_window"]["version"] == better.version
    assert {"roc_auc", "pr_auc", "f1", "recall", "calibration_error"} <= set(card["validation"])
    for png in card["plots"]:
        assert (tmp_path / "models" / same.version / png).read_bytes()[:4] == b"\x89PNG"
    history = [orjson.loads(line) for line in (tmp_path / "models" / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["promoted", "promoted", "kept_as_challenger"]


def test_point_in_time_training_set_never_sees_features_from_after_the_observation(live_stack, live_env, tmp_path):
    """Planted Silver events dated after a label's observation time, in numbers that would give the label
    away, must not reach the training set; the events before it must."""
    from confluent_kafka import Producer
    from test_training_any_base import calls, columns, write_silver

    from batch.train import labels_frame, point_in_time_training_set
    from churn.contracts import format_time
    from churn.feature_store import store

    tag = uuid.uuid4().hex[:6]
    env = {**live_env, "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake"), "CHURN_FEAST__PROJECT": f"p{tag}",
           "CHURN_TOPICS__CHURN_LABELS__NAME": f"labels-{tag}"}
    s = settings_from(env)
    ensure_topics(s)
    label_time = 1.79e9
    customers = ["7590-VHVEG", "5575-GNVDE"]

    rows = []
    for c in customers:
        rows += calls(c, [label_time - 20 * DAY] * 3, "customer_care")  # before any observation: must be used
        rows += calls(c, [label_time + 0.5 * DAY] * 999, "customer_care")  # the leak: after the label
    write_silver(s, [columns(rows)])
    applied = run_cli(["features", "apply"], env, timeout=180)
    assert applied.returncode == 0, applied.stderr

    p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
    for i, c in enumerate(customers):
        p.produce(s.topics.churn_labels.name, orjson.dumps({
            "event_id": f"l{i}", "customer_id": c, "label_time": format_time(label_time), "churned": bool(i % 2),
            "source": "test"}), c.encode())
    p.flush(10)
    labels = labels_frame(s)
    assert sorted(labels["customer_id"]) == sorted(customers)
    # observations fall up to 7 days before the label: after the first row, before the planted one
    ts = point_in_time_training_set(s, labels, fs=store(s), lookahead_days=7.0)
    assert np.all(ts.at_s <= label_time) and np.all(ts.at_s >= label_time - 7 * DAY)
    care = ts.X[:, MODEL_FEATURES.index("care_calls_30d")]
    days_since = ts.X[:, MODEL_FEATURES.index("days_since_last_event")]
    assert np.all(care < 3.0) and np.all(care > 0.0), care  # the 3 calls decayed to the observation, never 999
    assert np.all(days_since > 12), days_since  # the last event seen is the 20-days-before one
    tenure = ts.X[:, MODEL_FEATURES.index("tenure_months")]
    assert sorted(tenure.tolist()) == [1.0, 34.0]  # profiles joined too
    assert pytest.approx(sorted(ts.y.tolist())) == [0, 1]
