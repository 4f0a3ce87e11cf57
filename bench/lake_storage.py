"""The lake on S3 (Hadoop's S3A to the local stack's S3Proxy) against the local filesystem, same run:
the streaming job's sustained rate and feature freshness under live traffic, alternating."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from churn.config import Settings  # noqa: E402

#: Rates tried, in order, for each storage (the highest held is the figure); freshness is reported at each.
S3_RATES = (8000, 16000)
#: local, s3, s3, local: each storage runs once early and once late, so drift in the machine's speed
#: over the bench falls on both alike.
ORDER = ("local", "s3", "s3", "local")


def _sustained(s: Settings, storage: str) -> dict:
    from run import bench_stream_sustained

    s = s.model_copy(deep=True)
    s.s3.enabled = storage == "s3"
    rates = {f"{storage}_{rate}": rate for rate in S3_RATES}
    return bench_stream_sustained(s, rates, stop_when_behind=False)


def bench_stream_s3(s: Settings) -> dict:
    """The streaming job (Bronze, Silver, quarantine, history, Feast push) live at 8,000 and 16,000 CDRs/s
    with its tables and checkpoints on ``s3a://`` (S3Proxy on this machine) and on the local filesystem,
    each in a fresh process, in the order local, s3, s3, local: the freshness p99 at each rate (median of the
    two runs per storage), whether the lag held, and the ratio S3 / local."""
    from feast_processor import in_fresh_process

    from churn.stack.services import s3_service

    s3 = s.model_copy(deep=True)
    s3.s3.enabled = True
    server = s3_service(s3)
    server.start(60)
    runs: dict[str, list[dict]] = {"local": [], "s3": []}
    try:
        for storage in ORDER:
            out = in_fresh_process(_sustained, s3 if storage == "s3" else s, storage)
            runs[storage].append(out)
            print(storage, {k: v[0] for k, v in out.items()}, flush=True)
    finally:
        server.stop()
    figures = {}
    for rate in S3_RATES:
        p99 = {st: sorted(r[f"{st}_{rate}"][0] for r in runs[st]) for st in runs}
        held = {st: [r[f"{st}_{rate}"][2]["lag_steady"] for r in runs[st]] for st in runs}
        batch = {st: [r[f"{st}_{rate}"][2]["batch_duration_p50_s"] for r in runs[st]] for st in runs}
        median = {st: sum(v) / len(v) for st, v in p99.items()}
        for st in runs:
            figures[f"stream_{st}_{rate}_freshness_p99"] = (median[st], "s", {
                "rate": rate, "runs": p99[st], "lag_steady": held[st], "batch_duration_p50_s": batch[st],
                "order": list(ORDER)})
        figures[f"stream_s3_over_local_{rate}_freshness_p99"] = (median["s3"] / median["local"], "x", {
            "rate": rate, "local_s": median["local"], "s3_s": median["s3"]})
    for st in runs:
        held_rates = [max((r[f"{st}_{rate}"][2]["rate"] for rate in S3_RATES
                           if r[f"{st}_{rate}"][2]["lag_steady"]), default=0) for r in runs[st]]
        figures[f"stream_{st}_sustained_rate"] = (min(held_rates), "events/s", {
            "held_per_run": held_rates, "rates_tried": list(S3_RATES)})
    return figures
