"""Every customer's activity state, held by the streaming job between micro-batches.

A customer's state is its decayed sums at its newest event time (``churn.features``).
The job keeps all of them in memory, indexed by customer, and merges each micro-batch's
partial sums into them with ``merge_sums``: no table scan or MERGE per batch.

The durable copy is the ``feature_history`` Delta table (also Feast's offline source):
each batch appends the new state of the customers it touched, with its batch id and the
writer's id. At start the state is the newest history row of each customer and
``applied_batch`` the newest batch this writer recorded, so a batch replayed after a crash,
whose history was already written, is not merged twice (its rows are pushed again as they are).

>>> import pandas as pd
>>> state = FeatureState()
>>> one = {n: [1.0] for n in SUM_FEATURES}
>>> rows = state.merged(pd.DataFrame({"customer_id": ["c1"], "ref_time": [100.0], **one,
...                                   "active_days": [[0]]}))
>>> state.apply(rows, batch_id=0)
>>> rows = state.merged(pd.DataFrame({"customer_id": ["c1"], "ref_time": [100.0], **one,
...                                   "active_days": [[0]]}))
>>> float(rows["calls_1d"][0]), list(rows["active_days"][0]), len(state)
(2.0, [0], 1)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from churn.features import SUM_FEATURES, merge_active_days, merge_sums

#: Columns of ``feature_history``; Feast reads ``feature_time`` and the view's fields.
HISTORY_SCHEMA = pa.schema(
    [("customer_id", pa.string()), ("ref_time", pa.float64()), *((n, pa.float64()) for n in SUM_FEATURES),
     ("active_days", pa.list_(pa.int32())), ("feature_time", pa.timestamp("us", tz="UTC")),
     ("sums", pa.list_(pa.float64())), ("covered_offsets", pa.list_(pa.int64())), ("batch_id", pa.int64()),
     ("writer_id", pa.string()), ("written_at", pa.timestamp("us", tz="UTC"))])


class FeatureState:
    """Customers' sums (one row each, ``SUM_FEATURES`` order), ``ref_time`` and active days."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.ref_time = np.empty(0)
        self.sums = np.empty((0, len(SUM_FEATURES)))
        self.active_days: list[list[int]] = []
        self.applied_batch = -1

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def from_history(cls, frame: pd.DataFrame, applied_batch: int) -> "FeatureState":
        """The state from the newest history row of each customer (one row per customer)."""
        state = cls()
        if len(frame):
            state.apply(frame, applied_batch)
        state.applied_batch = applied_batch
        return state

    def merged(self, partial: pd.DataFrame) -> pd.DataFrame:
        """The new state of the customers in ``partial`` (a batch's ``partial_sums``, one row per
        customer), as rows ready to push and record; the state itself is unchanged until ``apply``."""
        ids = partial["customer_id"].to_numpy(dtype=object)
        at = np.array([self.index.get(c, -1) for c in ids], dtype=np.int64)
        known = at >= 0
        new_ref = partial["ref_time"].to_numpy(dtype=float)
        new_sums = partial[SUM_FEATURES].to_numpy(dtype=float)
        if len(self):  # customers seen before start from their state, new ones from zero
            safe = np.where(known, at, 0)
            old_ref = np.where(known, self.ref_time[safe], new_ref)
            old_sums = np.where(known[:, None], self.sums[safe], 0.0)
        else:
            old_ref, old_sums = new_ref, np.zeros_like(new_sums)
        ref, sums = merge_sums(old_ref, old_sums, new_ref, new_sums)
        days = [merge_active_days(self.active_days[i] if i >= 0 else (), d, r)
                for i, d, r in zip(at, partial["active_days"], ref)]
        return _frame(ids, ref, sums, days)

    def current(self, customer_ids) -> pd.DataFrame:
        """The present state of known customers, as rows like ``merged`` returns."""
        at = [self.index[c] for c in customer_ids if c in self.index]
        ids = np.array([c for c in customer_ids if c in self.index], dtype=object)
        return _frame(ids, self.ref_time[at], self.sums[at], [self.active_days[i] for i in at])

    def apply(self, rows: pd.DataFrame, batch_id: int) -> None:
        """Make ``rows`` (from ``merged``) the customers' state; ``batch_id`` is now applied."""
        ids = rows["customer_id"].tolist()
        fresh = [c for c in dict.fromkeys(ids) if c not in self.index]
        if fresh:
            start = len(self.index)
            self.index.update({c: start + i for i, c in enumerate(fresh)})
            self.ref_time = np.concatenate([self.ref_time, np.zeros(len(fresh))])
            self.sums = np.vstack([self.sums, np.zeros((len(fresh), len(SUM_FEATURES)))])
            self.active_days.extend([] for _ in fresh)
        at = np.array([self.index[c] for c in ids], dtype=np.int64)
        self.ref_time[at] = rows["ref_time"].to_numpy(dtype=float)
        self.sums[at] = rows[SUM_FEATURES].to_numpy(dtype=float)
        for i, days in zip(at, rows["active_days"]):
            self.active_days[i] = [int(d) for d in days]
        self.applied_batch = max(self.applied_batch, batch_id)


def _frame(ids, ref, sums, days) -> pd.DataFrame:
    """State rows: the Feast view's fields plus ``feature_time`` (microseconds, as Feast wants)."""
    frame = pd.DataFrame(sums, columns=SUM_FEATURES)
    frame.insert(0, "customer_id", ids)
    frame.insert(1, "ref_time", ref)
    frame["active_days"] = [[int(d) for d in day] for day in days]
    frame["feature_time"] = pd.to_datetime(np.floor(np.asarray(ref) * 1e6).astype(np.int64), unit="us", utc=True)
    frame["sums"] = np.asarray(sums).tolist()
    return frame

