"""Alternating A/B runs of the whole streaming job under live traffic: one change at a time, on one stack, at
one rate, A then B, ``pairs`` times, so that each pair shares the machine's state of the moment.

    .venv/bin/python bench/run.py stream_ab_online_writer    # the direct Feast writer vs Feast's push
    .venv/bin/python bench/run.py stream_ab_bronze_trigger   # Bronze every 30 s vs every 5 s
    .venv/bin/python bench/run.py stream_ab_scheduler        # Bronze in the background pool vs FIFO (every 5 s)

Each run is ``bench_stream_sustained`` at ``RATE`` (a 30 s warm-up, then 60 s measured): feature freshness
p50/p99 and Silver's batch duration p50, per variant the median over the pairs, every run in the detail.
"""

from __future__ import annotations

import statistics

from churn.config import Settings

RATE = 14_500  # events/s: about 25 % of the Bronze-alone ceiling on two cores
PAIRS = 2

#: change -> (A, B): settings overrides as (section, field, value)
CHANGES: dict[str, tuple[tuple[str, list], tuple[str, list]]] = {
    "online_writer": (("redis", [("streaming", "online_writer", "redis")]),
                      ("feast", [("streaming", "online_writer", "feast")])),
    "bronze_trigger": (("30s", [("streaming", "bronze_trigger_s", 30.0)]),
                       ("5s", [("streaming", "bronze_trigger_s", 5.0)])),
    "scheduler": (("background_pool", [("streaming", "bronze_trigger_s", 5.0)]),
                  ("fifo", [("streaming", "bronze_trigger_s", 5.0), ("spark", "conf", {"spark.scheduler.mode": "FIFO"})])),
}


def _variant(s: Settings, overrides: list) -> Settings:
    s = s.model_copy(deep=True)
    for section, field, value in overrides:
        setattr(getattr(s, section), field, value)
    return s


def bench_stream_ab(s: Settings, change: str) -> dict:
    """One change, A and B alternating (``CHANGES``): freshness p50/p99 and batch p50 of each variant."""
    from run import bench_stream_sustained

    runs: dict[str, list[dict]] = {name: [] for name, _ in CHANGES[change]}
    for _ in range(PAIRS):
        for name, overrides in CHANGES[change]:
            out = bench_stream_sustained(_variant(s, overrides), {"run": RATE}, stop_when_behind=False)
            p99, _, detail = out["run"]
            runs[name].append({"freshness_p99_s": p99, "freshness_p50_s": detail["freshness_p50_s"],
                               "batch_duration_p50_s": detail["batch_duration_p50_s"], "lag_steady": detail["lag_steady"]})
            print(f"{change} {name}: {runs[name][-1]}", flush=True)
    out = {}
    for name, results in runs.items():
        for figure in ("freshness_p50_s", "freshness_p99_s", "batch_duration_p50_s"):
            values = [r[figure] for r in results if r[figure] is not None]
            out[f"stream_ab_{change}_{name}_{figure[:-2]}"] = (
                statistics.median(values) if values else -1.0, "s",
                {"rate": RATE, "pairs": PAIRS, "runs_in_order": [r[figure] for r in results],
                 "lag_steady": [r["lag_steady"] for r in results], "variants": [n for n, _ in CHANGES[change]]})
    return out


def bench_for(change: str):
    """``bench_stream_ab`` for one change, as ``bench/run.py`` lists benchmarks (its docstring is the record's)."""
    def run(s: Settings) -> dict:
        return bench_stream_ab(s, change)

    a, b = (name for name, _ in CHANGES[change])
    run.__doc__ = f"{bench_stream_ab.__doc__} Change: {change}, {a} (A) against {b} (B), at {RATE:,} events/s."
    return run
