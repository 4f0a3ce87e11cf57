"""The lake on S3 (Hadoop's S3A to the local stack's S3Proxy) against the local filesystem, same run:
the streaming job's sustained rate and feature freshness under live traffic, alternating."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from churn.config import Settings  # noqa: E402

#: Rates tried, in order, for each storage (the highest held is the figure); freshness is reported at each.
S3_RATES = (8000, 16000)
def _sustained(s: Settings, name: str) -> dict:
    from run import bench_stream_sustained

    return bench_stream_sustained(s, {f"{name}_{rate}": rate for rate in S3_RATES}, stop_when_behind=False)


def alternating_sustained(variants: dict[str, Settings], prefix: str) -> dict:
    """The streaming job live at ``S3_RATES`` under each of two ``variants`` (name -> settings), each run in a
    fresh process, in the order A, B, B, A: per rate and variant the freshness p99 (mean of the two runs),
    whether the lag held, and the ratio B / A; per variant the highest rate held in both runs."""
    from feast_processor import in_fresh_process

    (a, _), (b, _) = variants.items()
    runs: dict[str, list[dict]] = {a: [], b: []}
    for name in (a, b, b, a):
        out = in_fresh_process(_sustained, variants[name], name)
        runs[name].append(out)
        print(name, {k: v[0] for k, v in out.items()}, flush=True)
    figures = {}
    for rate in S3_RATES:
        p99 = {v: sorted(r[f"{v}_{rate}"][0] for r in runs[v]) for v in runs}
        held = {v: [r[f"{v}_{rate}"][2]["lag_steady"] for r in runs[v]] for v in runs}
        batch = {v: [r[f"{v}_{rate}"][2]["batch_duration_p50_s"] for r in runs[v]] for v in runs}
        mean = {v: sum(x) / len(x) for v, x in p99.items()}
        for v in runs:
            figures[f"{prefix}_{v}_{rate}_freshness_p99"] = (mean[v], "s", {
                "rate": rate, "runs": p99[v], "lag_steady": held[v], "batch_duration_p50_s": batch[v],
                "order": [a, b, b, a]})
        figures[f"{prefix}_{b}_over_{a}_{rate}_freshness_p99"] = (mean[b] / mean[a], "x", {
            "rate": rate, f"{a}_s": mean[a], f"{b}_s": mean[b]})
    for v in runs:
        held_rates = [max((r[f"{v}_{rate}"][2]["rate"] for rate in S3_RATES
                           if r[f"{v}_{rate}"][2]["lag_steady"]), default=0) for r in runs[v]]
        figures[f"{prefix}_{v}_sustained_rate"] = (min(held_rates), "events/s", {
            "held_per_run": held_rates, "rates_tried": list(S3_RATES)})
    return figures


def bench_stream_s3(s: Settings) -> dict:
    """The streaming job (Bronze, Silver, quarantine, history, Feast push) live at 8,000 and 16,000 CDRs/s
    with its tables and checkpoints on ``s3a://`` (S3Proxy on this machine) and on the local filesystem,
    each in a fresh process, in the order local, s3, s3, local: the freshness p99 at each rate (mean of the
    two runs per storage), whether the lag held, and the ratio S3 / local."""
    from churn.stack.services import s3_service

    s3 = s.model_copy(deep=True)
    s3.s3.enabled = True
    server = s3_service(s3)
    server.start(60)
    try:
        return alternating_sustained({"local": s, "s3": s3}, "stream")
    finally:
        server.stop()
