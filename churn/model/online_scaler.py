"""Running standardisation for the online challenger, as river's ``preprocessing.StandardScaler`` does it.

River's scaler lives in ``river.preprocessing``, whose package imports scikit-learn, pandas and
pyarrow (about 90 MB resident in the scoring worker, for one class). This is the same
transformer (river's ``base.Transformer`` protocol, Welford's running mean and population
variance per feature, 0 where a feature has no variance yet), so the challenger stays a river
pipeline: ``StandardScaler() | river.linear_model.LogisticRegression(...)``. A test runs river's own
scaler beside it on the same stream.

>>> scaler = StandardScaler()
>>> for x in ({"a": 1.0}, {"a": 3.0}, {"a": 5.0, "b": 2.0}):
...     scaler.learn_one(x)
>>> scaler.means["a"], round(scaler.vars["a"], 6)
(3.0, 2.666667)
>>> {k: round(v, 6) for k, v in scaler.transform_one({"a": 5.0, "b": 2.0}).items()}
{'a': 1.224745, 'b': 0.0}
"""

from __future__ import annotations

import collections

from river import base


class StandardScaler(base.Transformer):
    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.means: collections.defaultdict = collections.defaultdict(float)
        self.vars: collections.defaultdict = collections.defaultdict(float)

    def learn_one(self, x: dict) -> None:
        counts, means, vars_ = self.counts, self.means, self.vars
        for i, xi in x.items():
            counts[i] += 1
            old_mean = means[i]
            means[i] += (xi - old_mean) / counts[i]
            vars_[i] += ((xi - old_mean) * (xi - means[i]) - vars_[i]) / counts[i]

    def transform_one(self, x: dict) -> dict:
        means, vars_ = self.means, self.vars
        return {i: (xi - means[i]) / vars_[i] ** 0.5 if vars_[i] else 0.0 for i, xi in x.items()}
