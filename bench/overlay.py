"""What the overlay costs: the scoring worker with it and without it, same backlog, alternating runs.

The overlay (``streaming.scoring.overlay``) adds to every decision the CDRs the streaming job has not
pushed to Feast yet. Without it (``SCORING__OVERLAY=false``, for this comparison only) a decision
reads the pushed state alone, as the worker did before: one CDR behind or more.

1. **Throughput.** A backlog of ~165,000 CDRs of all 7,043 customers; every customer's state of the
   day before pushed to Feast, covering nothing of this topic (as if the stream had not caught up:
   every CDR goes through the overlay). A fresh worker catches up with the overlay, then one without
   it, then again, alternating (A/B/A/B); events/s between the first and the last commit.
2. **Memory.** One worker with the overlay scores 1,000,000 CDRs with no streaming job running: the
   worst case, the buffer fills to its cap (``SCORING__OVERLAY_MAX_EVENTS``) and stays there. Resident
   memory and buffered CDRs are sampled; the same with the overlay off, same CDRs.
3. **Left out.** CDRs not included, summed over every score of the memory run (0 until the cap is
   reached, then the decisions that lack dropped CDRs say so).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from churn.config import Settings, get_settings
from churn.simulator import Simulator
from churn.simulator.produce import run_backfill
from churn.transport import end_offsets
from scoring import CHURN, DAY, _catch_up, _committed, _env, _push_activity, _rss_mb, _topics, scoring_setup


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return float("nan")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def _memory_run(s: Settings, env: dict, log, total: int) -> dict:
    """A worker scores the topic's ``total`` CDRs; RSS and buffer sampled every 5 s."""
    port = int(env["CHURN_SCORING__METRICS_PORT"])
    worker = subprocess.Popen([CHURN, "score"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    samples = []
    try:
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            done = _committed(s, env["CHURN_SCORING__APP_ID"], s.topics.cdr.name)
            samples.append((done, round(_rss_mb(worker.pid), 1), _metric(port, "churn_score_overlay_buffered_events")))
            if done >= total:
                break
            time.sleep(5)
        left_out = _metric(port, "churn_score_events_not_included_total")
        dropped = _metric(port, "churn_score_overlay_dropped_events")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(90)
    return {"scored": samples[-1][0], "rss_mb": samples[-1][1], "buffered": samples[-1][2], "left_out": left_out,
            "dropped": dropped, "samples_events_rss_mb_buffered": samples[::max(1, len(samples) // 12)]}


def bench_overlay(base: Settings) -> dict[str, tuple[float, str, dict]]:
    """The overlay's cost: catch-up throughput with and without it (alternating, same backlog), and
    resident memory after 1,000,000 CDRs with no streaming job (buffer at its cap)."""
    from conftest import free_ports


    base, tmp = scoring_setup(base, "overlay", "o")
    log = open(tmp / "workers.log", "ab")
    end = time.time() - DAY
    results: dict[str, tuple[float, str, dict]] = {}
    try:
        # the day before the backlog, pushed as the stream would have, covering nothing of the new topics
        tag = uuid.uuid4().hex[:6]
        first = _topics(base, tag)
        _push_activity(first, Simulator(seed=4, start_s=end - 2.4 * DAY, end_s=end - 1.2 * DAY))
        run_backfill(first, Simulator(seed=5, start_s=end - 1.2 * DAY, end_s=end))
        backlog = sum(end_offsets(first, first.topics.cdr.name).values())
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for i, mode in enumerate(["on", "off", "on", "off"]):  # each run: the same topic, a group of its own
            env = _env(first, f"{tag}-{i}", base.scoring.registry_dir, base.streaming.lake_dir, free_ports(1)[0],
                       CHURN_SCORING__OVERLAY="true" if mode == "on" else "false")
            env["CHURN_SCORING__APP_ID"] = f"bench-overlay-{tag}-{i}"
            rate, _ = _catch_up(first, env, backlog, log)
            rates[mode].append(rate)
        on, off = max(rates["on"]), max(rates["off"])
        detail = {"events": backlog, "runs_on": [round(r) for r in rates["on"]],
                  "runs_off": [round(r) for r in rates["off"]], "order": "on, off, on, off"}
        results["score_overlay_rate"] = (on, "events/s", detail)
        results["score_no_overlay_rate"] = (off, "events/s", detail)
        results["score_overlay_vs_no_overlay"] = (on / off, "x", detail)

        # memory after 1,000,000 CDRs, no streaming job: the buffer reaches its cap
        tag = uuid.uuid4().hex[:6]
        big = _topics(base, tag)
        days = 1_000_000 / 138_000
        run_backfill(big, Simulator(seed=7, start_s=end - days * DAY, end_s=end))
        total = sum(end_offsets(big, big.topics.cdr.name).values())
        for mode in ("on", "off"):
            env = _env(big, f"{tag}-{mode}", base.scoring.registry_dir, base.streaming.lake_dir, free_ports(1)[0],
                       CHURN_SCORING__OVERLAY="true" if mode == "on" else "false")
            env["CHURN_SCORING__APP_ID"] = f"bench-overlay-mem-{tag}-{mode}"
            got = _memory_run(big, env, log, total)
            name = "score_overlay_rss_1m_stream_stopped" if mode == "on" else "score_no_overlay_rss_1m"
            results[name] = (got["rss_mb"], "MB", {**got, "cap": base.scoring.overlay_max_events, "events": total})
            if mode == "on":
                results["score_overlay_buffered_1m_stream_stopped"] = (got["buffered"], "events", got)
                results["score_overlay_left_out_1m_stream_stopped"] = (got["left_out"], "events", got)
    finally:
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: (float(v), u, orjson.loads(orjson.dumps(d, default=str))) for k, (v, u, d) in results.items()}


def bench_overlay_with_stream(base: Settings) -> dict[str, tuple[float, str, dict]]:
    """The overlay with the streaming job running: a worker and `churn stream` both catch up on 1,000,000
    CDRs; the worker's resident memory and buffered CDRs sampled (the buffer holds what the stream has
    not pushed yet)."""
    from conftest import free_ports

    from churn import feature_store
    from churn.model.bootstrap import train_bootstrap

    tmp = Path(tempfile.mkdtemp(prefix="churn-bench-overlay-stream-"))
    base = base.model_copy(deep=True)
    base.scoring.registry_dir = tmp / "models"
    base.streaming.lake_dir = get_settings().streaming.lake_dir  # see bench_overlay
    base.feast.project = f"o{uuid.uuid4().hex[:6]}"
    train_bootstrap(base, customers=2000, days=45)
    feature_store.apply(base)
    log = open(tmp / "jobs.log", "ab")
    end = time.time() - DAY
    tag = uuid.uuid4().hex[:6]
    s = _topics(base, tag)
    run_backfill(s, Simulator(seed=7, start_s=end - 1_000_000 / 138_000 * DAY, end_s=end))
    total = sum(end_offsets(s, s.topics.cdr.name).values())
    port = free_ports(1)[0]
    env = _env(s, tag, base.scoring.registry_dir, base.streaming.lake_dir, port,
               CHURN_STREAMING__LAKE_DIR=str(tmp / "lake"), CHURN_STREAMING__CHECKPOINT_DIR=str(tmp / "checkpoints"),
               CHURN_STREAMING__METRICS_PORT=str(free_ports(1)[0]), CHURN_TOPICS__CDR_DLQ__NAME=f"bdlq-{tag}")
    stream = subprocess.Popen([CHURN, "stream"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        got = _memory_run(s, env, log, total)
    finally:
        stream.send_signal(signal.SIGTERM)
        stream.wait(120)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    peak = max(b for _, _, b in got["samples_events_rss_mb_buffered"])
    detail = {**got, "events": total, "peak_buffered_sampled": peak}
    return {"score_overlay_rss_1m_stream_running": (float(got["rss_mb"]), "MB", detail),
            "score_overlay_buffered_1m_stream_running": (float(got["buffered"]), "events", detail),
            "score_overlay_left_out_1m_stream_running": (float(got["left_out"]), "events", detail)}
