"""How the scoring worker's consumer fetches, A/B: visible latency fed live at half the max rate, and the
CPU a worker uses with no traffic.

Faust creates its consumer to answer each fetch at the first record (aiokafka's ``fetch_min_bytes=1``).
The worker fetches in batches while records flow (``scoring.fetch_min_bytes`` / ``fetch_max_wait_ms``) and at
the first record after an empty fetch (``fetch_idle_max_wait_ms``: ``streaming.scoring.fetch``). Each run is a
fresh ``churn score`` process on topics of its own, on one stack. Fed live at half the max rate of the latest
``realtime_score`` run (``live_worker_latency``, the way ``score_vs_echo`` feeds it), the worker's fetch runs
against Faust's, alternating (A B B A), so the machine's drift falls on both alike. With no traffic, it runs
against Faust's and against a fetch that stays batched when idle, alternating (A B C C B A).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

from churn.config import ScoringSettings, Settings
from churn.simulator import Simulator
from scoring import (CHURN, DAY, LIVE_WARM_UP_S, _cpu_s, _push_activity, live_worker_latency, scoring_setup,
                     worker_on_own_topics)

#: Faust's own fetch (answered at the first record), the worker's (its settings' defaults), and one that stays
#: batched when idle (what the worker did before it told idle from flowing).
FAUST_FETCH = {"CHURN_SCORING__FETCH_MIN_BYTES": "1", "CHURN_SCORING__FETCH_MAX_WAIT_MS": "1500",
               "CHURN_SCORING__FETCH_IDLE_MAX_WAIT_MS": "1500"}
WORKER_FETCH: dict[str, str] = {}
BATCHED_FETCH = {"CHURN_SCORING__FETCH_IDLE_MAX_WAIT_MS": str(ScoringSettings().fetch_max_wait_ms)}
FETCHES = {"worker": WORKER_FETCH, "faust": FAUST_FETCH, "batched": BATCHED_FETCH}
#: A worker with no traffic: started, given this long to join its group and settle, then measured this long.
IDLE_SETTLE_S, IDLE_MEASURED_S = 30.0, 30.0
IDLE_ORDER = ["worker", "batched", "faust", "faust", "batched", "worker"]


def _session_cpu_s(sid: int) -> float:
    """CPU seconds used so far by the live processes of session ``sid`` (a worker and its children)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    total += _cpu_s(int(entry.name))
            except (OSError, ValueError):  # gone meanwhile
                pass
    return total


def idle_cpu_pct(base: Settings, log: Path, **env_extra: str) -> float:
    """Share of one core (%) a fresh ``churn score`` worker and its children use with no traffic, measured
    ``IDLE_MEASURED_S`` after ``IDLE_SETTLE_S`` to start and join its group."""
    with worker_on_own_topics(base, [CHURN, "score"], log, **env_extra) as (_, _, worker):
        time.sleep(IDLE_SETTLE_S)
        before, t0 = _session_cpu_s(worker.pid), time.monotonic()
        time.sleep(IDLE_MEASURED_S)
        return round(100 * (_session_cpu_s(worker.pid) - before) / (time.monotonic() - t0), 1)


def bench_idle_fetch(base: Settings, logs: Path) -> dict[str, list[float]]:
    """``idle_cpu_pct`` of the worker's fetch, of one that stays batched when idle and of Faust's, in
    ``IDLE_ORDER``: each fetch's runs in order (workers' output in ``logs``)."""
    runs: dict[str, list[float]] = {kind: [] for kind in FETCHES}
    for kind in IDLE_ORDER:
        runs[kind].append(idle_cpu_pct(base, logs / f"idle-{kind}.log", **FETCHES[kind]))
    return runs


def bench_fetch_ab(base: Settings, max_rate: float, pairs: int = 2) -> dict[str, tuple[float, str, dict]]:
    """Visible p50/p99 at half ``max_rate`` with the worker's fetch and with Faust's, alternating A B B A;
    the medians of each and the ratio of the p99 medians (Faust's over the worker's); then ``bench_idle_fetch``."""
    base, tmp = scoring_setup(base, "fetch", "f")
    end = time.time() - DAY
    _push_activity(base, Simulator(seed=5, start_s=end - 1.2 * DAY, end_s=end))
    rate = max_rate / 2
    order = ["worker", "faust", "faust", "worker"] * (pairs // 2) + (["worker", "faust"] if pairs % 2 else [])
    runs: dict[str, list[dict]] = {"worker": [], "faust": []}
    try:
        for i, kind in enumerate(order):
            env = FETCHES[kind]
            # the first run's warm-up is the broker's too (its JIT)
            got = live_worker_latency(base, [CHURN, "score"], [rate], LIVE_WARM_UP_S if i == 0 else 30.0,
                                      tmp / f"{kind}.log", **env)
            runs[kind].append(got[rate])
        idle = bench_idle_fetch(base, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    defaults = ScoringSettings()
    out: dict[str, tuple[float, str, dict]] = {}
    for kind, detail in runs.items():
        p99 = statistics.median(r["visible_p99_ms"] for r in detail)
        out[f"score_fetch_{kind}_visible_p99"] = (p99, "ms", {
            "rate_events_per_s": round(rate), "max_rate": round(max_rate), "order": order,
            **_sizes(kind, defaults),
            "runs_visible_p50_ms": [r["visible_p50_ms"] for r in detail],
            "runs_visible_p99_ms": [r["visible_p99_ms"] for r in detail],
            "runs_worker_cpu_pct": [r["worker_cpu_pct"] for r in detail],
            "runs_broker_cpu_pct": [r["broker_cpu_pct"] for r in detail],
            "runs_machine_idle_pct": [r["machine_idle_pct"] for r in detail]})
    out["score_fetch_faust_vs_worker_p99"] = (
        out["score_fetch_faust_visible_p99"][0] / out["score_fetch_worker_visible_p99"][0], "x",
        {"rate_events_per_s": round(rate)})
    for kind, cpu in idle.items():
        out[f"score_fetch_{kind}_idle_cpu"] = (statistics.median(cpu), "% of a core", {
            "runs": cpu, "order": IDLE_ORDER,
            "settle_s": IDLE_SETTLE_S, "measured_s": IDLE_MEASURED_S, **_sizes(kind, defaults)})
    out["score_fetch_worker_vs_batched_idle_cpu"] = (
        out["score_fetch_worker_idle_cpu"][0] / out["score_fetch_batched_idle_cpu"][0], "x", {})
    return out


def _sizes(kind: str, defaults: ScoringSettings) -> dict[str, int]:
    """The fetch settings ``kind`` runs with."""
    env = FETCHES[kind]
    return {name: int(env.get(f"CHURN_SCORING__{name.upper()}", getattr(defaults, name)))
            for name in ("fetch_min_bytes", "fetch_max_wait_ms", "fetch_idle_max_wait_ms")}
