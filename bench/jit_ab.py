"""The Spark JVMs' JIT, full (as shipped) against its first tier only (C1, ``-XX:TieredStopAtLevel=1``),
alternating on one stack, where a run's length decides which wins:

    .venv/bin/python bench/run.py stream_jit_catchup   # the job catching up on ~147,000 CDRs, two pairs
    .venv/bin/python bench/run.py stream_jit_live      # the job live at 14,000/s for 5 minutes, one pair

C1 compiles little and makes slower code; the full JIT compiles for minutes after a start, on the cores
the queries need, and then runs faster code. ``bench/run.py stream_ab_jit`` has the 60 s live pairs.
"""

from __future__ import annotations

import statistics

from churn.config import Settings

#: variant -> ``spark.java_options``
VARIANTS = {"full": "", "c1": "-XX:TieredStopAtLevel=1"}
PAIRS = 2
LIVE_RATE = 14_000  # events/s: 25 % of the Bronze-alone runs of 2026-12-03 afternoon
LIVE_SECONDS = 300


def _with_jit(s: Settings, variant: str) -> Settings:
    s = s.model_copy(deep=True)
    s.spark.java_options = VARIANTS[variant]
    return s


def bench_stream_jit_catchup(base: Settings) -> dict:
    """Our streaming job catching up on the side-by-side benchmark's backlog (~147,000 CDRs, batches of
    30,000, a fresh process per run, Bronze, Silver and features all done): seconds from the queries'
    start to the last one's end, each JIT variant, alternating, ``PAIRS`` pairs (bench/jit_ab.py)."""
    from feast_processor import _run_ours, in_fresh_process, side_by_side_backlog
    from run import _stream_bench_settings

    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    first_batch: dict[str, list[float]] = {v: [] for v in VARIANTS}
    events = 0
    for _ in range(PAIRS):
        for variant in VARIANTS:
            s, events, _end = side_by_side_backlog(_with_jit(base, variant), _stream_bench_settings)
            elapsed, detail = in_fresh_process(_run_ours, s)
            runs[variant].append(round(elapsed, 1))
            first_batch[variant].append(detail["first_batch_s"])
            print(f"stream_jit_catchup {variant}: {elapsed:.1f} s, first batch {detail['first_batch_s']} s", flush=True)
    detail = {"events": events, "pairs": PAIRS, "runs_in_order": runs, "first_batch_s": first_batch,
              "java_options": VARIANTS}
    return {f"stream_jit_catchup_{v}_s": (statistics.median(runs[v]), "s", detail) for v in VARIANTS} | {
        "stream_jit_catchup_c1_vs_full": (statistics.median(runs["c1"]) / statistics.median(runs["full"]), "x", detail)}


def bench_stream_jit_live(base: Settings) -> dict:
    """The streaming job live at ``LIVE_RATE`` for ``LIVE_SECONDS``, the full JIT then C1 (one pair):
    feature freshness p99 over the run and in each minute, Silver's batch p50."""
    from run import bench_stream_sustained

    out = {}
    for variant in VARIANTS:
        p99, _, detail = bench_stream_sustained(_with_jit(base, variant), {"run": LIVE_RATE}, stop_when_behind=False,
                                                seconds=LIVE_SECONDS)["run"]
        minutes = detail["freshness_p99_s_by_minute"]
        print(f"stream_jit_live {variant}: p99 {p99} s, by minute {minutes}", flush=True)
        keep = {k: detail.get(k) for k in ("freshness_p50_s", "freshness_p99_s_by_minute", "batch_duration_p50_s",
                                           "batch_duration_p99_s", "lag_steady", "drained_after_s")}
        out[f"stream_jit_live_{variant}_freshness_p99"] = (p99, "s", {"rate": LIVE_RATE, "seconds": LIVE_SECONDS, **keep})
        later = minutes[1:-1] or minutes  # after the first minute, before the last partial one
        out[f"stream_jit_live_{variant}_freshness_p99_after_first_minute"] = (
            max(later), "s", {"rate": LIVE_RATE, "minutes": minutes, "what": "the highest per-minute p99 after the first"})
    return out
