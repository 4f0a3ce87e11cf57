"""The online challenger's scaler is river's ``StandardScaler`` in behaviour: the same pipeline with
either scaler predicts the same on the same stream, step by step."""

from __future__ import annotations

import numpy as np
from river import linear_model, optim, preprocessing

from churn.model.online_scaler import StandardScaler


def test_the_challenger_pipeline_predicts_as_river_s_own_standard_scaler_pipeline():
    rng = np.random.default_rng(7)
    ours = StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
    river_s = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
    names = [f"f{i}" for i in range(12)]
    compared = 0
    for step in range(2000):
        x = {n: float(v) for n, v in zip(names, rng.normal(size=12) * rng.uniform(0.1, 50, size=12))
             if rng.random() > 0.2}  # missing features, as NaN inputs are dropped
        if step % 7 == 0:
            x["f3"] = 4.0  # a constant feature: no variance, scaled to 0
        y = bool(rng.random() < 0.3 + 0.4 * (x.get("f0", 0.0) > 0))
        if step:
            assert np.isclose(ours.predict_proba_one(x)[True], river_s.predict_proba_one(x)[True],
                              rtol=1e-12, atol=1e-15)
            compared += 1
        ours.learn_one(x, y)
        river_s.learn_one(x, y)
    assert compared == 1999
    scaler, theirs = ours.steps["StandardScaler"], river_s.steps["StandardScaler"]
    assert all(np.isclose(scaler.vars[n], theirs.vars[n], rtol=1e-12) for n in names)
