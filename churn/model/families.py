"""The model families the retrain compares: logistic regression, a random forest and gradient-boosted trees.

Each family is a way to train an uncalibrated model (``train``), its default parameters, and the
bounds of its hyper-parameter search (``suggest``, for Optuna). ``churn.model.training`` searches
each one under the same time windows and trial budget and keeps the best. Every family's model
scores with numpy or XGBoost alone and explains itself exactly (``contributions``): TreeSHAP for
the two tree families, weight times standardised input for the linear one.

>>> sorted(FAMILIES)
['logistic_regression', 'random_forest', 'xgboost']
>>> FAMILIES["random_forest"].defaults["n_estimators"]
200
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from churn.model.linear import LINEAR_PARAMS, LinearModel
from churn.model.tree import DEFAULT_PARAMS, RANDOM_FOREST_PARAMS, TreeModel


@dataclass(frozen=True)
class Family:
    name: str
    defaults: dict
    #: ``(X, y, features, params, seed) -> model`` (not calibrated)
    train: Callable
    #: ``(optuna trial) -> params``
    suggest: Callable


def _suggest_xgboost(trial) -> dict:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 100, 600, step=50),
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "min_child_weight": trial.suggest_int("min_child_weight", 1, 20),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10.0, log=True),
    }


def _suggest_random_forest(trial) -> dict:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300, step=50),
        "max_depth": trial.suggest_int("max_depth", 3, 10),
        "subsample": trial.suggest_float("subsample", 0.5, 0.9),
        "colsample_bynode": trial.suggest_float("colsample_bynode", 0.2, 1.0),
        "min_child_weight": trial.suggest_int("min_child_weight", 1, 20),
    }


def _suggest_logistic_regression(trial) -> dict:
    return {"C": trial.suggest_float("C", 1e-3, 10.0, log=True),
            "log_inputs": trial.suggest_categorical("log_inputs", [True, False])}


FAMILIES: dict[str, Family] = {
    "logistic_regression": Family(
        "logistic_regression", LINEAR_PARAMS,
        lambda X, y, features, params, seed: LinearModel.train(X, y, features, params, seed),
        _suggest_logistic_regression),
    "random_forest": Family(
        "random_forest", RANDOM_FOREST_PARAMS,
        lambda X, y, features, params, seed: TreeModel.train(X, y, features, params, seed, family="random_forest"),
        _suggest_random_forest),
    "xgboost": Family(
        "xgboost", DEFAULT_PARAMS,
        lambda X, y, features, params, seed: TreeModel.train(X, y, features, params, seed, family="xgboost"),
        _suggest_xgboost),
}
#: Every family, in the order they are trained.
FAMILY_NAMES = tuple(FAMILIES)


def model_from_bytes(data: bytes):
    """A stored model of any family (``to_bytes``)."""
    doc = json.loads(data)
    return (LinearModel if doc.get("family") == "logistic_regression" else TreeModel).from_doc(doc)
