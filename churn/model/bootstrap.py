"""The first champion, trained at setup so the system scores from minute one.

It learns from the customer table (profiles) and a simulated behaviour history
of the same customers: the simulator's CDRs before each churn label, turned
into activity features with the very functions the stream uses
(``churn.features`` numpy rendering, ``churn.model.inputs``), read at an
observation time up to a week before the label. Training rows come from earlier
labels, calibration and validation from later ones. The nightly retrain
(``churn batch train``) replaces this model with one trained on the real Silver
history through Feast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churn.config import Settings
from churn.features import DAY, partial_sums_numpy
from churn.model.inputs import MODEL_FEATURES, matrix
from churn.model.registry import ModelRegistry
from churn.model.tree import TreeModel


@dataclass
class TrainingSet:
    X: np.ndarray
    y: np.ndarray
    at_s: np.ndarray  # observation time of each row
    customer_id: np.ndarray


def simulated_training_set(settings: Settings, customers: int = 3000, days: float = 60.0, end_s: float | None = None,
                           lookahead_days: float = 7.0, seed: int | None = None,
                           without_activity: float = 0.15) -> TrainingSet:
    """Rows (profile + activity at an observation time, churned within ``lookahead_days``) from a simulation.

    A share ``without_activity`` of the rows have no activity features, as for a customer the stream
    has not pushed yet: the model learns to fall back on the profile instead of guessing.
    """
    from churn.feature_store import profile_frame
    from churn.simulator.simulator import Simulator

    seed = settings.simulator.seed if seed is None else seed
    end_s = float(end_s if end_s is not None else (np.floor(__import__("time").time() / DAY) * DAY))
    sim = Simulator(seed=seed, start_s=end_s - days * DAY, end_s=end_s, customers=customers,
                    precursor_days=settings.simulator.precursor_days, csv_path=settings.simulator.customers_csv)
    ids = np.asarray(sim.pop.customer_id, dtype=object)
    parts = [step.good.silver_columns(ids) for step in sim.backfill_steps(slice_s=6 * 3600.0)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    rng = np.random.default_rng([seed, 11])
    observe = sim.label_s - rng.uniform(0.0, lookahead_days * DAY, len(ids))
    at = dict(zip(ids.tolist(), observe.tolist()))
    states = partial_sums_numpy(cols, at_s=at)
    profiles = profile_frame(settings.simulator.customers_csv).set_index("customer_id").to_dict("index")
    blank = rng.random(len(ids)) < without_activity
    X = matrix([profiles.get(c) for c in ids], [None if b else states.get(c) for c, b in zip(ids, blank)],
               observe.tolist())
    return TrainingSet(X=X, y=sim.pop.churner.astype(int), at_s=observe, customer_id=ids)


def time_split(ts: TrainingSet, valid_fraction: float = 0.3):
    """Earlier rows for training, later rows for calibration/validation."""
    cut = np.quantile(ts.at_s, 1.0 - valid_fraction)
    early, late = ts.at_s < cut, ts.at_s >= cut
    return (ts.X[early], ts.y[early]), (ts.X[late], ts.y[late]), float(cut)


def evaluate(model: TreeModel, X, y) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    p = model.predict(X)
    return {"roc_auc": round(float(roc_auc_score(y, p)), 4), "pr_auc": round(float(average_precision_score(y, p)), 4),
            "rows": int(len(y)), "positives": int(y.sum())}


def train_bootstrap(settings: Settings, customers: int = 3000, days: float = 60.0, promote: bool = True) -> str:
    """Train, register and (if there is no champion yet, or ``promote``) promote the first champion."""
    ts = simulated_training_set(settings, customers=customers, days=days)
    (X_tr, y_tr), (X_va, y_va), cut = time_split(ts)
    model = TreeModel.fit(X_tr, y_tr, X_va, y_va, MODEL_FEATURES, seed=settings.simulator.seed)
    registry = ModelRegistry(settings.scoring.registry_dir)
    card = {
        "kind": "bootstrap",
        "trained_on": f"simulated history of {customers} customers over {days:g} days + customer table",
        "features": MODEL_FEATURES,
        "validation": {"split_at": cut, **evaluate(model, X_va, y_va)},
        "calibration": {"a": model.a, "b": model.b},
    }
    version = registry.register(model.to_bytes(), card, version=registry.new_version("bootstrap"))
    if promote or registry.champion_version() is None:
        registry.promote(version, reason="bootstrap champion trained at setup")
    return version
