"""Alternating A/B runs of the whole streaming job under live traffic: one change at a time, on one stack, at
one rate, A then B, ``pairs`` times, so that each pair shares the machine's state of the moment.

    .venv/bin/python bench/run.py stream_ab_online_writer    # the direct Feast writer vs Feast's push
    .venv/bin/python bench/run.py stream_ab_bronze_trigger   # Bronze every 30 s vs every 5 s
    .venv/bin/python bench/run.py stream_ab_scheduler        # Bronze in the background pool vs FIFO (every 5 s)
    .venv/bin/python bench/run.py stream_ab_bronze_writer    # Bronze written by the silver batches vs its own query
    .venv/bin/python bench/run.py stream_ab_bronze_process   # Bronze's query in its own process at nice 19 vs in the job's JVM
    .venv/bin/python bench/run.py stream_ab_jit              # the JVMs' JIT as shipped vs its first tier (C1) only
    .venv/bin/python bench/run.py stream_ab_dedup            # de-duplication by buckets vs by a timer per id
    .venv/bin/python bench/run.py stream_ab_overlap          # a batch's driver work beside the next batch's Spark job vs after it

Each run is ``bench_stream_sustained`` at ``RATE`` (or the change's own in ``RATES``; a 30 s warm-up, then 60 s measured): feature freshness
p50/p99 and Silver's batch duration p50, per variant the median over the pairs, every run in the detail.
"""

from __future__ import annotations

import statistics

from churn.config import Settings
from jit_ab import LIVE_RATE as JIT_RATE
from jit_ab import VARIANTS as JIT_VARIANTS

RATE = 14_500  # events/s: about 25 % of the Bronze-alone ceiling on two cores (on a fast day)
#: change -> its own rate: 25 % of the ceiling measured on 2026-12-02 (34,882 events/s); the JIT's as its
#: 5-minute runs (``jit_ab.LIVE_RATE``); the overlap's about 40 % of the ceiling measured on 2026-12-04 midday
#: (50,872-58,983 events/s), where the job's throughput, which it changes, is what holds the lag
RATES = {"bronze_process": 9_000, "jit": JIT_RATE, "overlap": 22_000}
PAIRS = 2

#: change -> (A, B): settings overrides as (section, field, value)
CHANGES: dict[str, tuple[tuple[str, list], tuple[str, list]]] = {
    "online_writer": (("redis", [("streaming", "online_writer", "redis")]),
                      ("feast", [("streaming", "online_writer", "feast")])),
    "bronze_trigger": (("30s", [("streaming", "bronze_writer", "query"), ("streaming", "bronze_trigger_s", 30.0)]),
                       ("5s", [("streaming", "bronze_writer", "query"), ("streaming", "bronze_trigger_s", 5.0)])),
    "bronze_writer": (("silver_batch", [("streaming", "bronze_writer", "silver_batch")]),
                      ("query", [("streaming", "bronze_writer", "query")])),
    "bronze_process": (("own_process", [("streaming", "bronze_writer", "query"), ("streaming", "bronze_nice", 19)]),
                       ("same_jvm", [("streaming", "bronze_writer", "query"), ("streaming", "bronze_nice", None)])),
    "dedup": (("buckets", [("streaming", "dedup", "buckets")]),
              ("processing_timers", [("streaming", "dedup", "processing_timers")])),
    "overlap": (("overlapped", [("streaming", "overlap_batches", True)]),
                ("one_after_the_other", [("streaming", "overlap_batches", False)])),
    "jit": (("c2", [("spark", "java_options", JIT_VARIANTS["full"])]),
            ("c1_only", [("spark", "java_options", JIT_VARIANTS["c1"])])),
    "scheduler": (("background_pool", [("streaming", "bronze_writer", "query"), ("streaming", "bronze_trigger_s", 5.0),
                                       ("streaming", "bronze_nice", None)]),
                  ("fifo", [("streaming", "bronze_writer", "query"), ("streaming", "bronze_trigger_s", 5.0),
                            ("streaming", "bronze_nice", None),
                            ("spark", "conf", {"spark.scheduler.mode": "FIFO"})])),
}


def _variant(s: Settings, overrides: list) -> Settings:
    s = s.model_copy(deep=True)
    for section, field, value in overrides:
        setattr(getattr(s, section), field, value)
    return s


def bench_stream_ab(s: Settings, change: str) -> dict:
    """One change, A and B alternating (``CHANGES``): freshness p50/p99 and batch p50 of each variant."""
    from run import bench_stream_sustained

    rate = RATES.get(change, RATE)
    runs: dict[str, list[dict]] = {name: [] for name, _ in CHANGES[change]}
    for _ in range(PAIRS):
        for name, overrides in CHANGES[change]:
            out = bench_stream_sustained(_variant(s, overrides), {"run": rate}, stop_when_behind=False)
            p99, _, detail = out["run"]
            runs[name].append({"freshness_p99_s": p99, "freshness_p50_s": detail["freshness_p50_s"],
                               "batch_duration_p50_s": detail["batch_duration_p50_s"], "lag_steady": detail["lag_steady"],
                               "bronze_lag_max": detail["bronze_lag_max"], "drained_after_s": detail.get("drained_after_s"),
                               "lag_growth_second_half": detail.get("lag_growth_second_half")})
            print(f"{change} {name}: {runs[name][-1]}", flush=True)
    out = {}
    for name, results in runs.items():
        for figure in ("freshness_p50_s", "freshness_p99_s", "batch_duration_p50_s"):
            values = [r[figure] for r in results if r[figure] is not None]
            out[f"stream_ab_{change}_{name}_{figure[:-2]}"] = (
                statistics.median(values) if values else -1.0, "s",
                {"rate": rate, "pairs": PAIRS, "runs_in_order": [r[figure] for r in results],
                 "lag_steady": [r["lag_steady"] for r in results], "bronze_lag_max": [r["bronze_lag_max"] for r in results],
                 "drained_after_s": [r["drained_after_s"] for r in results], "variants": [n for n, _ in CHANGES[change]]})
    return out


def bench_for(change: str):
    """``bench_stream_ab`` for one change, as ``bench/run.py`` lists benchmarks (its docstring is the record's)."""
    def run(s: Settings) -> dict:
        return bench_stream_ab(s, change)

    a, b = (name for name, _ in CHANGES[change])
    run.__doc__ = f"{bench_stream_ab.__doc__} Change: {change}, {a} (A) against {b} (B), at {RATES.get(change, RATE):,} events/s."
    return run
