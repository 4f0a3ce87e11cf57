"""The champion: a gradient-boosted tree model with Platt calibration and per-feature reasons.

``TreeModel.fit`` trains XGBoost on earlier rows and calibrates on later ones
(``risk = sigmoid(a * margin + b)``), so the risk is a probability. Because the
calibration is linear in the margin, XGBoost's exact per-feature contributions
(``pred_contribs``, SHAP values of the margin) scaled by ``a`` are the
contributions to the calibrated log-odds: the reasons of a score.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(600, 3)).astype(np.float32)
>>> y = (X[:, 0] + 0.3 * rng.normal(size=600) > 0.5).astype(int)
>>> m = TreeModel.fit(X[:400], y[:400], X[400:], y[400:], ["usage", "b", "c"], params={"n_estimators": 30})
>>> risk = m.predict(X[400:])
>>> bool(((risk > 0.5) == y[400:]).mean() > 0.85)
True
>>> riskiest = X[400:][np.argmax(risk)][None, :]
>>> m.reasons(riskiest, top=1)[0][0]["feature"]
'usage'
>>> TreeModel.from_bytes(m.to_bytes()).predict(X[:5]).round(6).tolist() == m.predict(X[:5]).round(6).tolist()
True
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import numpy as np

DEFAULT_PARAMS = {
    "n_estimators": 300,
    "max_depth": 4,
    "learning_rate": 0.05,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "min_child_weight": 5,
    "reg_lambda": 1.0,
}


def import_xgboost_without_sklearn() -> None:
    """Import xgboost for scoring only: without the scikit-learn it imports for its estimator API
    (``XGBClassifier``), which brings scipy's statistics and pandas (~130 MB resident; xgboost alone
    ~35 MB). Scoring needs only ``Booster`` (``from_bytes``, ``inplace_predict``, ``pred_contribs``).
    In this process ``XGBClassifier`` then raises ImportError ("sklearn needs to be installed"), so
    only a process that never trains calls this (``churn score``), before anything imports xgboost.
    No-op if xgboost or scikit-learn is imported already."""
    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # importing it raises ImportError: xgboost's fallback
    try:
        import xgboost  # noqa: F401
    finally:
        del sys.modules["sklearn"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


@dataclass
class TreeModel:
    booster: object  # xgboost.Booster
    features: list[str]
    a: float = 1.0  # Platt scale
    b: float = 0.0  # Platt offset
    meta: dict = field(default_factory=dict)

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, X_train, y_train, X_cal, y_cal, features: list[str], params: dict | None = None,
            seed: int = 0) -> "TreeModel":
        """Fit the trees on ``X_train`` and the calibration on ``X_cal`` (later rows, never seen by the trees)."""
        import xgboost as xgb
        from sklearn.linear_model import LogisticRegression

        p = {**DEFAULT_PARAMS, **(params or {})}
        clf = xgb.XGBClassifier(**p, tree_method="hist", random_state=seed, n_jobs=2, eval_metric="auc")
        clf.fit(np.asarray(X_train, dtype=np.float32), np.asarray(y_train))
        model = cls(booster=clf.get_booster(), features=list(features), meta={"params": p})
        margin = model.margin(X_cal).reshape(-1, 1)
        platt = LogisticRegression(C=1e6).fit(margin, np.asarray(y_cal))
        model.a, model.b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        return model

    # -- scoring ----------------------------------------------------------------------------
    def aligned(self, X) -> np.ndarray:
        """``X`` with this model's columns: as is if it has them, else picked by name from rows built
        with today's ``MODEL_FEATURES`` (NaN for a feature the inputs no longer have), so a model
        trained before the inputs changed keeps scoring."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 2 and X.shape[1] == len(self.features):
            return X
        from churn.model.inputs import MODEL_FEATURES

        if X.ndim != 2 or X.shape[1] != len(MODEL_FEATURES):
            raise ValueError(f"inputs have {X.shape[-1]} columns; the model has {len(self.features)} features")
        index = {name: i for i, name in enumerate(MODEL_FEATURES)}
        out = np.full((X.shape[0], len(self.features)), np.nan, dtype=np.float32)
        for j, name in enumerate(self.features):
            if name in index:
                out[:, j] = X[:, index[name]]
        return out

    def _dmatrix(self, X):
        import xgboost as xgb

        return xgb.DMatrix(self.aligned(X), feature_names=self.features, missing=np.nan)

    def margin(self, X) -> np.ndarray:
        # in-place prediction: no DMatrix built per call (that cost ~10 % of the scorer's time)
        return self.booster.inplace_predict(self.aligned(X), predict_type="margin", missing=np.nan)

    def predict(self, X) -> np.ndarray:
        """Calibrated churn probability of each row."""
        return _sigmoid(self.a * self.margin(X) + self.b)

    def contributions(self, X) -> np.ndarray:
        """Each feature's contribution to each row's calibrated log-odds (last column: the base, so a
        row sums to the log-odds)."""
        out = self.a * self.booster.predict(self._dmatrix(X), pred_contribs=True)
        out[:, -1] += self.b
        return out

    def reasons(self, X, top: int = 3) -> list[list[dict]]:
        """Per row, the ``top`` features pushing the risk up most, largest first, in plain words."""
        from churn.model.inputs import describe, describe_missing

        X = self.aligned(X)
        contrib = self.contributions(X)[:, :-1]
        out = []
        for row, c in zip(X, contrib):
            missing = np.isnan(row)
            # largest first; ties keep feature order, and what the model made of absent features
            # (one reason, not dozens) comes after present features of equal weight
            ranked = sorted(((round(float(c[i]), 4), int(i)) for i in np.flatnonzero(~missing)), key=lambda t: -t[0])
            candidates = ranked[:top]
            if missing.any():
                candidates.append((round(float(c[missing].sum()), 4), None))
                candidates.sort(key=lambda t: -t[0])
            out.append([
                {"feature": self.features[i], "contribution": value, "text": describe(self.features[i], float(row[i]))}
                if i is not None else
                {"feature": "missing_features", "contribution": value,
                 "text": describe_missing([f for f, m in zip(self.features, missing) if m])}
                for value, i in candidates[:top] if value > 0])
        return out

    # -- storage ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"features": self.features, "a": self.a, "b": self.b, "meta": self.meta,
               "booster": bytes(self.booster.save_raw("json")).decode()}
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TreeModel":
        import xgboost as xgb

        doc = json.loads(data)
        booster = xgb.Booster()
        booster.load_model(bytearray(doc["booster"].encode()))
        booster.set_param({"nthread": 1})
        return cls(booster=booster, features=doc["features"], a=doc["a"], b=doc["b"], meta=doc.get("meta", {}))
