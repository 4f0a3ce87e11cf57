"""Tree models: gradient-boosted trees or a random forest, with Platt calibration and per-feature reasons.

``TreeModel.fit`` trains XGBoost (boosting, or its random-forest mode) on earlier rows and calibrates on later ones
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
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from churn.model.explain import align, platt, reasons, sigmoid

DEFAULT_PARAMS = {
    "n_estimators": 300,
    "max_depth": 4,
    "learning_rate": 0.05,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "min_child_weight": 5,
    "reg_lambda": 1.0,
}
#: The random forest's defaults (``XGBRFClassifier``: ``n_estimators`` parallel trees in one round).
RANDOM_FOREST_PARAMS = {
    "n_estimators": 200,
    "max_depth": 8,
    "subsample": 0.7,
    "colsample_bynode": 0.5,
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


#: ``XGBoosterPredictFromDense``'s arguments for margins over every tree, NaN as missing (what
#: ``Booster.inplace_predict(X, predict_type="margin", missing=np.nan)`` passes)
_MARGIN_ARGS = json.dumps({"type": 1, "training": False, "iteration_begin": 0, "iteration_end": 0,
                           "missing": float("nan"), "strict_shape": False, "cache_id": 0}).encode()
#: ``XGBoosterPredictFromDMatrix``'s arguments for exact per-feature contributions over every tree (what
#: ``Booster.predict(d, pred_contribs=True)`` passes), and ``XGDMatrixCreateFromDense``'s for its
#: DMatrix: NaN as missing, one thread (with its default, every core, a DMatrix of a few rows cost 6-12 ms
#: in OpenMP's start-up on two busy cores, against 0.1 ms)
_CONTRIBUTION_ARGS = json.dumps({"type": 2, "training": False, "iteration_begin": 0, "iteration_end": 0,
                                 "strict_shape": False}).encode()
_DMATRIX_ARGS = json.dumps({"missing": float("nan"), "nthread": 1, "data_split_mode": 0}).encode()


def _dense_interface(X: np.ndarray) -> bytes:
    """The array interface XGBoost's C API reads a C-contiguous float32 matrix through."""
    return b'{"data": [%d, true], "shape": [%d, %d], "typestr": "<f4", "version": 3, "strides": null}' % (
        X.ctypes.data, X.shape[0], X.shape[1])


def _copied(out, shape, dims, expected: tuple[int, ...]) -> np.ndarray | None:
    """XGBoost's output buffer (reused on its next call) copied out if its shape is ``expected``; else None.
    Copied as bytes: ``np.ctypeslib.as_array`` casts the pointer, and each cast leaves a reference cycle
    for the garbage collector."""
    import ctypes

    if dims.value != len(expected) or any(shape[i] != n for i, n in enumerate(expected)):
        return None
    return np.frombuffer(ctypes.string_at(out, 4 * math.prod(expected)), dtype=np.float32).reshape(expected).copy()


def dense_margin(booster, X: np.ndarray) -> np.ndarray:
    """``booster.inplace_predict(X, predict_type="margin", missing=np.nan)`` for a 2-D float32 ``X``, by
    XGBoost's C API directly. The Python wrapper's checks and conversions cost ~200-300 µs a call, about as
    much as predicting 25 rows, and a live scoring batch holds tens of CDRs; and each of its calls leaves
    ~27 objects in reference cycles (a class made per call for its output) to the garbage collector, this
    one none.

    >>> import xgboost as xgb
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(50, 4)).astype(np.float32); X[::7, 2] = np.nan
    >>> b = xgb.train({"max_depth": 3}, xgb.DMatrix(X, label=(X[:, 0] > 0)), num_boost_round=5)
    >>> bool(np.array_equal(dense_margin(b, X), b.inplace_predict(X, predict_type="margin", missing=np.nan)))
    True
    """
    import ctypes

    from xgboost.core import _LIB, _check_call, c_bst_ulong

    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim == 2 and X.shape[0]:
        shape, dims, out = ctypes.POINTER(c_bst_ulong)(), c_bst_ulong(), ctypes.POINTER(ctypes.c_float)()
        _check_call(_LIB.XGBoosterPredictFromDense(booster.handle, _dense_interface(X), _MARGIN_ARGS,
                                                   ctypes.c_void_p(), ctypes.byref(shape), ctypes.byref(dims),
                                                   ctypes.byref(out)))
        margins = _copied(out, shape, dims, (X.shape[0],))
        if margins is not None:
            return margins
    # no rows, or not one margin per row (a multi-output model): as the wrapper answers
    return booster.inplace_predict(X, predict_type="margin", missing=np.nan)


def dense_contributions(booster, X: np.ndarray) -> np.ndarray:
    """``booster.predict(xgb.DMatrix(X, missing=np.nan), pred_contribs=True)`` for a 2-D float32 ``X`` (rows
    by features plus the base column), by XGBoost's C API directly, as ``dense_margin``: without the
    wrapper's per-call classes, which the garbage collector must find in cycles and free.

    >>> import xgboost as xgb
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(50, 4)).astype(np.float32); X[::7, 2] = np.nan
    >>> b = xgb.train({"max_depth": 3}, xgb.DMatrix(X, label=(X[:, 0] > 0)), num_boost_round=5)
    >>> own = b.predict(xgb.DMatrix(X, missing=np.nan), pred_contribs=True)
    >>> bool(np.array_equal(dense_contributions(b, X), own)), own.shape
    (True, (50, 5))
    """
    import ctypes

    from xgboost.core import _LIB, _check_call, c_bst_ulong

    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim == 2 and X.shape[0]:
        dmatrix = ctypes.c_void_p()
        _check_call(_LIB.XGDMatrixCreateFromDense(_dense_interface(X), _DMATRIX_ARGS, ctypes.byref(dmatrix)))
        try:
            shape, dims, out = ctypes.POINTER(c_bst_ulong)(), c_bst_ulong(), ctypes.POINTER(ctypes.c_float)()
            _check_call(_LIB.XGBoosterPredictFromDMatrix(booster.handle, dmatrix, _CONTRIBUTION_ARGS,
                                                         ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(out)))
            contributions = _copied(out, shape, dims, (X.shape[0], X.shape[1] + 1))
        finally:
            _check_call(_LIB.XGDMatrixFree(dmatrix))
        if contributions is not None:
            return contributions
    # no rows, or not one row of contributions per row (a multi-output model): as the wrapper answers
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(X, missing=np.nan, nthread=1), pred_contribs=True, validate_features=False)


@dataclass
class TreeModel:
    booster: object  # xgboost.Booster
    features: list[str]
    a: float = 1.0  # Platt scale
    b: float = 0.0  # Platt offset
    meta: dict = field(default_factory=dict)

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, X, y, features: list[str], params: dict | None = None, seed: int = 0,
              family: str = "xgboost") -> "TreeModel":
        """Trees on ``(X, y)``, not calibrated yet (``calibrate``): gradient boosting (``xgboost``) or a
        random forest (``random_forest``: XGBoost's random-forest mode, bagged trees each split on a
        random subset of features, one round, no boosting), both served and explained by the same
        ``Booster``."""
        import xgboost as xgb

        if family == "xgboost":
            p = {**DEFAULT_PARAMS, **(params or {})}
            clf = xgb.XGBClassifier(**p, tree_method="hist", random_state=seed, n_jobs=2, eval_metric="auc")
        elif family == "random_forest":
            p = {**RANDOM_FOREST_PARAMS, **(params or {})}
            clf = xgb.XGBRFClassifier(**p, tree_method="hist", random_state=seed, n_jobs=2)
        else:
            raise ValueError(f"not a tree family: {family!r}")
        clf.fit(np.asarray(X, dtype=np.float32), np.asarray(y))
        return cls(booster=clf.get_booster(), features=list(features), meta={"params": p, "family": family})

    def calibrate(self, X_cal, y_cal) -> "TreeModel":
        """Platt scaling on later rows than the trees saw."""
        self.a, self.b = platt(self.margin(X_cal), y_cal)
        return self

    @classmethod
    def fit(cls, X_train, y_train, X_cal, y_cal, features: list[str], params: dict | None = None,
            seed: int = 0, family: str = "xgboost") -> "TreeModel":
        """Fit the trees on ``X_train`` and the calibration on ``X_cal`` (later rows, never seen by the trees)."""
        return cls.train(X_train, y_train, features, params, seed, family).calibrate(X_cal, y_cal)

    # -- scoring ----------------------------------------------------------------------------
    def aligned(self, X) -> np.ndarray:
        """``X`` with this model's columns (``churn.model.explain.align``)."""
        return align(X, self.features)

    def margin(self, X) -> np.ndarray:
        # in-place prediction: no DMatrix built per call (that cost ~10 % of the scorer's time)
        return dense_margin(self.booster, self.aligned(X))

    def predict(self, X) -> np.ndarray:
        """Calibrated churn probability of each row."""
        return sigmoid(self.a * self.margin(X) + self.b)

    def contributions(self, X) -> np.ndarray:
        """Each feature's contribution to each row's calibrated log-odds (last column: the base, so a
        row sums to the log-odds)."""
        out = self.a * dense_contributions(self.booster, self.aligned(X))
        out[:, -1] += self.b
        return out

    def reasons(self, X, top: int = 3) -> list[list[dict]]:
        """Per row, the ``top`` features pushing the risk up most, largest first, in plain words."""
        X = self.aligned(X)
        return reasons(X, self.contributions(X), self.features, top)

    # -- storage ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"features": self.features, "a": self.a, "b": self.b, "meta": self.meta,
               "booster": bytes(self.booster.save_raw("json")).decode()}
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TreeModel":
        return cls.from_doc(json.loads(data))

    @classmethod
    def from_doc(cls, doc: dict) -> "TreeModel":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(doc["booster"].encode()))
        booster.set_param({"nthread": 1})
        return cls(booster=booster, features=doc["features"], a=doc["a"], b=doc["b"], meta=doc.get("meta", {}))
