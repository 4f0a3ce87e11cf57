"""Logistic regression as a scoring model: a scikit-learn pipeline to train, plain numpy to score and explain.

``LinearModel.train`` fits scikit-learn's ``SimpleImputer(mean) -> StandardScaler -> LogisticRegression``
pipeline, optionally on ``sign(x) * log1p(|x|)`` of every input (counts and sums are heavy-tailed),
and keeps only its numbers, so the scoring worker needs numpy alone. Missing inputs take the
training mean, as in the pipeline.

Its contributions are exact: the log-odds is ``intercept + sum_j coef_j * z_j`` with ``z_j`` the
standardised input, so feature ``j`` contributes ``coef_j * z_j``: how far the customer's (transformed)
value lies from the training mean, times its weight. A feature at the mean (or missing) contributes 0,
and the base is the log-odds of a customer at the mean of everything. Scaled by the Platt ``a`` (plus
``b`` on the base) they add up to the calibrated log-odds, as the trees' TreeSHAP values do.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(800, 3)).astype(np.float32)
>>> y = (X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=800) > 0.5).astype(int)
>>> X[::7, 2] = np.nan
>>> m = LinearModel.fit(X[:500], y[:500], X[500:], y[500:], ["usage", "b", "c"], params={"C": 1.0})
>>> bool(((m.predict(X[500:]) > 0.5) == y[500:]).mean() > 0.85)
True
>>> contrib = m.contributions(X[:4])
>>> bool(np.allclose(contrib.sum(axis=1), m.a * m.margin(X[:4]) + m.b, atol=1e-5))
True
>>> LinearModel.from_bytes(m.to_bytes()).predict(X[:3]).round(6).tolist() == m.predict(X[:3]).round(6).tolist()
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from churn.model.explain import align, platt, reasons, sigmoid

#: The defaults: inverse regularisation strength, and whether inputs are log-transformed first.
LINEAR_PARAMS = {"C": 1.0, "log_inputs": True}


def _transform(X: np.ndarray, log_inputs: bool) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return np.sign(X) * np.log1p(np.abs(X)) if log_inputs else X


@dataclass
class LinearModel:
    features: list[str]
    fill: np.ndarray  # each input's training mean (after the transform): the value of a missing input
    mean: np.ndarray  # the scaler's centre
    scale: np.ndarray  # the scaler's unit
    coef: np.ndarray
    intercept: float
    log_inputs: bool = True
    a: float = 1.0  # Platt scale
    b: float = 0.0  # Platt offset
    meta: dict = field(default_factory=dict)

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, X, y, features: list[str], params: dict | None = None, seed: int = 0) -> "LinearModel":
        """The scikit-learn pipeline fitted on ``(X, y)``, kept as numbers (not calibrated yet)."""
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        p = {**LINEAR_PARAMS, **(params or {})}
        pipeline = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                                 LogisticRegression(C=p["C"], max_iter=2000, random_state=seed))
        pipeline.fit(_transform(X, p["log_inputs"]), np.asarray(y))
        imputer, scaler, logit = pipeline.steps[0][1], pipeline.steps[1][1], pipeline.steps[2][1]
        return cls(features=list(features), fill=imputer.statistics_.astype(np.float64), mean=scaler.mean_.copy(),
                   scale=scaler.scale_.copy(), coef=logit.coef_[0].astype(np.float64),
                   intercept=float(logit.intercept_[0]), log_inputs=bool(p["log_inputs"]),
                   meta={"params": p, "family": "logistic_regression"})

    def calibrate(self, X_cal, y_cal) -> "LinearModel":
        self.a, self.b = platt(self.margin(X_cal), y_cal)
        return self

    @classmethod
    def fit(cls, X_train, y_train, X_cal, y_cal, features: list[str], params: dict | None = None,
            seed: int = 0) -> "LinearModel":
        return cls.train(X_train, y_train, features, params, seed).calibrate(X_cal, y_cal)

    # -- scoring ----------------------------------------------------------------------------
    def aligned(self, X) -> np.ndarray:
        return align(X, self.features)

    def _standardised(self, X) -> np.ndarray:
        Z = _transform(self.aligned(X), self.log_inputs)
        Z = np.where(np.isnan(Z), self.fill, Z)
        return (Z - self.mean) / self.scale

    def margin(self, X) -> np.ndarray:
        return self._standardised(X) @ self.coef + self.intercept

    def predict(self, X) -> np.ndarray:
        """Calibrated churn probability of each row."""
        return sigmoid(self.a * self.margin(X) + self.b)

    def contributions(self, X) -> np.ndarray:
        """Each feature's contribution to each row's calibrated log-odds (last column: the base)."""
        Z = self._standardised(X)
        out = np.empty((Z.shape[0], Z.shape[1] + 1))
        out[:, :-1] = self.a * Z * self.coef
        out[:, -1] = self.a * self.intercept + self.b
        return out

    def reasons(self, X, top: int = 3) -> list[list[dict]]:
        X = self.aligned(X)
        return reasons(X, self.contributions(X), self.features, top)

    # -- storage ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"family": "logistic_regression", "features": self.features, "a": self.a, "b": self.b,
               "meta": self.meta, "log_inputs": self.log_inputs, "intercept": self.intercept,
               **{k: getattr(self, k).tolist() for k in ("fill", "mean", "scale", "coef")}}
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LinearModel":
        return cls.from_doc(json.loads(data))

    @classmethod
    def from_doc(cls, doc: dict) -> "LinearModel":
        return cls(features=doc["features"], intercept=doc["intercept"], log_inputs=doc["log_inputs"],
                   a=doc["a"], b=doc["b"], meta=doc.get("meta", {}),
                   **{k: np.asarray(doc[k], dtype=np.float64) for k in ("fill", "mean", "scale", "coef")})
