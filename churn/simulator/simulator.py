"""The CDR simulator: a deterministic stream of CDRs and churn labels for a customer base.

Two ways to move through time, one behaviour model:

* ``backfill_steps`` walks simulated time from ``start_s`` to ``end_s`` in
  slices (an hour by default), draws each customer's events as Poisson counts
  of their intensity, and stamps them with their simulated (past) times.
* ``live_step`` draws a fixed number of events from the customers' current
  intensities (so a producer can hold an exact rate), stamps them with wall
  time, and advances simulated time by as much as those events represent.

Given the seed, the time window and the signal strength, the stream (event ids
included) is always the same.

``signal_strength`` scales how much churners who warn drift before they leave
(``churn.simulator.behaviour``): 1 is the full drift, 0 none. With silent
churners, loyal customers' churn-like episodes and usage noise, the default
(``SIGNAL_STRENGTH``, 1) makes the bootstrap model's ROC AUC on the later
validation window of a 60-day simulated history land between 0.85 and 0.92
(``churn.model.bootstrap.simulated_auc``), about as hard as real churn data.

>>> sim = Simulator(seed=1, start_s=1.7e9, end_s=1.7e9 + 3 * 3600, customers=50)
>>> steps = list(sim.backfill_steps())
>>> len(steps), sum(len(s.values) for s in steps) > 0
(3, True)
>>> again = Simulator(seed=1, start_s=1.7e9, end_s=1.7e9 + 3 * 3600, customers=50)
>>> [s.values for s in again.backfill_steps()] == [s.values for s in steps]
True
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from churn.simulator.bad_events import BAD_KINDS, make_bad
from churn.simulator.behaviour import DAY, Episodes, EventBatch, day_noise, intensity, sample_events, shift_at
from churn.simulator.encode import encode_cdrs, encode_label
from churn.simulator.population import Population, load_population, sample_label_times

#: Default strength of the drift before churn (``churn.config.SimulatorSettings.signal_strength``).
SIGNAL_STRENGTH = 1.0


@dataclass
class Step:
    """What one step of the simulation produces."""

    values: list[bytes]  # CDR topic values: good events, then duplicates, then bad events
    keys: list[bytes]
    good: EventBatch  # the good events' columns (for statistics and tests)
    labels: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) for the label topic
    churned_labels: int = 0
    duplicates: int = 0
    bad: Counter = field(default_factory=Counter)  # bad kind -> count
    bad_values: list[tuple[str, bytes]] = field(default_factory=list)  # (kind, value)


class Simulator:
    def __init__(
        self,
        seed: int,
        start_s: float,
        end_s: float,
        precursor_days: float = 28.0,
        customers: int | None = None,
        csv_path: Path | None = None,
        bad_ratio: float = 0.0,
        duplicate_ratio: float = 0.0,
        mode: str = "backfill",
        clock: Callable[[], float] = time.time,
        labels_from_s: float | None = None,
        data_scale: float = 1.0,
        signal_strength: float = SIGNAL_STRENGTH,
    ):
        if signal_strength < 0.0:
            raise ValueError("signal_strength must be >= 0")
        if not 0.0 <= bad_ratio < 1.0:
            raise ValueError("bad_ratio must be in [0, 1)")
        if not 0.0 <= duplicate_ratio < 1.0:
            raise ValueError("duplicate_ratio must be in [0, 1)")
        self.seed = seed
        self.start_s, self.end_s = float(start_s), float(end_s)
        self.precursor_s = precursor_days * DAY
        self.bad_ratio, self.duplicate_ratio = bad_ratio, duplicate_ratio
        self.clock = clock
        self.pop: Population = load_population(seed, csv_path, customers)
        if data_scale != 1.0:  # a drift drill: everyone's data sessions grow (or shrink) by this factor
            self.pop.mean_session_mb = self.pop.mean_session_mb * data_scale
        # Labels fall in [labels_from_s, end_s). By default late enough that a churner's whole
        # drift lies inside the window, if it fits; live runs pass their start, so labels flow at once.
        label_lo = labels_from_s if labels_from_s is not None else (
            self.start_s + min(self.precursor_s, 0.5 * (self.end_s - self.start_s)))
        self.label_s = sample_label_times(self.pop, seed, label_lo, self.end_s)
        self.signal_strength = float(signal_strength)
        self.amplitude = self.pop.drift_weight * self.signal_strength  # 0: no drift before churn
        self.episodes = Episodes.draw(np.random.default_rng([seed, 6]), len(self.pop), self.start_s, self.end_s)
        self.run_id = hashlib.blake2b(
            f"{seed}:{mode}:{self.start_s:.3f}:{self.end_s:.3f}:{customers}:{self.signal_strength:g}".encode(),
            digest_size=5
        ).hexdigest().encode()
        self.seq = 0
        self.sim_now_s = self.start_s
        self._slices = 0
        self._customer_ids = [c.encode() for c in self.pop.customer_id]
        self._bad_kinds = list(BAD_KINDS)
        self._noise_day: tuple[int, np.ndarray] | None = None

    def _behaviour(self, t_s: float):
        """Event rates (n, 3) per second and every customer's ``Shift`` at ``t_s``."""
        day = int(t_s // DAY)
        if self._noise_day is None or self._noise_day[0] != day:
            self._noise_day = (day, day_noise(self.seed, len(self.pop), t_s))
        shift = shift_at(t_s, self.label_s, self.amplitude, self.precursor_s, self.episodes)
        return intensity(self.pop, self.label_s, t_s, shift, self._noise_day[1]), shift

    # -- the two walks through time -------------------------------------------------------
    def silver_columns(self, slice_s: float = 3600.0) -> dict[str, np.ndarray]:
        """Every good event from the simulated now to ``end_s`` as Silver's columns, concatenated
        (``backfill_steps`` then ``EventBatch.silver_columns``; the same events a backfill with the
        same ``slice_s`` produces). Advances the simulation like ``backfill_steps``."""
        ids = np.asarray(self.pop.customer_id, dtype=object)
        parts = [step.good.silver_columns(ids) for step in self.backfill_steps(slice_s=slice_s)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def backfill_steps(self, slice_s: float = 3600.0, until_s: float | None = None) -> Iterator[Step]:
        """Steps from the simulated now to ``until_s`` (default ``end_s``) in slices of ``slice_s``.

        Event times are simulated times (the past, in a backfill).
        """
        stop_s = self.end_s if until_s is None else min(until_s, self.end_s)
        index = self._slices
        t0 = self.sim_now_s
        while t0 < stop_s:
            t1 = min(t0 + slice_s, stop_s)
            rng = np.random.default_rng([self.seed, 3, index])
            lam, shift = self._behaviour(0.5 * (t0 + t1))
            counts = rng.poisson(lam * (t1 - t0))
            flat = np.repeat(np.arange(counts.size), counts.ravel())
            customer, kind = flat // 3, flat % 3
            time_ms = ((t0 + rng.random(len(flat)) * (t1 - t0)) * 1000).astype(np.int64)
            # a churner is gone from the moment of the churn label
            keep = ~(self.pop.churner[customer] & (time_ms >= self.label_s[customer] * 1000))
            batch = sample_events(rng, self.pop, customer[keep], kind[keep], shift, time_ms[keep])
            yield self._step(rng, batch, t0, t1, label_time_s=None)
            self.sim_now_s = t1
            t0 = t1
            index += 1
            self._slices = index

    def live_step(self, index: int, n_events: int, wall_t0: float, wall_t1: float) -> Step:
        """Exactly ``n_events`` events stamped in [wall_t0, wall_t1); simulated time moves on."""
        rng = np.random.default_rng([self.seed, 4, index])
        lam, shift = self._behaviour(self.sim_now_s)
        total = float(lam.sum())
        if total <= 0.0:  # everyone has churned: the simulation is over
            self.sim_now_s = self.end_s
            none = np.array([], dtype=np.int64)
            batch = sample_events(rng, self.pop, none, none, shift, none)
            return self._step(rng, batch, self.sim_now_s, self.sim_now_s, label_time_s=wall_t1)
        flat = rng.choice(lam.size, size=n_events, p=(lam / total).ravel())
        time_ms = ((wall_t0 + np.sort(rng.random(n_events)) * (wall_t1 - wall_t0)) * 1000).astype(np.int64)
        batch = sample_events(rng, self.pop, flat // 3, flat % 3, shift, time_ms)
        t0 = self.sim_now_s
        self.sim_now_s = t0 + n_events / total
        return self._step(rng, batch, t0, self.sim_now_s, label_time_s=wall_t1)

    @property
    def finished(self) -> bool:
        return self.sim_now_s >= self.end_s

    # -- what every step adds ---------------------------------------------------------------
    def _step(self, rng: np.random.Generator, batch: EventBatch, t0: float, t1: float,
              label_time_s: float | None) -> Step:
        values, keys = encode_cdrs(batch, self._customer_ids, self.run_id, self.seq)
        self.seq += len(values)
        step = Step(values=values, keys=keys, good=batch)
        m = len(values)
        if m and self.duplicate_ratio:
            dup = np.sort(rng.choice(m, size=rng.binomial(m, self.duplicate_ratio), replace=False))
            step.duplicates = len(dup)
            values += [values[i] for i in dup]
            keys += [keys[i] for i in dup]
        if m and self.bad_ratio:
            n_bad = rng.binomial(m, self.bad_ratio / (1.0 - self.bad_ratio))
            now = self.clock()
            for base, kind in zip(rng.integers(0, m, n_bad), rng.integers(0, len(self._bad_kinds), n_bad)):
                name = self._bad_kinds[kind]
                value = make_bad(name, values[base], f"{self.run_id.decode()}-bad-{self.seq}", now)
                self.seq += 1
                step.bad[name] += 1
                step.bad_values.append((name, value))
                values.append(value)
                keys.append(keys[base])
        # labels whose time falls in this step
        due = np.flatnonzero((self.label_s >= t0) & (self.label_s < t1))
        for c in due[np.argsort(self.label_s[due], kind="stable")]:
            churned = bool(self.pop.churner[c])
            when = self.label_s[c] if label_time_s is None else label_time_s
            event_id = f"{self.run_id.decode()}-label-{c}"
            step.labels.append((self._customer_ids[c], encode_label(event_id, self.pop.customer_id[c], when, churned)))
            step.churned_labels += churned
        return step
