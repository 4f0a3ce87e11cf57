"""The scoring worker's commit interval, A/B: how soon a score is visible to a ``read_committed`` consumer,
and what committing more often costs the worker's max rate.

Each run is a fresh ``churn score`` process on topics of its own, with ``CHURN_SCORING__COMMIT_INTERVAL_S``
set: it catches up on a backlog (its max rate), then is fed live at half the max rate measured in the
first run, every 10 ms, while ``follow_scores`` reads ``churn-scores`` with ``read_committed``. The
intervals alternate (A B B A …), so the machine's drift falls on both alike.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import numpy as np

from churn.config import Settings
from churn.simulator import Simulator
from churn.simulator.produce import ProduceReport, StepProducer, run_backfill, run_live
from scoring import (CHURN, DAY, LIVE_TICK_S, PRODUCER_LINGER_MS, _catch_up, _env, _produce_times, _push_activity,
                     _topics, follow_scores, scoring_setup)

INTERVALS_S = (0.05, 0.025)
PAIRS = 2
LIVE_S = 30


def _one_run(base: Settings, interval_s: float, live_rate: float | None, log) -> dict:
    """Max rate on a backlog, then visible latency live at ``live_rate`` (half the max rate when None)."""
    from conftest import free_ports

    end = time.time() - DAY
    tag = uuid.uuid4().hex[:6]
    s = _topics(base, tag)
    report = run_backfill(s, Simulator(seed=5, start_s=end - 0.6 * DAY, end_s=end))
    extra = {"CHURN_SCORING__COMMIT_INTERVAL_S": str(interval_s)}
    env = _env(s, tag, base.scoring.registry_dir, base.streaming.lake_dir, free_ports(1)[0], **extra)
    max_rate, _ = _catch_up(s, env, report.cdr_messages, log)

    tag = uuid.uuid4().hex[:6]
    s = _topics(base, tag)
    env = _env(s, tag, base.scoring.registry_dir, base.streaming.lake_dir, free_ports(1)[0], **extra)
    worker = subprocess.Popen([CHURN, "score"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rate = live_rate or max_rate / 2
    try:
        time.sleep(8)
        seen, _, stop, follower = follow_scores(s, tag)
        sim = Simulator(seed=6, start_s=time.time(), end_s=time.time() + 60 * DAY, mode="live", labels_from_s=time.time())
        sender = StepProducer(s, ProduceReport(run_id="bench"), **{"linger.ms": PRODUCER_LINGER_MS})
        run_live(s, sim, rate / 2, duration_s=10, stop=threading.Event(), sender=sender, warn=lambda m: None,
                 tick_s=LIVE_TICK_S)  # warm-up: every customer's profile uncached at first
        t0 = time.time()
        run_live(s, sim, rate, duration_s=LIVE_S, stop=threading.Event(), sender=sender, warn=lambda m: None,
                 tick_s=LIVE_TICK_S)
        t1 = time.time()
        time.sleep(5)
        stop.set()
        follower.join(5)
    finally:
        worker.terminate()
        worker.wait(60)
    produced = _produce_times(s)
    window = [k for k, t in produced.items() if t0 + 5 <= t <= t1 and k in seen]
    visible = np.array([seen[k][1] - produced[k] for k in window]) * 1000
    return {"interval_s": interval_s, "max_rate": round(max_rate, 1), "live_rate": round(rate),
            "measured": len(window), "not_visible": sum(1 for k, t in produced.items() if t0 + 5 <= t <= t1 and k not in seen),
            "visible_p50_ms": round(float(np.percentile(visible, 50)), 1),
            "visible_p99_ms": round(float(np.percentile(visible, 99)), 1)}


def bench_commit_interval(base: Settings) -> dict[str, tuple[float, str, dict]]:
    """The scoring worker's commit interval, alternating A B B A: visible p99 live at half the max rate
    (the rate of the first run, the same for every run) and the max rate, per interval (median of the runs)."""
    base, tmp = scoring_setup(base, "commit", "b")
    _push_activity(base, Simulator(seed=5, start_s=time.time() - 2.2 * DAY, end_s=time.time() - DAY))
    a, b = INTERVALS_S
    order = [a, b, b, a] * (PAIRS // 2) + ([a, b] if PAIRS % 2 else [])
    runs: list[dict] = []
    with open(tmp / "workers.log", "ab") as log:
        for interval in order:
            runs.append(_one_run(base, interval, runs[0]["live_rate"] if runs else None, log))
            print(runs[-1], flush=True)
    results = {}
    for interval in INTERVALS_S:
        mine = [r for r in runs if r["interval_s"] == interval]
        name = f"commit_interval_{int(interval * 1000)}ms"
        detail = {"runs": mine, "order_s": order}
        results[f"{name}_visible_p99"] = (float(np.median([r["visible_p99_ms"] for r in mine])), "ms", detail)
        results[f"{name}_visible_p50"] = (float(np.median([r["visible_p50_ms"] for r in mine])), "ms", detail)
        results[f"{name}_max_rate"] = (float(np.median([r["max_rate"] for r in mine])), "events/s", detail)
    return results
