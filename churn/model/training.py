"""Training the champion: model selection over three families, bounded hyper-parameter search,
time-based validation, calibration, metrics.

Rows are ordered by their observation time and split into three windows: the
models learn on the earliest 60 %, the search and the calibration look at the
next 20 %, and the metrics come from the latest 20 %, which nothing was fitted
on (train on earlier, validate on later).

Each family of ``churn.model.families`` (logistic regression, random forest,
gradient-boosted trees) gets the same windows and the same Optuna budget; its
best trial is the one with the highest ROC AUC on the search window. The family
whose best trial ranks best there wins. Choosing on the search window, not the
latest one, keeps the latest window untouched: its metrics, and the promotion
rule that compares them with the champion's, are not inflated by the choice.
Every family's figures go into the result (and the model card).

``cross_validate`` gives k-fold ROC AUC for data without times (the IBM Telco
table), per family or with the selection inside each fold.

>>> rng = np.random.default_rng(1)
>>> X = rng.normal(size=(1500, 3)).astype(np.float32)
>>> y = (X[:, 0] + rng.normal(size=1500) > 1).astype(int)
>>> result = train(X, y, np.arange(1500.0), ["a", "b", "c"], n_trials=3, seed=1)
>>> result.metrics["roc_auc"] > 0.75, sorted(result.windows), sorted(result.families)
(True, ['calibrate', 'train', 'validate'], ['logistic_regression', 'random_forest', 'xgboost'])
>>> result.family == max(result.families, key=lambda f: result.families[f]["search_auc"])
True
>>> round(expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])), 3)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from churn.model.families import FAMILIES, FAMILY_NAMES, Family


@dataclass
class TrainResult:
    model: object  # the chosen family's calibrated model
    metrics: dict
    params: dict
    windows: dict  # window -> (first time, last time, rows)
    validation: tuple = field(repr=False, default=())  # (X, y) of the validation window
    validation_times: np.ndarray = field(repr=False, default=None)  # observation times of its rows
    trials: list = field(default_factory=list)  # the chosen family's search trials
    family: str = "xgboost"
    #: every family: ``search_auc`` (best on the search window), ``validation`` (metrics on the latest
    #: window), ``params``, ``trials``
    families: dict = field(default_factory=dict)


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


def evaluate(model, X, y, threshold: float = 0.5) -> dict:
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


def search(family: Family, X_tr, y_tr, X_va, y_va, features, n_trials: int, seed: int = 0):
    """Bounded TPE search (Optuna) for the ``family``'s parameters with the best ROC AUC on the later
    window (its defaults first; only those with ``n_trials`` 0). Returns the best trial's model (not
    calibrated), its parameters, its ROC AUC and every trial's."""
    import optuna
    from sklearn.metrics import roc_auc_score

    best: dict = {}

    def fit_and_rank(params: dict) -> float:
        model = family.train(X_tr, y_tr, features, params, seed)
        auc = float(roc_auc_score(y_va, model.margin(X_va)))
        if not best or auc > best["auc"]:
            best.update(auc=auc, model=model, params={**family.defaults, **params})
        return auc

    if n_trials <= 0:
        fit_and_rank({})
        return best["model"], best["params"], best["auc"], []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: v for k, v in family.defaults.items()
                         if k in family.suggest(optuna.trial.FixedTrial(family.defaults))})
    study.optimize(lambda trial: fit_and_rank(family.suggest(trial)), n_trials=n_trials)
    trials = [{"auc": round(t.value, 4), **t.params} for t in study.trials if t.value is not None]
    return best["model"], best["params"], best["auc"], trials


def train(X, y, times, features: list[str], n_trials: int = 20, seed: int = 0, threshold: float = 0.5,
          families: tuple[str, ...] = FAMILY_NAMES) -> TrainResult:
    """Search, fit, calibrate and evaluate every family on time-ordered windows; keep the best."""
    X, y, times = np.asarray(X, dtype=np.float32), np.asarray(y), np.asarray(times, dtype=float)
    w = time_windows(times)
    (X_tr, y_tr), (X_ca, y_ca), (X_va, y_va) = ((X[w[k]], y[w[k]]) for k in ("train", "calibrate", "validate"))
    models, summary = {}, {}
    for name in families:
        model, params, search_auc, trials = search(FAMILIES[name], X_tr, y_tr, X_ca, y_ca, features, n_trials, seed)
        models[name] = model.calibrate(X_ca, y_ca)
        summary[name] = {"search_auc": round(search_auc, 4), "validation": evaluate(model, X_va, y_va, threshold),
                         "params": params, "trials": trials}
    chosen = max(families, key=lambda name: summary[name]["search_auc"])
    windows = {k: (float(times[idx].min()), float(times[idx].max()), int(len(idx))) for k, idx in w.items()}
    return TrainResult(model=models[chosen], metrics=summary[chosen]["validation"], params=summary[chosen]["params"],
                       windows=windows, validation=(X_va, y_va), validation_times=times[w["validate"]],
                       trials=summary[chosen]["trials"], family=chosen, families=summary)


def cross_validate(X, y, features: list[str], params: dict | None = None, folds: int = 5, seed: int = 0,
                   family: str = "xgboost") -> list[float]:
    """Stratified k-fold ROC AUC of one family (calibration does not change AUC, so it is skipped).
    ``family="selected"``: in each fold, every family is trained on three quarters of the fold's
    training rows and ranked on the rest (with its defaults, ``params`` for XGBoost); the winner is
    refitted on all of them and scored on the fold."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    X, y = np.asarray(X, dtype=np.float32), np.asarray(y)

    def fit(name, X_fit, y_fit):
        return FAMILIES[name].train(X_fit, y_fit, features, params if name == "xgboost" else None, seed)

    aucs = []
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        name = family
        if family == "selected":
            inner_tr, inner_va = train_test_split(tr, test_size=0.25, stratify=y[tr], random_state=seed)
            name = max(FAMILY_NAMES, key=lambda f: roc_auc_score(y[inner_va], fit(f, X[inner_tr], y[inner_tr])
                                                                 .margin(X[inner_va])))
        aucs.append(float(roc_auc_score(y[va], fit(name, X[tr], y[tr]).margin(X[va]))))
    return aucs
