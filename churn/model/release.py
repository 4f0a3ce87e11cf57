"""From a training set to a registered model: train, write the card and plots, promote or keep.

Used by the bootstrap at setup and by the nightly retrain, so every model in the
registry has the same kind of card and went through the same promotion rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from churn.config import Settings
from churn.model.card import importance, write_plots
from churn.model.drift import DriftBaseline
from churn.model.inputs import MODEL_FEATURES
from churn.model.promotion import compare, decide
from churn.model.registry import ModelRegistry
from churn.model.training import train


@dataclass
class Release:
    version: str
    promoted: bool
    reason: str
    metrics: dict
    champion_metrics: dict | None
    source: str = ""  # what it was trained on (the card's ``trained_on``)


def train_and_release(settings: Settings, X, y, times, *, kind: str, source: str, n_trials: int,
                      margin: float | None = None, seed: int = 0, observed=None) -> Release:
    """Train on (X, y, times); register with a model card; promote if it beats the champion by ``margin``.
    ``observed``: each row's ``churn.model.drift.observed_days``, for the drift baseline (None: all mature)."""
    cfg = settings.training
    result = train(X, y, times, MODEL_FEATURES, n_trials=n_trials, seed=seed, threshold=cfg.operating_threshold)
    registry = ModelRegistry(settings.scoring.registry_dir)
    champion = registry.load_champion()
    X_va, y_va = result.validation
    cand, champ = compare(result.model, champion, X_va, y_va, cfg.operating_threshold)
    promote, reason = decide(cand, champ, cfg.promotion_margin if margin is None else margin)
    card = {
        "kind": kind,
        "trained_on": source,
        "features": MODEL_FEATURES,
        "params": result.params,
        "search": {"trials": len(result.trials), "space": "churn.model.training.SEARCH_SPACE",
                   "best_auc_on_calibration_window": max((t["auc"] for t in result.trials), default=None)},
        "windows": {k: {"from": v[0], "to": v[1], "rows": v[2]} for k, v in result.windows.items()},
        "validation": cand,
        "champion_on_same_window": None if champ is None else {"version": champion.meta["version"], **champ},
        "calibration": {"method": "Platt on the calibration window", "a": result.model.a, "b": result.model.b},
        "importance": importance(result.model, X_va),
        "decision": {"promoted": promote, "reason": reason},
        "plots": ["roc.png", "calibration.png", "importance.png"],
    }
    version = registry.register(result.model.to_bytes(), card, version=registry.new_version(kind))
    # what the model was trained on, for the live drift check (churn.model.drift)
    registry.save_drift_baseline(version, DriftBaseline.fit(X, MODEL_FEATURES, result.model.predict(X), observed))
    write_plots(result.model, X_va, y_va, registry.root / version)
    (registry.promote if promote else registry.reject)(version, reason=reason)
    return Release(version=version, promoted=promote, reason=reason, metrics=cand, champion_metrics=champ,
                   source=source)
