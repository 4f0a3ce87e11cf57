"""What the online store does not hold yet: every decision includes the CDR that triggered it.

The streaming job pushes each customer's activity state to Feast (``customer_activity``)
once per micro-batch, seconds after the CDRs arrive. Each pushed state records the Kafka
offsets it covers (``covered_offsets``: per ``cdr`` partition, the end of the micro-batch
it was computed in). The scorer keeps the valid CDRs of its own partitions that the pushed
state may not cover yet, and adds them to it before the model call. Decayed sums merge
exactly in any order (``churn.features.fold_events``), so the input for a CDR at offset
*o* is exactly the features over every counted CDR of that customer up to and including
*o*, whatever the streaming job's lag.

Which CDRs count is decided by the streaming job's own rules, applied here in the same
order: the contract's validator (the caller), then the duplicate rule (an ``event_id``
seen within ``dedup_window_s``), then the late rule (older than the partition's newest
event time minus ``allowed_lateness_s``). Where the two paths can still differ:

* the stream's late rule uses the newest event time of its *earlier micro-batches*; the
  scorer uses the newest event it counted before this one, so an event within a few
  seconds of the lateness bound can fall on different sides;
* the stream recognises a duplicate whose first copy arrived on another partition (a
  producer that keys one customer's CDRs differently); a worker sees its own partitions;
* duplicate ids are remembered for ``dedup_window_s`` or the last ``dedup_ids`` ids,
  whichever is fewer.

Memory is bounded: a buffered CDR is dropped once the stream's pushed state covers it
(``evict``: the offsets the stream has pushed, which it records in Redis after every
push) and this worker has scored it. If the stream is stopped or far behind, at most
``max_events`` CDRs are kept; older ones are dropped, counted per customer, and a
decision that misses any of them says so (``Input.not_included``, ``basis``
``"buffer_cap"``). The last input of up to ``own_states`` customers is kept too: when the
stream is *ahead* of this worker (catching up after a restart), its state already holds
CDRs after the trigger, and the worker's own previous input plus the trigger is exact.

>>> from churn.features import SUM_FEATURES
>>> overlay = ActivityOverlay()
>>> one_call = np.zeros(len(MEASURES)); one_call[list(MEASURES).index("calls")] = 1.0
>>> overlay.admit(0, [10, 11], ["c1", "c1"], ["e1", "e1"], [100.0, 101.0], np.array([one_call, one_call])).tolist()
[True, False]
>>> pushed = {"ref_time": 50.0, "sums": [0.0] * len(SUM_FEATURES), "active_days": [0], "covered_offsets": [10]}
>>> got = overlay.inputs([(0, "c1", 10)], {"c1": pushed})[0]
>>> got.state["ref_time"], round(got.state["sums"][SUM_FEATURES.index("calls_30d")], 6), got.added, got.basis
(100.0, 1.0, 1, 'exact')
>>> overlay.inputs([(0, "c1", 11)], {"c1": pushed})[0].added  # a duplicate of e1: not counted twice
0
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from churn.features import DAY, HORIZONS, MEASURES, event_sums, fold_events, merge_active_days

EXACT, STREAM_AHEAD, BUFFER_CAP = "exact", "stream_ahead", "buffer_cap"


@dataclass
class Input:
    """The activity state one decision sees, and how it was made."""

    state: dict | None  # ``ref_time``, ``sums`` (SUM_FEATURES order), ``active_days``; None: no activity at all
    added: int = 0  # buffered CDRs added on top of the pushed state
    #: counted CDRs up to the trigger that the state lacks (only after the buffer cap); None: some may be
    #: missing but how many is not known (a worker restarted while the stream was far behind: see ``mark_gap``)
    not_included: int | None = 0
    basis: str = EXACT  # EXACT, STREAM_AHEAD (the pushed state already holds later CDRs) or BUFFER_CAP


class _Pending:
    """One customer's buffered CDRs on one partition, in offset order."""

    __slots__ = ("offsets", "times", "weights")

    def __init__(self):
        self.offsets: list[int] = []
        self.times: list[float] = []
        self.weights: list[np.ndarray] = []  # each CDR's weight per measure (``MEASURES`` order)

    def drop_below(self, offset: int) -> int:
        n = bisect.bisect_left(self.offsets, offset)
        if n:
            del self.offsets[:n], self.times[:n], self.weights[:n]
        return n


class ActivityOverlay:
    def __init__(self, max_events: int = 200_000, own_states: int = 100_000, dedup_ids: int = 200_000,
                 dedup_window_s: float = 3600.0, allowed_lateness_s: float = 3600.0, clock=time.monotonic):
        self.max_events, self.own_states, self.dedup_ids = max_events, own_states, dedup_ids
        self.dedup_window_s, self.allowed_lateness_s, self.clock = dedup_window_s, allowed_lateness_s, clock
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._order: dict[int, deque[tuple[int, str]]] = {}  # per partition: (offset, customer), offset order
        self.size = 0  # buffered CDRs
        self._ids: OrderedDict[str, float] = OrderedDict()  # recent counted event ids -> when seen
        self._newest: dict[int, float] = {}  # per partition: newest counted event time
        self._dropped: dict[tuple[int, str], list[int]] = {}  # CDRs dropped at the cap: [count, newest offset]
        self.dropped_total = 0
        self._own: OrderedDict[tuple[int, str], tuple[int, float, np.ndarray, list[int]]] = OrderedDict()
        self._gaps: dict[int, int] = {}  # per partition: CDRs below this offset may be missing from the buffer

    # -- which CDRs count: the streaming job's rules ---------------------------------------
    def admit(self, partition: int, offsets, customers, event_ids, times, weights) -> np.ndarray:
        """Buffer a batch's valid CDRs of one partition (offset order); returns which of them count
        (not a duplicate, not late). ``weights`` is one row of measure weights per CDR."""
        now = self.clock()
        ids = self._ids
        while ids and (len(ids) > self.dedup_ids or now - next(iter(ids.values())) > self.dedup_window_s):
            ids.popitem(last=False)
        counted = np.zeros(len(offsets), dtype=bool)
        order = self._order.setdefault(partition, deque())
        newest = self._newest.get(partition)
        for i, (offset, customer, event_id, t) in enumerate(zip(offsets, customers, event_ids, times)):
            if event_id in ids:
                continue  # a duplicate: the stream drops it
            ids[event_id] = now
            if newest is not None and t < newest - self.allowed_lateness_s:
                continue  # late: the stream quarantines it
            newest = t if newest is None else max(newest, t)
            key = (partition, customer)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending()
            pending.offsets.append(offset)
            pending.times.append(t)
            pending.weights.append(weights[i])
            order.append((offset, customer))
            counted[i] = True
        if newest is not None:
            self._newest[partition] = newest
        self.size += int(counted.sum())
        if self.size > self.max_events:
            self._drop_oldest(self.size - self.max_events)
        return counted

    def _drop_oldest(self, n: int) -> None:
        """The buffer is full (the stream is stopped or far behind): drop ``n`` CDRs, the oldest of the
        longest partition queues first, remembering per customer how many and up to where."""
        while n > 0:
            partition = max(self._order, key=lambda p: len(self._order[p]))
            offset, customer = self._order[partition].popleft()
            key = (partition, customer)
            pending = self._pending[key]
            pending.drop_below(offset + 1)
            if not pending.offsets:
                del self._pending[key]
            dropped = self._dropped.setdefault(key, [0, offset])
            dropped[0] += 1
            dropped[1] = max(dropped[1], offset)
            self.size -= 1
            self.dropped_total += 1
            n -= 1

    def mark_gap(self, partition: int, offset: int) -> None:
        """CDRs of ``partition`` below ``offset`` that the pushed state may not cover could not be buffered
        (a worker taking the partition over reloads at most its cap of them): decisions starting from a
        pushed state older than ``offset`` are marked until the stream's pushes pass it."""
        self._gaps[partition] = max(self._gaps.get(partition, 0), offset)

    def evict(self, upto: dict[int, int]) -> int:
        """Drop buffered CDRs below ``upto[partition]`` (covered by the pushed state and already scored);
        returns how many."""
        dropped = 0
        for partition, limit in upto.items():
            order = self._order.get(partition)
            while order and order[0][0] < limit:
                _, customer = order.popleft()
                key = (partition, customer)
                pending = self._pending.get(key)
                if pending is not None:
                    dropped += pending.drop_below(limit)
                    if not pending.offsets:
                        del self._pending[key]
            for key in [k for k, (_, newest) in self._dropped.items() if k[0] == partition and newest < limit]:
                del self._dropped[key]  # the pushed state covers everything that was dropped
            if self._gaps.get(partition, -1) <= limit:
                self._gaps.pop(partition, None)
        self.size -= dropped
        return dropped

    def forget(self, partition: int) -> None:
        """The worker gave ``partition`` up: drop what it held for it."""
        self._order.pop(partition, None)
        self._newest.pop(partition, None)
        self._gaps.pop(partition, None)
        for store in (self._pending, self._dropped, self._own):
            for key in [k for k in store if k[0] == partition]:
                del store[key]
        self.size = sum(len(p.offsets) for p in self._pending.values())

    # -- the state a decision sees ---------------------------------------------------------
    def inputs(self, decisions, pushed: dict) -> list[Input]:
        """The activity state of each decision ``(partition, customer, offset)``, in the order given
        (offset order within a partition); ``offset`` None is a decision at the current time, which
        includes every buffered CDR. ``pushed`` maps customer -> its state from the online store
        (``ref_time``, ``sums``, ``active_days``, ``covered_offsets``) or None."""
        out: list[Input | None] = [None] * len(decisions)
        by_key: dict[tuple[int, str], list[int]] = {}
        for i, (partition, customer, _) in enumerate(decisions):
            by_key.setdefault((partition, customer), []).append(i)
        # Each key's decisions in order; every step folds the key's buffered CDRs since the previous one.
        # Steps run in rounds (the r-th decision of every key), each CDR fold vectorised over the keys.
        keys = list(by_key)
        ref = np.full(len(keys), np.nan)
        sums = np.zeros((len(keys), len(HORIZONS) * len(MEASURES)))
        days: list[list[int]] = [[] for _ in keys]
        cov = np.zeros(len(keys), dtype=np.int64)
        base_cov = np.zeros(len(keys), dtype=np.int64)
        ahead = np.zeros(len(keys), dtype=bool)
        own = np.zeros(len(keys), dtype=bool)
        for k, key in enumerate(keys):
            first = decisions[by_key[key][0]][2]
            base = self._base(key, pushed.get(key[1]), first)
            if base is not None:
                cov[k], ref[k], sums[k], days[k], ahead[k], own[k] = base
                base_cov[k] = cov[k]
        rounds = max(len(v) for v in by_key.values()) if by_key else 0
        for r in range(rounds):
            active = [k for k, key in enumerate(keys) if len(by_key[key]) > r]
            steps = []
            for k in active:
                key = keys[k]
                offset = decisions[by_key[key][r]][2]
                pending = self._pending.get(key)
                if pending is None:
                    steps.append((k, 0, 0, offset))
                    continue
                lo = bisect.bisect_left(pending.offsets, cov[k])
                hi = len(pending.offsets) if offset is None else bisect.bisect_right(pending.offsets, offset)
                steps.append((k, lo, max(hi, lo), offset))
            longest = max((hi - lo for _, lo, hi, _ in steps), default=0)
            for s in range(longest):  # the s-th new CDR of every key that has one
                rows = [(k, lo + s) for k, lo, hi, _ in steps if lo + s < hi]
                at = np.array([k for k, _ in rows])
                pend = [self._pending[keys[k]] for k, _ in rows]
                t = np.array([p.times[j] for p, (_, j) in zip(pend, rows)])
                w = event_sums(np.array([p.weights[j] for p, (_, j) in zip(pend, rows)]))
                ref[at], sums[at] = fold_events(ref[at], sums[at], t, w)
                for k, tk in zip(at, t):
                    day = int(tk // DAY)
                    if day not in days[k]:  # (a day already listed leaves the window as it is)
                        days[k] = merge_active_days(days[k], (day,), ref[k])
            refs = ref.tolist()
            for k, lo, hi, offset in steps:
                key = keys[k]
                pending = self._pending.get(key)
                newest_offset = pending.offsets[hi - 1] if (pending is not None and hi > lo) else None
                if offset is not None:
                    cov[k] = max(cov[k], offset + 1)
                elif newest_offset is not None:
                    cov[k] = max(cov[k], newest_offset + 1)
                state = None if math.isnan(refs[k]) else {"ref_time": refs[k], "sums": sums[k].tolist(),
                                                          "active_days": list(days[k])}
                missing = self._not_included(key, int(base_cov[k]), bool(own[k]))
                lacking = missing is None or missing > 0
                basis = BUFFER_CAP if lacking else (STREAM_AHEAD if ahead[k] else EXACT)
                out[by_key[key][r]] = Input(state, added=hi - lo, not_included=missing, basis=basis)
                if not ahead[k] and not lacking and state is not None:
                    self._remember(key, int(cov[k]), ref[k], sums[k].copy(), list(days[k]))
        return out  # type: ignore[return-value]

    def _base(self, key, pushed: dict | None, offset: int | None):
        """Where a key's first decision of the batch starts: ``(covered, ref, sums, days, ahead, own)`` from the
        pushed state or this worker's own last input, whichever covers more without passing ``offset`` (the
        pushed one on a tie). Only the one chosen is unpacked."""
        candidates = []  # (covered, 1 pushed / 0 own)
        if pushed is not None and pushed.get("ref_time") is not None:
            covered = pushed.get("covered_offsets") or ()
            candidates.append((int(covered[key[0]]) if key[0] < len(covered) and covered[key[0]] is not None else 0, 1))
        own = self._own.get(key)
        if own is not None:
            candidates.append((own[0], 0))
        if not candidates:
            return None
        usable = [c for c in candidates if offset is None or c[0] <= offset]
        ahead = not usable
        # ahead: the stream is ahead of this worker, and its state is preferred
        best = max(usable) if usable else max(candidates, key=lambda c: (c[1], c[0]))
        if best[1] == 1:
            return (best[0], float(pushed["ref_time"]), np.asarray(pushed["sums"], dtype=float),
                    [int(d) for d in (pushed.get("active_days") or ())], ahead, False)
        return own[0], own[1], own[2], own[3], ahead, True

    def _not_included(self, key, base_covered: int, own: bool = False) -> int | None:
        """CDRs of ``key`` dropped at the cap that a state starting at ``base_covered`` lacks (an upper
        bound when the base covers some of them); None if a reload gap may hide some."""
        if not own and base_covered < self._gaps.get(key[0], -1):
            return None
        dropped = self._dropped.get(key)
        return dropped[0] if dropped is not None and dropped[1] >= base_covered else 0

    def _remember(self, key, covered: int, ref: float, sums: np.ndarray, days: list[int]) -> None:
        own = self._own
        own[key] = (covered, float(ref), sums, days)
        own.move_to_end(key)
        if len(own) > self.own_states:
            own.popitem(last=False)
