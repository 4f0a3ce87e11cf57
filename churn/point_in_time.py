"""Customers' activity state exactly at given times, from Silver's events: what the scorer would have served.

A training row observed at time ``T`` must see the customer's features as the scorer computes them at
``T``: the decayed sums (``churn.features``) of every counted event with ``event_time <= T``, read at
``T``. The stream's ``feature_history`` holds one state per micro-batch, so its newest state at or
before ``T`` can be days older than ``T``, and how much older depends on how the stream batched the
history (training/serving skew). Here the state is computed from Silver itself, for each (customer,
time) query separately, with ``churn.features.partial_sums_arrays`` (the numpy rendering the stream's
and the scorer's features agree with): the same numbers as ``partial_sums_numpy(cols, at_s={customer:
T})``, whatever the micro-batches were.

One pass: Silver's ``INPUT_COLUMNS`` are read once (only the queried customers, only events up to the
latest query time), events and queries are sorted together by (customer, time), which gives each query
the run of its customer's events at or before its time; those runs are laid out one after another
(a customer with several queries has its events repeated, once per query that sees them) and summed
per query, in chunks of at most ``chunk_rows`` repeated events to bound memory.

>>> from churn.features import partial_sums_numpy
>>> cols = {"customer_id": np.array(["a", "a", "b", "a"], dtype=object),
...         "event_time": np.array([10.0, 20.0, 15.0, 30.0]),
...         "record_type": np.array(["voice", "sms", "voice", "voice"], dtype=object),
...         "counterparty": np.array(["on_net", "off_net", "customer_care", "on_net"], dtype=object),
...         "dropped": np.zeros(4, bool), "roaming": np.zeros(4, bool), "duration_s": np.full(4, 60.0),
...         "data_bytes": np.full(4, np.nan), "charge": np.ones(4)}
>>> got = states_at(cols, np.array(["a", "a", "b", "c"], dtype=object), np.array([20.0, 5.0, 99.0, 1.0]),
...                 chunk_rows=2)
>>> got.ref_time.tolist(), got.events.tolist()
([20.0, nan, 15.0, nan], [2, 0, 1, 0])
>>> want = partial_sums_numpy(cols, at_s={"a": 20.0})["a"]
>>> bool(np.allclose(got.sums[0], [want[n] for n in SUM_FEATURES], rtol=1e-12)), got.active_days[0]
(True, [0])
>>> [s is None for s in got.states()]
[False, True, False, True]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churn.features import INPUT_COLUMNS, SUM_FEATURES, partial_sums_arrays

#: At most this many (query, event) pairs are summed at once (about 100 bytes each while summed).
CHUNK_ROWS = 1_000_000


@dataclass
class States:
    """One activity state per query, aligned with the queries: ``ref_time`` (the newest event at or
    before the query's time; NaN where there is none), ``sums`` (``SUM_FEATURES`` order, at ``ref_time``)
    and ``active_days``; ``events`` counts the events each state holds."""

    ref_time: np.ndarray
    sums: np.ndarray
    active_days: list
    events: np.ndarray

    @property
    def has_activity(self) -> np.ndarray:
        return self.events > 0

    def states(self) -> list[dict | None]:
        """The states as ``churn.model.inputs.matrix`` takes them (None where there is no event)."""
        return [{"ref_time": float(r), "active_days": d, "sums": s} if n else None
                for r, d, s, n in zip(self.ref_time, self.active_days, self.sums.tolist(), self.events)]


def read_silver(path: str, customers=None, until_s: float | None = None,
                settings=None) -> dict[str, np.ndarray] | None:
    """Silver's ``INPUT_COLUMNS`` as arrays (``event_time`` in epoch seconds, as the stream's
    ``partial_sums_by_executors`` reads them), only of ``customers`` and up to ``until_s`` if given;
    None if there is no Silver table yet. Text columns come as object arrays sharing one string
    object per distinct value (a few million rows of ids cost pointers, not strings). ``settings`` say
    how to reach a table on S3."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake.exceptions import TableNotFoundError

    from churn import storage
    from churn.config import Settings

    try:
        table = storage.open_delta(settings or Settings(), str(path))
    except TableNotFoundError:
        return None
    dataset = table.to_pyarrow_dataset()
    where = None
    if customers is not None:
        where = pc.field("customer_id").isin(pa.array(sorted({str(c) for c in customers}), pa.string()))
    if until_s is not None:
        limit = pc.field("event_time") <= pa.scalar(int(np.floor(until_s * 1e6)), pa.timestamp("us", tz="UTC"))
        where = limit if where is None else where & limit
    data = dataset.to_table(columns=INPUT_COLUMNS, filter=where)
    cols = {}
    for name in INPUT_COLUMNS:
        column = data.column(name)
        if name == "event_time":
            cols[name] = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy() / 1e6
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            cols[name] = _shared_strings(column)
        else:
            cols[name] = column.to_numpy(zero_copy_only=False)
    return cols


def _shared_strings(column) -> np.ndarray:
    """A text column as an object array (None for nulls) holding one string object per distinct value."""
    import pyarrow as pa

    encoded = column.dictionary_encode().combine_chunks() if column.num_chunks else pa.array([], pa.string())
    if not isinstance(encoded, pa.DictionaryArray):  # an empty column
        return np.empty(0, dtype=object)
    values = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
    return values[encoded.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)]


def states_at(cols: dict[str, np.ndarray] | None, customer_ids, at_s, chunk_rows: int = CHUNK_ROWS) -> States:
    """Each query's state: query ``i`` is customer ``customer_ids[i]`` at time ``at_s[i]`` (epoch s), and its
    state holds exactly that customer's events in ``cols`` (Silver's columns) with ``event_time <= at_s[i]``.
    Several queries of one customer each get their own cutoff."""
    import pandas as pd

    at = np.asarray(at_s, dtype=float)
    n = len(at)
    out = States(ref_time=np.full(n, np.nan), sums=np.zeros((n, len(SUM_FEATURES))),
                 active_days=[[] for _ in range(n)], events=np.zeros(n, dtype=np.int64))
    if n == 0 or cols is None or len(cols["event_time"]) == 0:
        return out
    query_code, customers = pd.factorize(np.asarray(customer_ids, dtype=object))
    event_code = pd.Index(customers).get_indexer(np.asarray(cols["customer_id"], dtype=object))
    event_t = np.asarray(cols["event_time"], dtype=float)
    relevant = np.flatnonzero(event_code >= 0)
    if relevant.size == 0:
        return out
    # events of queried customers by (customer, time); queries after the events of equal time (<= counts)
    order = relevant[np.lexsort((event_t[relevant], event_code[relevant]))]
    code = np.concatenate([event_code[order], query_code])
    t = np.concatenate([event_t[order], at])
    is_query = np.concatenate([np.zeros(order.size, bool), np.ones(n, bool)])
    merged = np.lexsort((is_query, t, code))
    events_before = np.cumsum(~is_query[merged])  # events at or before each merged position
    query_pos = np.empty(n, dtype=np.int64)
    query_pos[merged[is_query[merged]] - order.size] = np.flatnonzero(is_query[merged])
    start = np.searchsorted(event_code[order], query_code, side="left")  # the customer's first event in order
    count = events_before[query_pos] - start
    out.events = count

    # queries in chunks of at most chunk_rows repeated events (a larger single query is a chunk of its own)
    asked = np.flatnonzero(count > 0)
    ends = np.cumsum(count[asked])
    first = 0
    while first < asked.size:
        last = max(int(np.searchsorted(ends, (ends[first - 1] if first else 0) + chunk_rows, side="right")),
                   first + 1)
        _sum_chunk(cols, order, asked[first:last], start, count, out)
        first = last
    return out


def _sum_chunk(cols, order, queries, start, count, out: States) -> None:
    """``partial_sums_arrays`` over the events each of ``queries`` sees, keyed by query."""
    lengths = count[queries]
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = order[np.repeat(start[queries], lengths) + (np.arange(total) - offsets)]
    chunk = {name: np.asarray(cols[name])[rows] for name in INPUT_COLUMNS if name != "customer_id"}
    chunk["customer_id"] = np.repeat(np.arange(queries.size), lengths).astype(str)  # the query, as a key
    ids, ref, sums, days = partial_sums_arrays(chunk)
    which = queries[ids.astype(np.int64)]
    out.ref_time[which] = ref
    out.sums[which] = sums
    for i, d in zip(which, days):
        out.active_days[i] = d
