"""The scorer's overlay in process: every decision's input equals the features over the customer's CDRs up to
and including the trigger, computed in one go, whatever the pushed state covers and however batches fall."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from churn.features import DAY, SUM_FEATURES, event_weights, partial_sums_numpy
from churn.simulator import Simulator
from streaming.scoring.overlay import BUFFER_CAP, EXACT, STREAM_AHEAD, ActivityOverlay

PARTITIONS = 3


def _topic(customers: int = 40, days: float = 10.0, seed: int = 3):
    """Simulated Silver columns with each CDR placed on a partition (by customer) at an offset."""
    end = 1_790_000_000.0
    cols = Simulator(seed=seed, start_s=end - days * DAY, end_s=end, customers=customers).silver_columns(6 * 3600.0)
    partition = np.array([zlib.crc32(c.encode()) % PARTITIONS for c in cols["customer_id"]])  # stable across runs
    offset = np.zeros(len(partition), dtype=np.int64)
    for p in range(PARTITIONS):
        at = np.flatnonzero(partition == p)
        offset[at] = np.arange(len(at))
    return cols, partition, offset, event_weights(cols)


def _reference(cols, partition, offset, customer: str, p: int, upto: int) -> dict | None:
    """The batch computation: the customer's state over its CDRs on ``p`` with offset <= ``upto``."""
    keep = (cols["customer_id"] == customer) & (partition == p) & (offset <= upto)
    if not keep.any():
        return None
    return partial_sums_numpy({k: v[keep] for k, v in cols.items()})[customer]


def _pushed(cols, partition, offset, covered: dict[int, int]) -> dict[str, dict]:
    """What the stream pushed: every customer's state over the CDRs below ``covered`` offsets."""
    keep = offset < np.array([covered.get(int(p), 0) for p in partition])
    states = partial_sums_numpy({k: v[keep] for k, v in cols.items()}) if keep.any() else {}
    cov = [covered.get(p, 0) for p in range(PARTITIONS)]
    return {c: {"ref_time": st["ref_time"], "sums": [st[n] for n in SUM_FEATURES], "active_days": st["active_days"],
                "covered_offsets": cov} for c, st in states.items()}


def _assert_equal(got: dict, expected: dict) -> None:
    assert got["ref_time"] == pytest.approx(expected["ref_time"], rel=1e-12)
    np.testing.assert_allclose(got["sums"], [expected[n] for n in SUM_FEATURES], rtol=1e-9, atol=1e-12)
    assert got["active_days"] == expected["active_days"]


@pytest.mark.parametrize("stream_pushes_every", [1, 3, None])  # None: the stream is stopped throughout
def test_every_decision_includes_exactly_the_customers_cdrs_up_to_its_trigger(stream_pushes_every):
    cols, partition, offset, weights = _topic()
    overlay = ActivityOverlay()
    # consume each partition in offset order, the partitions interleaved, in batches, as a worker does
    progress = offset / np.bincount(partition, minlength=PARTITIONS)[partition]
    order = np.lexsort((partition, progress))
    cuts = np.sort(np.random.default_rng(7).choice(np.arange(1, len(order)), 39, replace=False))
    batches = np.split(order, cuts)
    covered: dict[int, int] = {}
    pushed: dict[str, dict] = {}
    decisions = 0
    for b, batch in enumerate(batches):
        batch = batch[np.lexsort((offset[batch], partition[batch]))]
        for p in range(PARTITIONS):
            rows = batch[partition[batch] == p]
            overlay.admit(p, offset[rows].tolist(), cols["customer_id"][rows].tolist(),
                          [f"e{p}-{o}" for o in offset[rows]], cols["event_time"][rows].tolist(), weights[rows])
        got = overlay.inputs([(int(partition[i]), cols["customer_id"][i], int(offset[i])) for i in batch], pushed)
        for i, inp in zip(batch, got):
            expected = _reference(cols, partition, offset, cols["customer_id"][i], int(partition[i]), int(offset[i]))
            assert inp.basis == EXACT and inp.not_included == 0
            _assert_equal(inp.state, expected)
            decisions += 1
        if stream_pushes_every and b % stream_pushes_every == 0:  # the stream catches up to the batch before
            seen = np.concatenate(batches[:b]) if b else np.array([], dtype=int)
            covered = {p: int(offset[seen[partition[seen] == p]].max(initial=-1)) + 1 for p in range(PARTITIONS)}
            pushed = _pushed(cols, partition, offset, covered)
            overlay.evict(covered)
    assert decisions == len(offset)
    if stream_pushes_every:
        assert overlay.size <= len(batches[-1]) * (stream_pushes_every + 1)  # covered CDRs were released
    else:
        assert overlay.size == len(offset)


def test_a_decision_at_the_current_time_includes_every_buffered_cdr():
    cols, partition, offset, weights = _topic(customers=10, days=3)
    overlay = ActivityOverlay()
    for p in range(PARTITIONS):
        rows = np.flatnonzero(partition == p)
        overlay.admit(p, offset[rows].tolist(), cols["customer_id"][rows].tolist(), [f"e{p}-{o}" for o in offset[rows]],
                      cols["event_time"][rows].tolist(), weights[rows])
    half = {p: int((partition == p).sum()) // 2 for p in range(PARTITIONS)}
    pushed = _pushed(cols, partition, offset, half)
    customer, p = cols["customer_id"][0], int(partition[0])
    (inp,) = overlay.inputs([(p, customer, None)], pushed)
    _assert_equal(inp.state, _reference(cols, partition, offset, customer, p, 10**9))


def test_duplicates_and_late_cdrs_are_not_counted_as_the_stream_would_not():
    overlay = ActivityOverlay(allowed_lateness_s=3600.0)
    w = np.ones((4, 12))
    counted = overlay.admit(0, [0, 1, 2, 3], ["c", "c", "c", "c"], ["a", "b", "a", "d"],
                            [10_000.0, 10_010.0, 10_020.0, 10_000.0 - 3601.0], w)
    assert counted.tolist() == [True, True, False, False]  # the repeat of "a", then one older than the lateness
    (inp,) = overlay.inputs([(0, "c", 3)], {})
    assert inp.added == 2 and inp.state["ref_time"] == 10_010.0


def test_the_cap_drops_the_oldest_and_marks_decisions_that_lack_them_until_the_stream_covers_them():
    cols, partition, offset, weights = _topic(customers=20, days=4)
    p = 0
    rows = np.flatnonzero(partition == p)
    overlay = ActivityOverlay(max_events=50)
    overlay.admit(p, offset[rows].tolist(), cols["customer_id"][rows].tolist(), [f"e{o}" for o in offset[rows]],
                  cols["event_time"][rows].tolist(), weights[rows])
    assert overlay.size == 50 and overlay.dropped_total == len(rows) - 50
    last = rows[-1]
    customer = cols["customer_id"][last]
    (inp,) = overlay.inputs([(p, customer, int(offset[last]))], {})
    lost = int(((cols["customer_id"][rows] == customer) & (offset[rows] < offset[rows][-50])).sum())
    assert lost > 0 and inp.not_included == lost and inp.basis == BUFFER_CAP
    # the stream comes back and pushes everything: exact again, and the drop record is gone
    covered = {p: int(offset[last]) + 1}
    overlay.evict(covered)
    pushed = _pushed(cols, partition, offset, covered)
    (inp,) = overlay.inputs([(p, customer, None)], pushed)
    assert inp.basis == EXACT and inp.not_included == 0 and overlay.size == 0
    _assert_equal(inp.state, _reference(cols, partition, offset, customer, p, int(offset[last])))


def test_a_stream_ahead_of_the_worker_is_marked_unless_the_workers_own_last_input_is_exact():
    cols, partition, offset, weights = _topic(customers=5, days=3)
    p = int(partition[0])
    rows = np.flatnonzero((partition == p) & (cols["customer_id"] == cols["customer_id"][0]))
    customer = cols["customer_id"][0]
    ahead = _pushed(cols, partition, offset, {p: int(offset[rows[-1]]) + 1})
    overlay = ActivityOverlay()
    first, second = rows[0], rows[1]
    overlay.admit(p, [int(offset[first])], [customer], ["x1"], [cols["event_time"][first]], weights[[first]])
    (inp,) = overlay.inputs([(p, customer, int(offset[first]))], ahead)
    assert inp.basis == STREAM_AHEAD  # nothing of its own yet: the pushed state holds later CDRs
    exact = ActivityOverlay()
    exact.admit(p, [int(offset[first])], [customer], ["x1"], [cols["event_time"][first]], weights[[first]])
    exact.inputs([(p, customer, int(offset[first]))], {})
    exact.admit(p, [int(offset[second])], [customer], ["x2"], [cols["event_time"][second]], weights[[second]])
    (inp,) = exact.inputs([(p, customer, int(offset[second]))], ahead)
    assert inp.basis == EXACT
    _assert_equal(inp.state, _reference(cols, partition, offset, customer, p, int(offset[second])))


def test_a_reload_gap_marks_decisions_from_an_older_pushed_state_until_the_stream_passes_it():
    cols, partition, offset, weights = _topic(customers=5, days=3)
    p = int(partition[0])
    rows = np.flatnonzero(partition == p)
    # a customer with CDRs in the gap (after the stale pushed state, before the reloaded tail) and in the tail
    in_gap = set(cols["customer_id"][rows[1:-10]])
    last = next(r for r in rows[-10:][::-1] if cols["customer_id"][r] in in_gap)
    customer = cols["customer_id"][last]
    overlay = ActivityOverlay()
    overlay.mark_gap(p, int(offset[rows[-10]]))  # a new owner reloaded only the last 10 CDRs
    tail = rows[-10:]
    overlay.admit(p, offset[tail].tolist(), cols["customer_id"][tail].tolist(), [f"e{o}" for o in offset[tail]],
                  cols["event_time"][tail].tolist(), weights[tail])
    stale = _pushed(cols, partition, offset, {p: int(offset[rows[0]]) + 1})
    (inp,) = overlay.inputs([(p, customer, int(offset[last]))], stale)
    assert inp.basis == BUFFER_CAP and inp.not_included is None  # some may be missing: not known how many
    covered = {p: int(offset[rows[-10]])}
    overlay.evict(covered)
    (inp,) = overlay.inputs([(p, customer, None)], _pushed(cols, partition, offset, covered))
    assert inp.basis == EXACT and inp.not_included == 0
    _assert_equal(inp.state, _reference(cols, partition, offset, customer, p, int(offset[rows[-1]])))
