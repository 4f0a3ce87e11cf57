"""Training the champion: bounded hyper-parameter search, time-based validation, calibration, metrics.

Rows are ordered by their observation time and split into three windows: the
trees learn on the earliest 60 %, the search and the calibration look at the
next 20 %, and the metrics come from the latest 20 %, which nothing was fitted
on (train on earlier, validate on later). ``cross_validate`` gives k-fold ROC
AUC for data without times (the IBM Telco table).

>>> rng = np.random.default_rng(1)
>>> X = rng.normal(size=(1500, 3)).astype(np.float32)
>>> y = (X[:, 0] + rng.normal(size=1500) > 1).astype(int)
>>> result = train(X, y, np.arange(1500.0), ["a", "b", "c"], n_trials=3, seed=1)
>>> result.metrics["roc_auc"] > 0.75, sorted(result.windows)
(True, ['calibrate', 'train', 'validate'])
>>> round(expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])), 3)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from churn.model.tree import DEFAULT_PARAMS, TreeModel

#: Bounds of the hyper-parameter search.
SEARCH_SPACE = {
    "n_estimators": (100, 600),
    "max_depth": (2, 6),
    "learning_rate": (0.01, 0.2),
    "subsample": (0.6, 1.0),
    "colsample_bytree": (0.5, 1.0),
    "min_child_weight": (1, 20),
    "reg_lambda": (0.1, 10.0),
}


@dataclass
class TrainResult:
    model: TreeModel
    metrics: dict
    params: dict
    windows: dict  # window -> (first time, last time, rows)
    validation: tuple = field(repr=False, default=())  # (X, y) of the validation window
    validation_times: np.ndarray = field(repr=False, default=None)  # observation times of its rows
    trials: list = field(default_factory=list)


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """Mean |observed rate - mean predicted| over equal-width probability bins, weighted by bin size."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            err += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    return float(err)


def evaluate(model: TreeModel, X, y, threshold: float = 0.5) -> dict:
    """ROC AUC, PR AUC, F1/recall/precision at the operating threshold, calibration error, Brier score."""
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, precision_score, recall_score
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    p = model.predict(X)
    hit = (p >= threshold).astype(int)
    return {
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
        "pr_auc": round(float(average_precision_score(y, p)), 4),
        "threshold": threshold,
        "f1": round(float(f1_score(y, hit, zero_division=0)), 4),
        "recall": round(float(recall_score(y, hit, zero_division=0)), 4),
        "precision": round(float(precision_score(y, hit, zero_division=0)), 4),
        "calibration_error": round(expected_calibration_error(y, p), 4),
        "brier": round(float(brier_score_loss(y, p)), 4),
        "rows": int(len(y)),
        "positives": int(y.sum()),
    }


def time_windows(times, shares=(0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """Row indices of the train, calibrate and validate windows, in time order."""
    order = np.argsort(np.asarray(times), kind="stable")
    a = int(len(order) * shares[0])
    b = int(len(order) * (shares[0] + shares[1]))
    return {"train": order[:a], "calibrate": order[a:b], "validate": order[b:]}


def search(X_tr, y_tr, X_va, y_va, features, n_trials: int, seed: int = 0) -> tuple[dict, list]:
    """Bounded TPE search (Optuna) for the parameters with the best ROC AUC on the later window."""
    if n_trials <= 0:
        return dict(DEFAULT_PARAMS), []
    import optuna
    from sklearn.metrics import roc_auc_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        params = {
            "n_estimators": trial.suggest_int("n_estimators", *SEARCH_SPACE["n_estimators"], step=50),
            "max_depth": trial.suggest_int("max_depth", *SEARCH_SPACE["max_depth"]),
            "learning_rate": trial.suggest_float("learning_rate", *SEARCH_SPACE["learning_rate"], log=True),
            "subsample": trial.suggest_float("subsample", *SEARCH_SPACE["subsample"]),
            "colsample_bytree": trial.suggest_float("colsample_bytree", *SEARCH_SPACE["colsample_bytree"]),
            "min_child_weight": trial.suggest_int("min_child_weight", *SEARCH_SPACE["min_child_weight"]),
            "reg_lambda": trial.suggest_float("reg_lambda", *SEARCH_SPACE["reg_lambda"], log=True),
        }
        import xgboost as xgb

        clf = xgb.XGBClassifier(**params, tree_method="hist", random_state=seed, n_jobs=2)
        clf.fit(X_tr, y_tr)
        return roc_auc_score(y_va, clf.predict_proba(X_va)[:, 1])

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: v for k, v in DEFAULT_PARAMS.items() if k in SEARCH_SPACE})
    study.optimize(objective, n_trials=n_trials)
    trials = [{"auc": round(t.value, 4), **t.params} for t in study.trials if t.value is not None]
    return {**DEFAULT_PARAMS, **study.best_params}, trials


def train(X, y, times, features: list[str], n_trials: int = 20, seed: int = 0, threshold: float = 0.5) -> TrainResult:
    """Search, fit, calibrate and evaluate on time-ordered windows."""
    X, y, times = np.asarray(X, dtype=np.float32), np.asarray(y), np.asarray(times, dtype=float)
    w = time_windows(times)
    (X_tr, y_tr), (X_ca, y_ca), (X_va, y_va) = ((X[w[k]], y[w[k]]) for k in ("train", "calibrate", "validate"))
    params, trials = search(X_tr, y_tr, X_ca, y_ca, features, n_trials, seed)
    model = TreeModel.fit(X_tr, y_tr, X_ca, y_ca, features, params=params, seed=seed)
    windows = {k: (float(times[idx].min()), float(times[idx].max()), int(len(idx))) for k, idx in w.items()}
    return TrainResult(model=model, metrics=evaluate(model, X_va, y_va, threshold), params=params,
                       windows=windows, validation=(X_va, y_va), validation_times=times[w["validate"]],
                       trials=trials)


def cross_validate(X, y, features: list[str], params: dict | None = None, folds: int = 5, seed: int = 0) -> list[float]:
    """Stratified k-fold ROC AUC of the tree model (calibration does not change AUC, so it is skipped)."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
    p = {**DEFAULT_PARAMS, **(params or {})}
    aucs = []
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        clf = xgb.XGBClassifier(**p, tree_method="hist", random_state=seed, n_jobs=2).fit(X[tr], y[tr])
        aucs.append(float(roc_auc_score(y[va], clf.predict_proba(X[va])[:, 1])))
    return aucs
