"""Drift: how far the live model inputs and risks have moved from the champion's training data.

The measure is the population stability index of each feature (and of the risk)::

    PSI = sum over bins of (live share - training share) * ln(live share / training share)

with the bins fixed at training time: the deciles of the training values (fewer where values
repeat, e.g. counts that are mostly zero) plus one bin for missing values. Conventional reading:
below 0.1 stable, 0.1 to 0.25 a moderate shift, above ``PSI_ALERT`` = 0.25 a significant one
(the ``ChurnFeatureDrift`` alert).

Both sides are sampled alike, so that a pipeline that behaves like the training data shows no drift:

- **One row per customer.** A training set has one row per customer; the live side keeps each
  customer's latest input (up to ``window`` customers), not the last events, which would weigh the
  busiest customers most.
- **Mature values only.** A decayed sum over a horizon ``H`` holds 95 % of its steady-state weight
  after ``3 H`` of history: a young pipeline's sums are small because its history is short, not
  because behaviour moved. So an activity feature is compared only where the pipeline has seen the
  customer for ``3 H`` (``observed_days``, from the state's active days), at most for the 29 days
  the state remembers: the 30-day features and the risk from 29 days (63 % of a 30-day sum's
  weight; up to about 90 days after a fresh install their PSI can still reflect the short history).
  Profile features are always compared.
- **No decayed tails.** A sum below ``NEGLIGIBLE`` (a twentieth of one event, one MB, one minute)
  counts as 0, and so does a ratio whose numerator is such a sum: with a long history a rare event's sum is rarely exactly 0 (its last occurrence,
  days ago, still weighs e^-5), with a short one it is; the two readings mean the same.

>>> rng = np.random.default_rng(0)
>>> train = rng.normal(0.0, 1.0, (5000, 2))
>>> baseline = DriftBaseline.fit(train, ["steady", "moving"], risk=rng.random(5000))
>>> monitor = DriftMonitor(baseline, window=4000)
>>> live = np.column_stack([rng.normal(0.0, 1.0, 4000), rng.normal(1.0, 1.0, 4000)])
>>> monitor.observe([f"c{i}" for i in range(4000)], live, rng.random(4000))
>>> psi = monitor.psi()
>>> psi["steady"] < 0.1 < PSI_ALERT < psi["moving"], psi["risk"] < 0.1
(True, True)
>>> monitor.observe(["c1"], live[:1] * 100, [0.5])  # a customer's newer input replaces its older one
>>> monitor.observed
4000
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from churn.features import ACTIVE_DAYS_WINDOW, DAY, HORIZONS, RATIOS, SUM_FEATURES

PSI_ALERT = 0.25
RISK = "risk"  # the name under which the score's own drift is reported
_EPS = 1e-4  # share given to empty bins, so the logarithm stays finite
NEGLIGIBLE = 0.05
_SUMS = frozenset(SUM_FEATURES)
#: Days the state remembers: its active days reach back ``ACTIVE_DAYS_WINDOW`` UTC days, so a customer
#: seen on the oldest of them has been observed for at least this long.
FULL_HISTORY_DAYS = ACTIVE_DAYS_WINDOW - 1


def observed_days(states, at_s) -> np.ndarray:
    """How long the pipeline has seen each customer at ``at_s``, in days, as far back as the state
    remembers: from the start of its oldest active day (NaN without a state).

    >>> observed_days([{"active_days": [100, 102]}, None], [102.5 * DAY, 0.0]).tolist()
    [2.5, nan]
    """
    at = np.broadcast_to(np.asarray(at_s, dtype=float), (len(states),))
    first = np.array([min(s["active_days"]) if s and s.get("active_days") else np.nan for s in states], dtype=float)
    return at / DAY - first


def maturity_days(feature: str) -> float:
    """How long a customer must have been observed before ``feature`` is compared (0 for the profile).

    >>> maturity_days("data_mb_1d"), maturity_days("data_mb_7d"), maturity_days("tenure_months")
    (3.0, 21.0, 0.0)
    >>> maturity_days("events_trend_7d_30d"), maturity_days("risk")
    (29.0, 29.0)
    """
    if feature in (RISK, "active_days_30d", "days_since_last_event"):
        return float(FULL_HISTORY_DAYS)
    horizon = feature.rsplit("_", 1)[-1]
    if horizon in HORIZONS:
        return min(3.0 * HORIZONS[horizon] / DAY, float(FULL_HISTORY_DAYS))
    return 0.0


def comparable(columns: list[np.ndarray], names: list[str], observed: np.ndarray | None) -> list[np.ndarray]:
    """``columns`` as the PSI compares them: sums below ``NEGLIGIBLE`` as 0, and every value not yet
    mature for its row's ``observed`` days NaN (left out like missing values). ``observed`` None:
    every row fully observed."""
    observed = None if observed is None else np.nan_to_num(np.asarray(observed, dtype=float), nan=0.0)
    by_name = dict(zip(names, columns))
    out = []
    for col, name in zip(columns, names):
        if name in _SUMS:
            col = np.where(col < NEGLIGIBLE, 0.0, col)
        elif name in RATIOS and RATIOS[name][0] in by_name:
            col = np.where(by_name[RATIOS[name][0]] < NEGLIGIBLE, 0.0, col)
        need = maturity_days(name)
        out.append(col if observed is None or need == 0.0 else np.where(observed >= need, col, np.nan))
    return out


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
    def fit(cls, X: np.ndarray, features: list[str], risk: np.ndarray, observed: np.ndarray | None = None,
            bins: int = 10) -> "DriftBaseline":
        """From training rows ``X`` (one per customer), their risks and ``observed_days`` (None: all mature)."""
        names = [*features, RISK]
        columns = comparable([*np.asarray(X, dtype=float).T, np.asarray(risk, dtype=float)], names, observed)
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
    """The latest scored input of up to ``window`` customers, binned as the baseline bins them; PSI per
    feature on demand. Once full, a new customer takes the place of the one that came in first.

    ``observe`` only queues a batch: the rows are binned together when ``observed`` or ``psi`` is next
    read (every few seconds), so a live worker's many small batches do not each pay the binning's
    fixed cost. At most ``queue_rows`` rows wait; past that they are binned at once."""

    def __init__(self, baseline: DriftBaseline, window: int = 20_000, queue_rows: int = 50_000):
        self.baseline = baseline
        self.window = window
        self.queue_rows = queue_rows
        self._bins = np.zeros((window, len(baseline.features)), dtype=np.int16)
        self._slot: dict[str, int] = {}  # customer -> row of _bins
        self._holder: list[str | None] = [None] * window  # row -> customer
        self._next = 0  # the row a new customer takes
        self._filled = 0
        self._queued: list[tuple] = []  # (customers, X, risk, observed) not binned yet, oldest first
        self._queued_rows = 0

    def observe(self, customers, X: np.ndarray, risk, observed: np.ndarray | None = None) -> None:
        """Add scored inputs: per row its customer, ``X`` in the baseline's feature order (without the
        risk), the risk and ``observed_days`` (None: all mature). A customer's later row wins."""
        self._queued.append((customers, X, risk, observed))
        self._queued_rows += len(customers)
        if self._queued_rows >= self.queue_rows:
            self._bin_queued()

    def _bin_queued(self) -> None:
        queued, self._queued, self._queued_rows = self._queued, [], 0
        if not queued:
            return
        customers = [c for batch in queued for c in batch[0]]
        X = np.concatenate([np.asarray(b[1], dtype=float).reshape(len(b[0]), -1) for b in queued])
        risk = np.concatenate([np.asarray(b[2], dtype=float) for b in queued])
        # a batch given as all mature (None) is observed forever: every feature is compared
        observed = np.concatenate([np.full(len(b[0]), np.inf) if b[3] is None else np.asarray(b[3], dtype=float)
                                   for b in queued])
        self._bin(customers, X, risk, observed)

    def _bin(self, customers, X, risk, observed) -> None:
        columns = comparable([*np.asarray(X, dtype=float).T, np.asarray(risk, dtype=float)],
                              self.baseline.features, observed)
        binned = np.column_stack([_bin(col, e) for col, e in zip(columns, self.baseline.edges)])
        rows = np.empty(len(binned), dtype=np.int64)
        for i, customer in enumerate(customers):
            row = self._slot.get(customer)
            if row is None:
                row = self._next
                old = self._holder[row]
                if old is not None:
                    del self._slot[old]
                self._holder[row], self._slot[customer] = customer, row
                self._next = (row + 1) % self.window
                self._filled = min(self.window, self._filled + 1)
            rows[i] = row
        self._bins[rows] = binned  # numpy assigns in order: a customer's last row stays

    @property
    def observed(self) -> int:
        """Customers in the window."""
        self._bin_queued()
        return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the values present (and mature) on both sides; features with no such
        live values are left out. Missing values are not drift of the distribution: training rows
        include customers without streaming features yet, live scores rarely do; the degraded and
        freshness alerts watch missing features."""
        self._bin_queued()
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
