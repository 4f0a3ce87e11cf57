"""How the scoring worker's consumer fetches, A/B: visible latency fed live at half the max rate.

Faust creates its consumer to answer each fetch at the first record (aiokafka's ``fetch_min_bytes=1``).
The worker fetches with ``scoring.fetch_min_bytes`` / ``scoring.fetch_max_wait_ms`` instead
(``streaming.scoring.app.fetch_in_batches``). Each run is a fresh ``churn score`` process on topics of its
own, on one stack, fed live at half the max rate of the latest ``realtime_score`` run (``live_worker_latency``,
the way ``score_vs_echo`` feeds it). The two alternate (A B B A), so the machine's drift falls on both alike.
"""

from __future__ import annotations

import shutil
import statistics
import time

from churn.config import ScoringSettings, Settings
from churn.simulator import Simulator
from scoring import CHURN, DAY, LIVE_WARM_UP_S, _push_activity, live_worker_latency, scoring_setup

#: Faust's own fetch (answered at the first record) and the worker's (its settings' defaults).
FAUST_FETCH = {"CHURN_SCORING__FETCH_MIN_BYTES": "1", "CHURN_SCORING__FETCH_MAX_WAIT_MS": "1500"}
WORKER_FETCH: dict[str, str] = {}


def bench_fetch_ab(base: Settings, max_rate: float, pairs: int = 2) -> dict[str, tuple[float, str, dict]]:
    """Visible p50/p99 at half ``max_rate`` with the worker's fetch and with Faust's, alternating A B B A;
    the medians of each and the ratio of the p99 medians (Faust's over the worker's)."""
    base, tmp = scoring_setup(base, "fetch", "f")
    end = time.time() - DAY
    _push_activity(base, Simulator(seed=5, start_s=end - 1.2 * DAY, end_s=end))
    rate = max_rate / 2
    order = ["worker", "faust", "faust", "worker"] * (pairs // 2) + (["worker", "faust"] if pairs % 2 else [])
    runs: dict[str, list[dict]] = {"worker": [], "faust": []}
    try:
        for i, kind in enumerate(order):
            env = WORKER_FETCH if kind == "worker" else FAUST_FETCH
            # the first run's warm-up is the broker's too (its JIT)
            got = live_worker_latency(base, [CHURN, "score"], [rate], LIVE_WARM_UP_S if i == 0 else 30.0,
                                      tmp / f"{kind}.log", **env)
            runs[kind].append(got[rate])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    defaults = ScoringSettings()
    out: dict[str, tuple[float, str, dict]] = {}
    for kind, detail in runs.items():
        p99 = statistics.median(r["visible_p99_ms"] for r in detail)
        out[f"score_fetch_{kind}_visible_p99"] = (p99, "ms", {
            "rate_events_per_s": round(rate), "max_rate": round(max_rate), "order": order,
            "fetch_min_bytes": int(FAUST_FETCH["CHURN_SCORING__FETCH_MIN_BYTES"]) if kind == "faust"
            else defaults.fetch_min_bytes,
            "fetch_max_wait_ms": int(FAUST_FETCH["CHURN_SCORING__FETCH_MAX_WAIT_MS"]) if kind == "faust"
            else defaults.fetch_max_wait_ms,
            "runs_visible_p50_ms": [r["visible_p50_ms"] for r in detail],
            "runs_visible_p99_ms": [r["visible_p99_ms"] for r in detail],
            "runs_worker_cpu_pct": [r["worker_cpu_pct"] for r in detail],
            "runs_broker_cpu_pct": [r["broker_cpu_pct"] for r in detail],
            "runs_machine_idle_pct": [r["machine_idle_pct"] for r in detail]})
    out["score_fetch_faust_vs_worker_p99"] = (
        out["score_fetch_faust_visible_p99"][0] / out["score_fetch_worker_visible_p99"][0], "x",
        {"rate_events_per_s": round(rate)})
    return out
