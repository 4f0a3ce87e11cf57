"""What every model family shares around its scores: inputs aligned to its features, Platt calibration,
and reasons in plain words from its per-feature contributions.

A model (``churn.model.tree.TreeModel``, ``churn.model.linear.LinearModel``) has ``features``,
``margin(X)`` (its raw log-odds), Platt parameters ``a`` and ``b`` (``risk = sigmoid(a * margin + b)``)
and ``contributions(X)``: each feature's additive share of the calibrated log-odds, the last column
being the base, so that a row sums to the log-odds. ``reasons`` turns those into the alert's reasons.

>>> align(np.array([[1.0, 2.0]], dtype=np.float32), ["a", "b"]).tolist()
[[1.0, 2.0]]
>>> contrib = np.array([[0.5, -0.2, 0.1, -1.0]])
>>> [r["feature"] for r in reasons(np.array([[4.0, 1.0, 2.0]]), contrib, ["care_calls_7d", "b", "c"], top=3)[0]]
['care_calls_7d', 'c']
"""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def align(X, features: list[str]) -> np.ndarray:
    """``X`` with ``features`` as columns: as is if it has them, else picked by name from rows built with
    today's ``MODEL_FEATURES`` (NaN for a feature the inputs no longer have), so a model trained before
    the inputs changed keeps scoring."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2 and X.shape[1] == len(features):
        return X
    from churn.model.inputs import MODEL_FEATURES

    if X.ndim != 2 or X.shape[1] != len(MODEL_FEATURES):
        raise ValueError(f"inputs have {X.shape[-1]} columns; the model has {len(features)} features")
    index = {name: i for i, name in enumerate(MODEL_FEATURES)}
    out = np.full((X.shape[0], len(features)), np.nan, dtype=np.float32)
    for j, name in enumerate(features):
        if name in index:
            out[:, j] = X[:, index[name]]
    return out


def platt(margin, y) -> tuple[float, float]:
    """Platt scaling: ``a``, ``b`` of the logistic fit of ``y`` on ``margin`` (later rows than the model's)."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e6).fit(np.asarray(margin, dtype=float).reshape(-1, 1), np.asarray(y))
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def reasons(X: np.ndarray, contributions: np.ndarray, features: list[str], top: int = 3) -> list[list[dict]]:
    """Per row of ``X`` (aligned to ``features``), the ``top`` features pushing the risk up most, largest
    first, in plain words; what the model made of absent features is one reason, not one per feature."""
    from churn.model.inputs import describe, describe_missing

    out = []
    for row, c in zip(X, contributions[:, :-1]):
        missing = np.isnan(row)
        # largest first; ties keep feature order, and the absent features' reason comes after present
        # features of equal weight
        ranked = sorted(((round(float(c[i]), 4), int(i)) for i in np.flatnonzero(~missing)), key=lambda t: -t[0])
        candidates = ranked[:top]
        if missing.any():
            candidates.append((round(float(c[missing].sum()), 4), None))
            candidates.sort(key=lambda t: -t[0])
        out.append([
            {"feature": features[i], "contribution": value, "text": describe(features[i], float(row[i]))}
            if i is not None else
            {"feature": "missing_features", "contribution": value,
             "text": describe_missing([f for f, m in zip(features, missing) if m])}
            for value, i in candidates[:top] if value > 0])
    return out
