"""Drift: how far the live model inputs and risks have moved from the champion's training data.

The measure is the population stability index of each feature (and of the risk)::

    PSI = sum over bins of (live share - training share) * ln(live share / training share)

with the bins fixed at training time: the deciles of the training values (fewer where values
repeat, e.g. counts that are mostly zero) plus one bin for missing values. Conventional reading:
below 0.1 stable, 0.1 to 0.25 a moderate shift, above ``PSI_ALERT`` = 0.25 a significant one
(the ``ChurnFeatureDrift`` alert). The live side is a sliding window of the last scored events.

>>> rng = np.random.default_rng(0)
>>> train = rng.normal(0.0, 1.0, (5000, 2))
>>> baseline = DriftBaseline.fit(train, ["steady", "moving"], risk=rng.random(5000))
>>> monitor = DriftMonitor(baseline, window=4000)
>>> live = np.column_stack([rng.normal(0.0, 1.0, 4000), rng.normal(1.0, 1.0, 4000)])
>>> monitor.observe(live, rng.random(4000))
>>> psi = monitor.psi()
>>> psi["steady"] < 0.1 < PSI_ALERT < psi["moving"], psi["risk"] < 0.1
(True, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

PSI_ALERT = 0.25
RISK = "risk"  # the name under which the score's own drift is reported
_EPS = 1e-4  # share given to empty bins, so the logarithm stays finite


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two histograms over the same bins (counts or shares).

    >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
    >>> round(psi(np.array([50, 50]), np.array([90, 10])), 3)
    0.879
    """
    e = np.maximum(expected / max(expected.sum(), 1), _EPS)
    a = np.maximum(actual / max(actual.sum(), 1), _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftBaseline:
    """Per feature (and the risk): inner bin edges and the training counts per bin (last bin: missing)."""

    features: list[str]
    edges: list[np.ndarray]
    counts: list[np.ndarray]

    @classmethod
    def fit(cls, X: np.ndarray, features: list[str], risk: np.ndarray, bins: int = 10) -> "DriftBaseline":
        columns = [*np.asarray(X, dtype=float).T, np.asarray(risk, dtype=float)]
        names = [*features, RISK]
        edges = [_edges(col, bins) for col in columns]
        counts = [np.bincount(_bin(col, e), minlength=len(e) + 2) for col, e in zip(columns, edges)]
        return cls(names, edges, counts)

    def to_json(self) -> str:
        return json.dumps({"features": self.features, "edges": [e.tolist() for e in self.edges],
                           "counts": [c.tolist() for c in self.counts]})

    @classmethod
    def from_json(cls, text: str) -> "DriftBaseline":
        d = json.loads(text)
        return cls(d["features"], [np.array(e, dtype=float) for e in d["edges"]],
                   [np.array(c, dtype=np.int64) for c in d["counts"]])


class DriftMonitor:
    """The last ``window`` scored events, binned as the baseline bins them; PSI per feature on demand."""

    def __init__(self, baseline: DriftBaseline, window: int = 20_000):
        self.baseline = baseline
        self.window = window
        self._bins = np.zeros((window, len(baseline.features)), dtype=np.int16)
        self._next = 0
        self._filled = 0

    def observe(self, X: np.ndarray, risk: np.ndarray) -> None:
        """Add scored events: ``X`` rows in the baseline's feature order (without the risk)."""
        columns = [*np.asarray(X, dtype=float).T, np.asarray(risk, dtype=float)]
        binned = np.column_stack([_bin(col, e) for col, e in zip(columns, self.baseline.edges)])[-self.window:]
        at = (self._next + np.arange(len(binned))) % self.window
        self._bins[at] = binned
        self._next = (self._next + len(binned)) % self.window
        self._filled = min(self.window, self._filled + len(binned))

    @property
    def observed(self) -> int:
        return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the values present on both sides (features with no live values are
        left out). Missing values are not drift of the distribution: training rows include customers
        without streaming features yet, live scores rarely do; the degraded and freshness alerts
        watch missing features."""
        live = self._bins[: self._filled]
        out = {}
        for j, (name, base) in enumerate(zip(self.baseline.features, self.baseline.counts)):
            now = np.bincount(live[:, j], minlength=len(base))[:-1]
            if now.sum() and base[:-1].sum():
                out[name] = psi(base[:-1], now)
        return out


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    present = values[~np.isnan(values)]
    if not len(present):
        return np.array([])
    return np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per value: 0..len(edges) by the edges, len(edges)+1 for missing."""
    idx = np.searchsorted(edges, values, side="right")
    return np.where(np.isnan(values), len(edges) + 1, idx).astype(np.int16)
