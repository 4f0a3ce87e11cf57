"""What one call of the champion's trees costs, by rows: XGBoost's Python wrapper against the C API called
directly (``churn.model.tree.dense_margin`` for margins, ``dense_contributions`` for the per-feature
contributions an alert's reasons come from; what the scorer, the API and the nightly job use).

A live scoring batch holds tens of CDRs and calls the model once, so a call's fixed cost is paid per batch.
The two calls alternate on the same rows, with the processor's caches flushed before each (in the worker a
batch's other work runs between two model calls), and each figure is the median of ``CALLS`` calls.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from churn.config import Settings

ROWS = (1, 25, 100, 1000)
CONTRIBUTION_ROWS = (1, 5, 25)  # an alert's reasons: the alerted rows of a batch, a few at most
CALLS = 400


def bench_model_call(base: Settings) -> dict[str, tuple[float, str, dict]]:
    """Per call of the bootstrap champion (simulated history of 2,000 customers over 45 days, as the scoring
    benchmarks train it): µs of XGBoost's ``inplace_predict`` and of the direct C API call, alternating, by rows."""
    from churn.model.bootstrap import train_bootstrap
    from churn.model.registry import ModelRegistry
    import xgboost as xgb

    from churn.model.tree import dense_contributions, dense_margin

    s = base.model_copy(deep=True)
    tmp = Path(tempfile.mkdtemp(prefix="churn-bench-model-"))
    s.scoring.registry_dir = tmp / "models"
    try:
        train_bootstrap(s, customers=2000, days=45)
        model = ModelRegistry(s.scoring.registry_dir).load_champion()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    booster = model.booster
    margins = {"wrapper": lambda X: booster.inplace_predict(X, predict_type="margin", missing=np.nan),
               "direct": lambda X: dense_margin(booster, X)}
    contributions = {"wrapper": lambda X: booster.predict(xgb.DMatrix(X, missing=np.nan, nthread=1),
                                                          pred_contribs=True, validate_features=False),
                     "direct": lambda X: dense_contributions(booster, X)}
    rng = np.random.default_rng(0)
    flush = np.ones(4_000_000)  # 32 MB: more than the last-level cache
    out: dict[str, tuple[float, str, dict]] = {}
    for kind, calls, all_rows in (("model_call", margins, ROWS), ("model_contributions", contributions, CONTRIBUTION_ROWS)):
        for rows in all_rows:
            X = rng.normal(size=(rows, len(model.features))).astype(np.float32)
            X[rng.random(X.shape) < 0.2] = np.nan
            assert np.array_equal(calls["wrapper"](X), calls["direct"](X))
            spent: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(CALLS):
                for name, call in calls.items():
                    flush *= 1.0
                    started = time.perf_counter()
                    call(X)
                    spent[name].append(time.perf_counter() - started)
            us = {name: 1e6 * float(np.median(v)) for name, v in spent.items()}
            detail = {"rows": rows, "calls": CALLS, "trees": booster.num_boosted_rounds(),
                      "features": len(model.features), "wrapper_us": round(us["wrapper"], 1),
                      "direct_us": round(us["direct"], 1)}
            out[f"{kind}_us_rows_{rows}_wrapper"] = (us["wrapper"], "µs", detail)
            out[f"{kind}_us_rows_{rows}_direct"] = (us["direct"], "µs", detail)
            out[f"{kind}_direct_vs_wrapper_rows_{rows}"] = (us["direct"] / us["wrapper"], "x", detail)
    return out
