"""Model selection: three families trained on the same windows, the best kept, every one recorded in the card,
and whichever wins scores and explains itself in the worker's path (without scikit-learn) as in training."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from churn.config import Settings
from churn.contracts import format_time
from churn.features import SUM_FEATURES
from churn.model.families import FAMILIES, FAMILY_NAMES, model_from_bytes
from churn.model.inputs import MODEL_FEATURES
from churn.model.linear import LinearModel
from churn.model.registry import ModelRegistry
from churn.model.release import train_and_release
from streaming.scoring.lookup import Lookup
from streaming.scoring.scorer import BatchScorer, Incoming

PROJECT = Path(__file__).resolve().parents[1]


def _data(n: int = 1500, seed: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(MODEL_FEATURES))).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    care = MODEL_FEATURES.index("care_calls_7d")
    z = 1.5 * np.nan_to_num(X[:, care]) - np.nan_to_num(X[:, 0]) + 0.8 * np.nan_to_num(X[:, 5]) ** 2
    y = (z + rng.normal(size=n) > 1.0).astype(int)
    return X, y


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_round_trips_and_its_contributions_sum_to_the_log_odds(family):
    X, y = _data()
    model = FAMILIES[family].train(X[:1000], y[:1000], MODEL_FEATURES, None, 0).calibrate(X[1000:], y[1000:])
    back = model_from_bytes(model.to_bytes())
    assert type(back) is type(model) and back.meta["family"] == family
    np.testing.assert_allclose(back.predict(X[:50]), model.predict(X[:50]), rtol=1e-6)
    p = model.predict(X[:50]).astype(float)
    contrib = model.contributions(X[:50])
    assert contrib.shape == (50, len(MODEL_FEATURES) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), np.log(p / (1 - p)), atol=2e-3)
    for row, reasons in zip(contrib, model.reasons(X[:50], top=3)):
        values = [r["contribution"] for r in reasons]
        assert values == sorted(values, reverse=True) and all(v > 0 and r["text"] for v, r in zip(values, reasons))
        present = [r for r in reasons if r["feature"] != "missing_features"]
        for r in present:
            assert r["contribution"] == pytest.approx(row[MODEL_FEATURES.index(r["feature"])], abs=1e-4)
    # the signal the data was made from is what the model leans on most
    importance = np.abs(contrib[:, :-1]).mean(axis=0)
    assert MODEL_FEATURES.index("care_calls_7d") in np.argsort(importance)[-3:]


def test_the_linear_model_equals_the_scikit_learn_pipeline_it_was_trained_as():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _data()
    model = LinearModel.train(X, y, MODEL_FEATURES, {"C": 0.5, "log_inputs": True})
    pipe = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                         LogisticRegression(C=0.5, max_iter=2000, random_state=0))
    Xt = np.sign(X.astype(np.float64)) * np.log1p(np.abs(X.astype(np.float64)))
    pipe.fit(Xt, y)
    np.testing.assert_allclose(model.margin(X), pipe.decision_function(Xt), rtol=1e-6, atol=1e-6)


def test_the_release_records_every_family_and_keeps_the_one_that_ranks_best_on_the_search_window(tmp_path):
    X, y = _data(2400)
    s = Settings(run_dir=tmp_path)
    release = train_and_release(s, X, y, np.arange(len(y), dtype=float), kind="t", source="synthetic rows", n_trials=2)
    card = ModelRegistry(s.scoring.registry_dir).card(release.version)
    families = card["selection"]["families"]
    assert sorted(families) == sorted(FAMILY_NAMES)
    best = max(families, key=lambda f: families[f]["search_auc_on_calibration_window"])
    assert card["family"] == card["selection"]["chosen"] == best
    assert card["validation"]["roc_auc"] == families[best]["validation"]["roc_auc"]
    for f in families.values():
        assert 0.5 < f["validation"]["roc_auc"] <= 1 and f["trials"] == 2 and f["params"]
    assert ModelRegistry(s.scoring.registry_dir).load_champion().meta["family"] == best


def _care_state(t: float, care_calls: float) -> dict:
    sums = [0.0] * len(SUM_FEATURES)
    sums[SUM_FEATURES.index("care_calls_7d")] = care_calls
    return {"ref_time": t, "active_days": [int(t // 86400)], "sums": sums, "covered_offsets": None}


class _OneModel:
    def __init__(self, model):
        self.model = model

    def current(self):
        return self.model


class _States:
    """The online store's answer, fixed (a unit test of the scorer's logic)."""

    def __init__(self, states):
        self.states = states

    def fetch(self, customers):
        return Lookup(profiles={c: None for c in customers}, states={c: self.states.get(c) for c in customers})

    def start(self, customers):  # the scorer asks first and reads the answer after admitting the CDRs
        lookup = self.fetch(customers)
        return SimpleNamespace(finish=lambda: lookup)


def test_a_linear_champion_raises_alerts_whose_reasons_are_its_contributions():
    features = MODEL_FEATURES
    coef = np.zeros(len(features))
    coef[features.index("care_calls_7d")] = 2.0
    model = LinearModel(features=features, fill=np.zeros(len(features)), mean=np.zeros(len(features)),
                        scale=np.ones(len(features)), coef=coef, intercept=-4.0, log_inputs=False,
                        meta={"version": "lr-1", "family": "logistic_regression"})
    t = 1.79e9
    s = Settings()
    s.scoring.overlay = False
    scorer = BatchScorer(s, _OneModel(model), _States({"calm": _care_state(t, 0.0), "angry": _care_state(t, 4.0)}))
    events = [Incoming(0, i, t, c.encode(), orjson.dumps({
        "event_id": f"e{i}", "customer_id": c, "event_time": format_time(t), "record_type": "voice",
        "direction": "outgoing", "duration_s": 30.0, "counterparty": "customer_care", "dropped": False,
        "cell_id": "C1", "roaming": False, "charge": 0.0})) for i, c in enumerate(["calm", "angry"])]
    result = scorer.score(events, {})
    calm, angry = result.scored
    assert calm.alert is None and angry.alert is not None
    alert = orjson.loads(angry.alert)
    risk = alert["risk"]
    assert risk == pytest.approx(1 / (1 + math.exp(-(-4.0 + 2.0 * 4.0))), abs=1e-6)
    assert alert["reasons"][0]["feature"] == "care_calls_7d"
    assert alert["reasons"][0]["contribution"] == pytest.approx(8.0, abs=1e-4)
    assert alert["reasons"][0]["text"] == "4 calls to customer care in the last 7 days"


def test_the_worker_loads_and_explains_a_linear_champion_without_scikit_learn():
    X, y = _data()
    model = LinearModel.fit(X[:1000], y[:1000], X[1000:], y[1000:], MODEL_FEATURES)
    root = Path(tempfile.mkdtemp())
    registry = ModelRegistry(root)
    registry.promote(registry.register(model.to_bytes(), {"family": "logistic_regression"}, version="lr-1"), "test")
    code = (
        "import sys, numpy as np\n"
        "from churn.model.tree import import_xgboost_without_sklearn\n"
        "import_xgboost_without_sklearn()\n"
        "from churn.model.registry import ModelRegistry\n"
        f"m = ModelRegistry({str(root)!r}).load_champion()\n"
        f"X = np.array({np.nan_to_num(X[:5], nan=0.0).tolist()!r}, dtype=np.float32)\n"
        "print(m.meta['family'], m.predict(X).round(6).tolist(), len(m.reasons(X)), 'sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert out.returncode == 0, out.stderr
    family, rest = out.stdout.split(" ", 1)
    assert family == "logistic_regression" and rest.strip().endswith("5 False")
    got = eval(rest.rsplit(" ", 2)[0])  # the list printed by the child
    np.testing.assert_allclose(got, model.predict(np.nan_to_num(X[:5], nan=0.0)).round(6), atol=1e-6)
