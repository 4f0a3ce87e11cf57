"""Benchmarks. Each figure is the median of several runs, written to bench/results.json
(name, value, unit, runs, command, cores, date) and quoted in docs/benchmarks.md.

    .venv/bin/python bench/run.py            # all benchmarks
    .venv/bin/python bench/run.py produce    # those whose name contains 'produce'

Benchmarks that need the broker start a private local stack (free ports, temporary
run directory) and stop it afterwards.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import settings_from, stack_env  # noqa: E402  (free ports, private run dir)

from churn import stack  # noqa: E402
from churn.config import Settings  # noqa: E402
from churn.simulator import Simulator  # noqa: E402
from churn.simulator.produce import run_backfill  # noqa: E402
from churn.transport import ensure_topics  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import bench_api  # noqa: E402
from chaos import bench_chaos  # noqa: E402
from feast_processor import BACKLOG_DAYS, bench_stream_vs_feast_processor, in_fresh_process, stream_catch_up  # noqa: E402
from gold import bench_gold  # noqa: E402
from lake_storage import bench_stream_s3  # noqa: E402
from model_call import bench_model_call  # noqa: E402
from overlay import bench_overlay, bench_overlay_with_stream  # noqa: E402
from reliability import bench_broker_restart  # noqa: E402
from scoring import (bench_echo_latency, bench_faust_alone, bench_latency_vs_echo, bench_score_work_alone,  # noqa: E402
                     bench_score_work_by_batch, bench_scoring)
from security import bench_security, bench_security_stream  # noqa: E402
from commit_interval import bench_commit_interval  # noqa: E402
from dedup import bench_dedup_live, bench_dedup_state  # noqa: E402
from fetch_ab import bench_fetch_ab  # noqa: E402
from jit_ab import bench_stream_jit_catchup, bench_stream_jit_live  # noqa: E402
from simulator_auc import bench_simulator_behaviour_auc  # noqa: E402
from stream_ab import CHANGES, bench_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"
RUNS = 3
SUSTAINED_RATES = [4000, 8000, 16000, 32000, 50000]
SUSTAINED_SECONDS = 60
SUSTAINED_WARM_UP = (2000, 30)  # events/s, seconds
RUNS_BY_BENCH = {"api": 1, "model_selection_telco": 1, "realtime_stream": 1, "realtime_stream_long": 1, "realtime_score": 1, "score_vs_echo": 1, "score_fetch": 1, "score_work_by_batch": 1, "security": 1, "stream_s3": 1, "chaos": 1, "security_stream": 1, "score_commit_interval": 1, "stream_dedup_state": 1, "stream_dedup_live": 1, "stream_jit_catchup": 1, "stream_jit_live": 1, **{f"stream_ab_{c}": 1 for c in CHANGES}, "stream_sustained": 1, "stream_vs_feast_processor": 4, "stream_vs_feast_processor_long": 4, "stream_catchup_rate": 1, "score": 1, "score_overlay": 1, "score_overlay_with_stream": 1, "score_broker_restart": 1, "gold": 1,
                 "simulator_behaviour_auc": 1}  # minutes per run on 2 cores; the AUC is deterministic
DAY = 86400.0
EARLIER_KEPT = 5  # earlier results of a figure kept in results.json (value, runs, date)


def _simulator(days: float = 7.0) -> Simulator:
    end = time.time()
    return Simulator(seed=1, start_s=end - days * DAY, end_s=end)


def bench_simulator_generate() -> tuple[float, str, dict]:
    """Generation and JSON encoding alone, no Kafka: the simulator's own ceiling."""
    sim = _simulator()
    t = time.perf_counter()
    n = sum(len(step.values) for step in sim.backfill_steps())
    return n / (time.perf_counter() - t), "events/s", {"events": n}


def bench_simulator_produce(s: Settings) -> tuple[float, str, dict]:
    """Backfill to the local broker with the full CDR payload: generate, encode, produce, flush (acks=all)."""
    s = s.model_copy(deep=True)
    s.topics.cdr.name = f"bench-cdr-{uuid.uuid4().hex[:6]}"
    s.topics.churn_labels.name = f"bench-labels-{uuid.uuid4().hex[:6]}"
    ensure_topics(s)
    report = run_backfill(s, _simulator())
    assert report.failed == 0, report.first_error
    return report.rate, "events/s", {"events": report.cdr_messages}


def _stream_bench_settings(s: Settings) -> Settings:
    """A copy of the settings with the streaming benchmark's own topics (created) and lake."""
    s = s.model_copy(deep=True)
    tag = uuid.uuid4().hex[:6]
    s.topics.cdr.name, s.topics.cdr_dlq.name = f"bench-cdr-{tag}", f"bench-dlq-{tag}"
    s.topics.churn_labels.name = f"bench-labels-{tag}"
    s.streaming.lake_dir = Path(tempfile.mkdtemp(prefix="churn-bench-lake-"))
    s.streaming.checkpoint_dir = s.streaming.lake_dir / "_checkpoints"
    s.s3.prefix = f"bench-{tag}"  # with the lake on S3: a folder of its own in the bucket
    ensure_topics(s)
    return s


def bench_stream_catchup(s: Settings) -> tuple[float, str, dict]:
    """Streaming job catching up on ~130,000 CDRs (1.2 simulated days) already in Kafka (Bronze,
    Silver, quarantine, features merged and pushed to Feast): events/s end to end, batch durations."""
    s = _stream_bench_settings(s)
    s.streaming.max_offsets_per_trigger = 30_000
    end = time.time() - DAY
    report = run_backfill(s, Simulator(seed=2, start_s=end - 1.2 * DAY, end_s=end, bad_ratio=0.01))
    from churn import feature_store

    feature_store.apply(s)
    elapsed, progress = stream_catch_up(s)
    durations = sorted(p["batchDuration"] / 1000 for p in progress if p["numInputRows"])
    pct = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))]  # noqa: E731
    return report.cdr_messages / elapsed, "events/s", {
        "events": report.cdr_messages, "elapsed_s": round(elapsed, 1), "silver_batches": len(durations),
        "batch_rows_max": 30_000, "batch_duration_p50_s": round(pct(0.5), 1),
        "batch_duration_p99_s": round(pct(0.99), 1)}


def _query_alone(s: Settings, query: str) -> list[tuple[int, float]]:
    """One of the job's queries alone to the end of the topic: (rows, seconds) of each of its batches.
    ``bronze``: Spark's Kafka source into Bronze; ``silver``: validation, de-duplication, Silver, quarantine,
    accounting, features merged, pushed to Feast and recorded."""
    from streaming.job import StreamingJob

    job = StreamingJob(s, available_now=True)
    if query == "silver":
        job.prepare()
    {"bronze": job.start_bronze, "silver": job.start_silver}[query]().awaitTermination()
    started = time.perf_counter()
    job.wait_for_batches()  # the last batch's work on the driver (each batch's time holds the work of the one before)
    batches = [(p["numInputRows"], p["batchDuration"] / 1000) for p in job.queries[0].recentProgress]
    batches[-1] = (batches[-1][0], batches[-1][1] + time.perf_counter() - started)
    job.spark.stop()
    return batches


ALONE_BATCH_ROWS = 150_000


def _backlog(s: Settings) -> tuple[Settings, int]:
    """The streaming benchmark's settings with a topic of its own holding ~760,000 CDRs (6 simulated days, 1 %
    invalid), Feast's definitions applied, batches capped at ``ALONE_BATCH_ROWS``; and the CDRs produced."""
    from churn import feature_store

    s = _stream_bench_settings(s)
    s.streaming.bronze_max_offsets_per_trigger = s.streaming.max_offsets_per_trigger = ALONE_BATCH_ROWS
    end = time.time() - DAY
    report = run_backfill(s, Simulator(seed=2, start_s=end - 6 * DAY, end_s=end, bad_ratio=0.01))
    feature_store.apply(s)
    return s, report.cdr_messages


def _warm_rate(batches: list[tuple[int, float]], events: int) -> tuple[float, str, dict]:
    """Events/s of the warm full batches (the first two, a cold JVM and cold Python workers, left out)."""
    warm = [(rows, sec) for rows, sec in batches[2:] if rows >= 0.99 * ALONE_BATCH_ROWS]
    if not warm:
        raise RuntimeError(f"no warm full batch among {batches}")
    rows, seconds = sum(r for r, _ in warm), sum(sec for _, sec in warm)
    return rows / seconds, "events/s", {
        "events": events, "batch_rows_max": ALONE_BATCH_ROWS, "warm_batches": len(warm),
        "batches_rows_seconds": [(r, round(sec, 2)) for r, sec in batches]}


def bench_stream_bronze_alone(s: Settings) -> tuple[float, str, dict]:
    """A ceiling for the streaming job: its Bronze query alone (Spark's Kafka source into a Delta table, no
    Python per record, nothing else running) catching up on ~760,000 CDRs in batches of 150,000, in a
    fresh JVM; events/s of its warm full batches (the first two, a cold JVM, are left out). The whole
    job reads the same records, writes the same Bronze and then does all of Silver's work too."""
    s, events = _backlog(s)
    return _warm_rate(in_fresh_process(_query_alone, s, "bronze"), events)


def bench_stream_alone(s: Settings) -> dict:
    """Bronze's query alone and the job's silver query alone on the same ~760,000 CDRs, each in a fresh JVM
    and with checkpoints and tables of its own, in batches of 150,000: Bronze (the ceiling the targets are
    stated against) and Silver as the job runs it (with ``streaming.bronze_writer`` = ``silver_batch``, its
    batches write Bronze too: everything the job does). The job cannot sustain more than the silver query
    alone, and with Bronze a query of its own reading the same records on the same cores, more than
    ``1 / (1/bronze + 1/silver)``: ``bound``, as a fraction of Bronze alone, bounds the sustained ratio."""
    s, events = _backlog(s)
    bronze = _warm_rate(in_fresh_process(_query_alone, s, "bronze"), events)
    s = _own_lake(s)
    silver = _warm_rate(in_fresh_process(_query_alone, s, "silver"), events)
    folded = s.streaming.bronze_writer == "silver_batch"
    bound = silver[0] if folded else 1 / (1 / bronze[0] + 1 / silver[0])
    return {"bronze": bronze, "silver": silver, "bound": bound}


def _own_lake(s: Settings) -> Settings:
    """The settings with a lake and checkpoints of their own (the same topics)."""
    s = s.model_copy(deep=True)
    s.streaming.lake_dir = Path(tempfile.mkdtemp(prefix="churn-bench-lake-"))
    s.streaming.checkpoint_dir = s.streaming.lake_dir / "_checkpoints"
    return s


def _live_feed(s: Settings, rate: float, seconds: float) -> None:
    """CDRs of 2,000 customers with wall-clock event times at ``rate`` events/s for ``seconds``. Each CDR moves
    the simulation's own clock on by its share of the customers' daily rate, so the simulation spans a year:
    30 days held about a million CDRs, two minutes at 9,000/s."""
    import threading

    from churn.simulator.produce import run_live

    now = time.time()
    sim = Simulator(seed=5, start_s=now, end_s=now + 365 * DAY, customers=2000, mode="live", labels_from_s=now)
    run_live(s, sim, rate, seconds, threading.Event(), warn=lambda _m: None)


def bench_stream_sustained(s: Settings, rates: dict[str, float] | None = None, stop_when_behind: bool = True,
                           bronze: bool = True, seconds: float = SUSTAINED_SECONDS) -> dict:
    """Streaming job under live traffic at fixed rates (wall-clock event times; Bronze, Silver,
    features to Feast): for each rate, whether the consumer lag stays steady, micro-batch duration
    p50/p99 and feature freshness p50/p99 (now minus the newest event time pushed to Feast, sampled
    every second once the job has caught up with the start), after a 30 s warm-up at 2,000/s. The
    figure is the highest rate held. ``rates``: figure name -> rate (default: ``SUSTAINED_RATES``).
    ``bronze=False``: the job without its Bronze query (the silver and profiles queries only). ``seconds``: how
    long each rate is fed (its freshness p99 per minute is in the detail)."""
    rates = rates or {f"stream_sustained_{rate}_freshness_p99": rate for rate in SUSTAINED_RATES}
    from churn import feature_store
    from churn.transport import end_offsets
    from churn import storage
    from streaming.job import StreamingJob, committed_offsets

    s = _stream_bench_settings(s)
    s.streaming.starting_offsets = "latest"
    feature_store.apply(s)
    job = StreamingJob(s)
    if bronze:
        job.start()
    else:
        job.prepare()
        job.start_silver()
        job.start_profiles()
    silver = next(q for q in job.queries if q.name == "silver")
    bronze = bronze and job.bronze_writer == "query"  # Bronze's own query, with a lag of its own

    def lag(query: str = "silver") -> int:
        """Records on ``cdr`` that the query has not committed yet."""
        return sum(end_offsets(s, s.topics.cdr.name).values()) - sum(
            committed_offsets(s, storage.join(storage.checkpoints_url(s), query), s.topics.cdr.name).values())

    out, held = {}, 0.0
    try:
        while silver.lastProgress is None:  # the first (empty) batch
            time.sleep(1)

        def feed(rate: float, seconds: float):
            """The producer in a process of its own, as producers are: in the job's process it took the
            GIL from the driver's Python work (feature merge, Feast push)."""
            import multiprocessing

            return multiprocessing.get_context("spawn").Process(target=_live_feed, args=(s, rate, seconds),
                                                                daemon=True)

        # warm-up, not measured: the first batches with rows start the Python workers, the state store
        # and the JIT (a cold first batch took 25-33 s in the side-by-side bench)
        warm_up = feed(SUSTAINED_WARM_UP[0], SUSTAINED_WARM_UP[1])
        warm_up.start()
        warm_up.join()
        deadline = time.time() + 120
        while max(lag(), lag("bronze") if bronze else 0) > 0 and time.time() < deadline:  # both warm
            time.sleep(1)
        for figure, rate in rates.items():
            producer = feed(rate, seconds)
            first_batch = silver.lastProgress["batchId"]  # (recentProgress keeps the last 100 only)
            producer.start()
            lags, bronze_lags, fresh = [], [], []
            minutes: dict[int, list[float]] = {}  # minute of the run -> freshness samples
            started = time.time()
            while producer.is_alive():
                time.sleep(1)
                lags.append(lag())
                bronze_lags.append(lag("bronze") if bronze else 0)
                if job.last_pushed_ref_time > started:
                    fresh.append(time.time() - job.last_pushed_ref_time)
                    minutes.setdefault(int((time.time() - started) // 60), []).append(fresh[-1])
            producer.join()
            progress = [p for p in silver.recentProgress if p["batchId"] > first_batch and p["numInputRows"]]
            batches = sorted(p["batchDuration"] / 1000 for p in progress)
            batch_rows = sorted(p["numInputRows"] for p in progress)
            # steady: over the second half of the run the lag (a saw-tooth, one tooth per batch) grows, by
            # its least-squares trend, by less than one trigger interval of events; Bronze's (its own query,
            # larger batches) by less than one of its trigger intervals
            growth, bronze_growth = trend(lags), trend(bronze_lags)
            steady = bool(lags) and growth <= rate * s.streaming.trigger_s \
                and bronze_growth <= rate * s.streaming.bronze_trigger_s
            pct = lambda xs, q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None  # noqa: E731
            fresh.sort()
            out[figure] = (pct(fresh, 0.99) if fresh else -1.0, "s", {
                "rate": rate, "seconds": seconds, "lag_steady": steady, "lag_growth_second_half": round(growth), "lag_end": lags[-1] if lags else None,
                "lag_max": max(lags) if lags else None, "bronze_lag_growth_second_half": round(bronze_growth),
                "bronze_lag_max": max(bronze_lags) if bronze_lags else None, "freshness_p50_s": pct(fresh, 0.5),
                "batch_duration_p50_s": pct(batches, 0.5), "batch_duration_p99_s": pct(batches, 0.99),
                "batch_rows_p50": batch_rows[len(batch_rows) // 2] if batch_rows else None,
                "batches": len(batches),
                "freshness_p99_s_by_minute": [pct(sorted(minutes[m]), 0.99) for m in sorted(minutes)]})
            print(f"rate {rate}/s: steady={steady} (growth {growth:,.0f}) lag end {lags[-1] if lags else None} max {max(lags) if lags else None}, "
                  f"freshness p50 {pct(fresh, 0.5)} p99 {pct(fresh, 0.99)} s, batches p50 {pct(batches, 0.5)} "
                  f"p99 {pct(batches, 0.99)} s", flush=True)
            if not steady and stop_when_behind:
                break
            held = rate if steady else held
            drain_started = time.time()
            deadline = drain_started + 120
            while max(lag(), lag("bronze") if bronze else 0) > 0 and time.time() < deadline:  # drain first
                time.sleep(1)
            # how long Bronze (which yields the cores to Silver) took to catch up once the traffic stopped
            drained = time.time()
            out[figure][2]["drained_after_s"] = round(drained - drain_started) if drained < deadline else None
    finally:
        job.stop()
        job.spark.stop()
    out["stream_sustained_rate"] = (held, "events/s", {"rates_tried": list(rates.values())[:len(out)],
                                                       "seconds_each": seconds})
    return out


def trend(lags: list[int]) -> float:
    """How much a consumer lag (a saw-tooth, one tooth per batch) grows over the second half of a run, by its
    least-squares trend (0 for too few samples)."""
    half = lags[len(lags) // 2:]
    return float(np.polyfit(np.arange(len(half)), half, 1)[0]) * len(half) if len(half) > 2 else 0.0


REALTIME_STREAM_FRACTIONS = (0.10, 0.25, 0.40, 0.50)


def bench_realtime_stream(s: Settings) -> dict:
    """The streaming targets and their ceiling in one run, so that each ratio compares figures measured
    together on the same machine: the Bronze query alone and the silver query alone (median of 3), the bound
    they set on the sustained rate, the whole streaming job live at 10, 25, 40 and 50 % of Bronze alone
    (feature freshness, lag steady or not), and the ratios the targets are stated in."""
    out: dict = {}
    alone = [bench_stream_alone(s) for _ in range(RUNS)]
    bronze = [a["bronze"][0] for a in alone]
    silver = [a["silver"][0] for a in alone]
    ceiling, silver_rate = statistics.median(bronze), statistics.median(silver)
    folded = s.streaming.bronze_writer == "silver_batch"
    out["realtime_bronze_alone_rate"] = (ceiling, "events/s", {"runs": [round(r) for r in bronze]})
    out["realtime_silver_alone_rate"] = (silver_rate, "events/s", {"runs": [round(r) for r in silver]})
    out["realtime_silver_alone_vs_bronze_alone"] = (silver_rate / ceiling, "x", {
        "silver_alone": round(silver_rate), "bronze_alone": round(ceiling)})
    # the silver query bounds the job; with Bronze a query of its own, both read every record on the same
    # cores: r/bronze + r/silver <= 1 at any sustained rate r
    bound = statistics.median(a["bound"] for a in alone)
    out["realtime_stream_sustained_bound_vs_bronze_alone"] = (bound / ceiling, "x", {
        "bound_events_per_s": round(bound), "bronze_alone": round(ceiling), "silver_alone": round(silver_rate),
        "bronze_writer": s.streaming.bronze_writer, "target": 0.5})
    figures = {f"realtime_stream_freshness_p99_at_{round(f * 100)}pct": round(f * ceiling)
               for f in REALTIME_STREAM_FRACTIONS}
    live = bench_stream_sustained(s, figures, stop_when_behind=False)
    held = 0.0
    for (name, rate), fraction in zip(figures.items(), REALTIME_STREAM_FRACTIONS):
        if name in live:
            value, unit, detail = live[name]
            out[name] = (value, unit, {**detail, "fraction_of_ceiling": fraction, "ceiling": round(ceiling)})
            held = fraction if detail["lag_steady"] else held
    out["realtime_stream_sustained_vs_bronze_alone"] = (held, "x", {
        "fractions_tried": list(REALTIME_STREAM_FRACTIONS), "ceiling": round(ceiling), "target": 0.5})
    if not folded:  # the freshness the rest of the job gives at 25 %, with Bronze's query not competing for the cores
        name = "realtime_stream_freshness_p99_at_25pct_without_bronze"
        value, unit, detail = bench_stream_sustained(s, {name: figures["realtime_stream_freshness_p99_at_25pct"]},
                                                     stop_when_behind=False, bronze=False)[name]
        out[name] = (value, unit, {**detail, "fraction_of_ceiling": 0.25, "ceiling": round(ceiling)})
    # A micro-batch costs a fixed part plus a part per record (least squares over the rates' median
    # batches). Fed at r events/s, a batch of duration D holds r*D records, so D = fixed / (1 - r*per_record)
    # and features are up to about two batches old: that, not a tuning knob, bounds freshness.
    points = [(d["batch_rows_p50"], d["batch_duration_p50_s"]) for _, _, d in (live[n] for n in figures if n in live)
              if d.get("batch_rows_p50") and d.get("batch_duration_p50_s")]
    if len(points) >= 2:
        per_record, fixed = np.polyfit([r for r, _ in points], [d for _, d in points], 1)
        out["realtime_stream_batch_fixed_s"] = (float(fixed), "s", {"points_rows_seconds": points})
        out["realtime_stream_batch_per_record_us"] = (float(per_record) * 1e6, "µs", {"points_rows_seconds": points})
    return out


def bench_realtime_score(s: Settings) -> dict:
    """The scoring targets and their ceiling in one run: Faust alone (median of 3), the scoring worker (max
    rate, latency produced and visible to a read_committed consumer at 25/50/75 % of its max, RSS after
    1 M CDRs), the scoring work alone without Faust (median of 3) and the bound it and Faust set on a
    worker, the worker with its scoring taken out fed at the same rates (the floor under visible latency),
    and the ratios the targets are stated in."""
    out: dict = {}
    # Faust alone as the worker runs it (records delivered eagerly) and as shipped, alternating
    faust, stock = [], []
    for _ in range(RUNS):
        faust.append(bench_faust_alone(s)[0])
        stock.append(bench_faust_alone(s, eager=False)[0])
    faust_rate, stock_rate = statistics.median(faust), statistics.median(stock)
    out["realtime_faust_alone_rate"] = (faust_rate, "events/s", {"runs": [round(r) for r in faust],
                                                                 "delivery": "eager"})
    out["realtime_stock_faust_alone_rate"] = (stock_rate, "events/s", {"runs": [round(r) for r in stock],
                                                                       "delivery": "stock"})
    scoring = bench_scoring(s)
    score_max, _, score_detail = scoring["score_max_rate"]
    out["realtime_score_max_rate"] = (score_max, "events/s", score_detail)
    out["realtime_score_vs_faust_alone"] = (score_max / faust_rate, "x", {"faust_alone": round(faust_rate),
                                                                           "target": 0.5})
    out["realtime_score_vs_stock_faust_alone"] = (score_max / stock_rate, "x", {
        "stock_faust_alone": round(stock_rate), "target": 0.5})
    # the worker does Faust's work and the scoring work on one core: 1/faust + 1/work seconds per CDR at best
    work, work_detail = bench_score_work_alone(s)
    work_rate = statistics.median(work)
    bound = 1 / (1 / faust_rate + 1 / work_rate)
    out["realtime_score_work_alone_rate"] = (work_rate, "events/s", {**work_detail, "runs": [round(w) for w in work]})
    out["realtime_score_bound_vs_faust_alone"] = (bound / faust_rate, "x", {
        "bound_events_per_s": round(bound), "faust_alone": round(faust_rate), "work_alone": round(work_rate),
        "target": 0.5})
    out["realtime_score_vs_bound"] = (score_max / bound, "x", {"bound_events_per_s": round(bound),
                                                               "score_max": round(score_max)})
    p50_detail = scoring["score_latency_p99_at_50pct"][2]
    out["realtime_score_produced_p99_at_50pct"] = (scoring["score_latency_p99_at_50pct"][0], "ms", p50_detail)
    out["realtime_score_visible_p99_at_50pct"] = (p50_detail["visible_p99_ms"], "ms", {**p50_detail, "target_ms": 150})
    out["realtime_score_worker_rss"] = (*scoring["score_worker_rss"][:1], "MB",
                                        {**scoring["score_worker_rss"][2], "target_mb": 500})
    # the floor under visible latency: the same worker with its scoring taken out, fed at the same rates
    echo = bench_echo_latency(s, [frac * score_max for frac in (0.25, 0.5, 0.75)])
    for frac, (rate, detail) in zip((0.25, 0.5, 0.75), echo.items()):
        pct = int(frac * 100)
        out[f"realtime_echo_visible_p99_at_{pct}pct"] = (detail["visible_p99_ms"], "ms", detail)
        scored = scoring[f"score_latency_p99_at_{pct}pct"][2]["visible_p99_ms"]
        out[f"realtime_score_visible_p99_vs_echo_at_{pct}pct"] = (scored / detail["visible_p99_ms"], "x", {
            "score_visible_p99_ms": scored, "echo_visible_p99_ms": detail["visible_p99_ms"],
            "rate_events_per_s": round(rate)})
    return out


LONG_RUN_S = 300.0
LONG_RUN_FRACTIONS = (0.40, 0.50)


def bench_realtime_stream_long(s: Settings) -> dict:
    """The whole streaming job live for 5 minutes at 40 and 50 % of the Bronze-alone ceiling, one after the
    other on one stack, the ceiling (and the silver query alone) measured in the same invocation, before the
    live runs and again after them (the machine's speed drifts within the hour): whether the lag holds over
    minutes, and feature freshness p99 over each run and by minute."""
    before = bench_stream_alone(s)
    ceiling = before["bronze"][0]
    out = {"realtime_stream_long_bronze_alone_rate": (ceiling, "events/s", {"when": "before the live runs"}),
           "realtime_stream_long_silver_alone_vs_bronze_alone": (before["silver"][0] / ceiling, "x", {
               "silver_alone": round(before["silver"][0]), "bronze_alone": round(ceiling)})}
    for fraction in LONG_RUN_FRACTIONS:
        name = f"realtime_stream_freshness_p99_at_{round(fraction * 100)}pct_5min"
        value, unit, detail = bench_stream_sustained(s, {name: round(fraction * ceiling)}, stop_when_behind=False,
                                                     seconds=LONG_RUN_S)[name]
        out[name] = (value, unit, {**detail, "fraction_of_ceiling": fraction, "ceiling": round(ceiling)})
    after = bench_stream_alone(s)
    out["realtime_stream_long_bronze_alone_rate_after"] = (after["bronze"][0], "events/s", {
        "when": "after the live runs", "silver_alone": round(after["silver"][0])})
    return out


def bench_score_vs_echo(s: Settings) -> dict:
    """The scoring worker's visible latency against the floor of its parts (the echo worker), on one stack,
    at 25 and 50 % of the max rate of the latest ``realtime_score`` run in results.json."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "realtime_score_max_rate" not in results:
        raise SystemExit("run `bench/run.py realtime_score` first: its max rate sets the rates fed")
    return bench_latency_vs_echo(s, results["realtime_score_max_rate"]["value"])


def bench_score_fetch(s: Settings) -> dict:
    """The worker's consumer fetching with its settings against Faust's own fetch (answered at the first
    record), alternating, fed live at half the max rate of the latest ``realtime_score`` run."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "realtime_score_max_rate" not in results:
        raise SystemExit("run `bench/run.py realtime_score` first: its max rate sets the rate fed")
    return bench_fetch_ab(s, results["realtime_score_max_rate"]["value"])


def bench_stream_vs_feast(s: Settings) -> dict:
    """Our streaming job vs Feast's contrib SparkKafkaProcessor on the same topic and Redis, with the
    same feature code and batch cap: events/s of each, the ratio, and the share of customers whose
    served features equal the batch computation over every event (bench/feast_processor.py)."""
    return bench_stream_vs_feast_processor(s, _stream_bench_settings)


def bench_stream_vs_feast_long(s: Settings) -> dict:
    """The side by side with Feast's contrib SparkKafkaProcessor on a backlog four times as long (4.8 simulated
    days, ~590,000 CDRs), so that a cold start weighs a quarter as much: events/s of each, the ratio, correct
    customers (bench/feast_processor.py)."""
    return bench_stream_vs_feast_processor(s, _stream_bench_settings, days=4 * BACKLOG_DAYS,
                                           name="stream_vs_feast_processor_long")


def bench_model_selection_telco(s: Settings) -> dict:
    """Model selection on the IBM Telco profiles: 5-fold ROC AUC of each family (logistic regression,
    random forest, XGBoost) and of the selection made inside each fold, on the same folds."""
    from batch.telco import telco_cross_validation
    from churn.model.families import FAMILY_NAMES

    out = {}
    for family in (*FAMILY_NAMES, "selected"):
        aucs = telco_cross_validation(s, folds=5, family=family)
        out[f"telco_cv_auc_{family}"] = (statistics.mean(aucs), "AUC", {
            "folds": [round(a, 4) for a in aucs], "std": round(statistics.stdev(aucs), 4)})
    return out


def main(selector: str = "") -> None:
    # name -> (function, what it needs: None, "settings" (default ones, no stack) or "stack")
    benches = {"simulator_generate_rate": (bench_simulator_generate, None),
               "simulator_produce_rate": (bench_simulator_produce, "stack"),
               "stream_catchup_rate": (bench_stream_catchup, "stack"),
               "stream_bronze_alone_rate": (bench_stream_bronze_alone, "stack"),
               "stream_sustained": (bench_stream_sustained, "stack"),
               "stream_vs_feast_processor": (bench_stream_vs_feast, "stack"),
               "stream_vs_feast_processor_long": (bench_stream_vs_feast_long, "stack"),
               "score_faust_alone_rate": (bench_faust_alone, "stack"),
               "score": (bench_scoring, "stack"),
               "score_overlay": (bench_overlay, "stack"),
               "score_overlay_with_stream": (bench_overlay_with_stream, "stack"),
               "score_broker_restart": (bench_broker_restart, "stack"),
               "gold": (bench_gold, "settings"),
               "simulator_behaviour_auc": (bench_simulator_behaviour_auc, "settings"),
               "realtime_stream": (bench_realtime_stream, "stack"),
               "realtime_stream_long": (bench_realtime_stream_long, "stack"),
               "realtime_score": (bench_realtime_score, "stack"),
               "score_vs_echo": (bench_score_vs_echo, "stack"),
               "score_fetch": (bench_score_fetch, "stack"),
               "score_work_by_batch": (bench_score_work_by_batch, "stack"),
               "api": (bench_api, "stack"),
               "model_selection_telco": (bench_model_selection_telco, "settings"),
               "model_call": (bench_model_call, "settings"),
               "security": (bench_security, "stack"),
               "stream_s3": (bench_stream_s3, "stack"),
               "chaos": (bench_chaos, None),
               "security_stream": (bench_security_stream, "stack"),
               "score_commit_interval": (bench_commit_interval, "stack"),
               "stream_dedup_state": (bench_dedup_state, "settings"),
               "stream_dedup_live": (bench_dedup_live, "stack"),
               "stream_jit_catchup": (bench_stream_jit_catchup, "stack"),
               "stream_jit_live": (bench_stream_jit_live, "stack"),
               **{f"stream_ab_{change}": (bench_for(change), "stack") for change in CHANGES}}
    # a name selects every benchmark containing it; a trailing "$" selects that one alone ("score$")
    exact = selector.endswith("$")
    chosen = {n: b for n, b in benches.items() if (n == selector[:-1] if exact else selector in n)}
    settings = None
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    try:
        for name, (fn, needs) in chosen.items():
            if needs == "stack" and settings is None:
                settings = settings_from(stack_env(Path(tempfile.mkdtemp(prefix="churn-bench-"))))
                stack.up(settings)
                ensure_topics(settings)
            runs = RUNS_BY_BENCH.get(name, RUNS)
            figures: dict[str, tuple[list, str, dict]] = {}
            for i in range(runs):
                out = fn(settings) if needs == "stack" else fn(Settings()) if needs == "settings" else fn()
                for fig, (value, unit, extra) in (out if isinstance(out, dict) else {name: out}).items():
                    values, _, _ = figures.setdefault(fig, ([], unit, extra))
                    values.append(value)
                    figures[fig] = (values, unit, extra)
                    print(f"{fig} run {i + 1}: {value:,.{3 if unit in ('x', 'AUC') else 1}f} {unit}", flush=True)
            for fig, (values, unit, extra) in figures.items():
                before = results.get(fig)
                # the machine's speed varies from day to day: the last few earlier results stay beside the new one
                earlier = ([{k: before[k] for k in ("value", "runs", "date") if k in before}] + before.get("earlier", [])
                           if before else [])[:EARLIER_KEPT]
                results[fig] = {
                    "name": fig,
                    "value": round(statistics.median(values), 3 if unit in ("x", "AUC") else 1),  # 0.48, not 0.5
                    "unit": unit,
                    "statistic": f"median of {runs}",
                    "runs": [round(v, 3 if unit in ("x", "AUC") else 1) for v in values],
                    "detail": {k: v for k, v in extra.items() if v is not None},
                    "description": (fn.__doc__ or "").strip(),
                    "command": "make bench  # " + shlex.join(["python", "bench/run.py", selector or name]),
                    "cores": os.cpu_count(),
                    "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                    **({"earlier": earlier} if earlier else {}),
                }
                print(f"{fig}: median {results[fig]['value']:,} {unit}")
    finally:
        if settings is not None:
            stack.down(settings)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
