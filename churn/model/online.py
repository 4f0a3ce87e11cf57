"""The online challenger: a river model that learns from churn labels as they arrive and scores in shadow.

It sees the same inputs as the champion (``churn.model.inputs``), learns one
label at a time (``learn_one``) and predicts before learning, so its rolling
ROC AUC (``ProgressiveEvaluator``) is an honest, prequential estimate, as is the
champion's on the same labels.

>>> c = OnlineChallenger()
>>> c.predict(_toy(1.0)) is None  # nothing learned yet
True
>>> for i in range(200):
...     c.learn(_toy(1.0 if i % 2 else -1.0), bool(i % 2))
>>> c.predict(_toy(1.0)) > 0.75 > 0.25 > c.predict(_toy(-1.0))
True
>>> X = np.array([_toy(1.0), _toy(-1.0), _toy(float("nan"))])
>>> np.allclose(c.predict_many(X), [c.predict(x) for x in X])  # the vectorised form is the same model
True
>>> ev = ProgressiveEvaluator(window=100)
>>> for i in range(50):
...     ev.update(bool(i % 2), 0.9 if i % 2 else 0.2)
>>> ev.auc()
1.0
"""

from __future__ import annotations

import math

import numpy as np

from churn.model.inputs import MODEL_FEATURES


def _toy(v: float) -> list[float]:
    return [v] + [float("nan")] * (len(MODEL_FEATURES) - 1)


class OnlineChallenger:
    name = "river-logreg"

    def __init__(self, learning_rate: float = 0.05):
        from river import linear_model, optim

        from churn.model.online_scaler import StandardScaler  # river's, without river.preprocessing's imports

        self.model = StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate))
        self.learned = 0

    @staticmethod
    def _features(x) -> dict[str, float]:
        return {name: float(v) for name, v in zip(MODEL_FEATURES, x) if not math.isnan(v)}

    def predict(self, x) -> float | None:
        """Churn probability of one input vector; None until it has learned from a label."""
        if not self.learned:
            return None
        return float(self.model.predict_proba_one(self._features(x)).get(True, 0.0))

    def predict_many(self, X) -> list[float | None]:
        """``predict`` of every row of ``X`` at once: the same scaler and weights, in numpy.

        A missing (NaN) input adds nothing, exactly as an absent key does in river.
        """
        if not self.learned:
            return [None] * len(X)
        scaler, logreg = self.model.steps["StandardScaler"], self.model.steps["LogisticRegression"]
        mean = np.array([scaler.means.get(f, 0.0) for f in MODEL_FEATURES])
        var = np.array([scaler.vars.get(f, 0.0) for f in MODEL_FEATURES])
        weight = np.array([logreg._weights.get(f, 0.0) for f in MODEL_FEATURES])
        X = np.asarray(X, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            Z = np.where(var > 0, (X - mean) / np.sqrt(var), 0.0)
        Z = np.where(np.isnan(X), 0.0, Z)
        z = np.clip(Z @ weight + logreg.intercept, -700, 700)
        return (1.0 / (1.0 + np.exp(-z))).tolist()

    def learn(self, x, churned: bool) -> None:
        self.model.learn_one(self._features(x), bool(churned))  # river >= 0.22: returns None
        self.learned += 1


class ProgressiveEvaluator:
    """Rolling ROC AUC over the last ``window`` labels, for one model."""

    def __init__(self, window: int = 1000):
        from river import metrics

        self.metric = metrics.RollingROCAUC(window_size=window)
        self.count = 0

    def update(self, churned: bool, risk: float | None) -> None:
        if risk is None:
            return
        self.metric.update(bool(churned), {True: risk, False: 1.0 - risk})
        self.count += 1

    def auc(self) -> float | None:
        return float(self.metric.get()) if self.count else None
