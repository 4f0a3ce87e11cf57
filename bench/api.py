"""Scoring-API benchmark: latency at a constant request rate, with a real HTTP load generator.

One run of ``bench_api`` on a private stack: a worker (``churn score``) scores a day of CDRs of all
7,043 customers and commits them; Feast holds every customer's activity state; ``churn serve`` reads
the committed scores. Then ``hey`` (20 processes, each on its own customer)
sends a constant total rate for 20 s (one connection each, starts staggered so that the requests are
evenly spaced), three times per route:

- ``GET /v1/customers/{id}`` at 500 requests/s;
- ``POST /v1/customers/{id}/score`` (live score with every feature's contribution) at 200 requests/s.

Then ``churn dashboard`` is opened in headless chromium, each page three times: seconds until the page
has drawn its data (``churn.dashboard.browser``).

Latency is each request's response time as hey records it (``-o csv``), over all processes; the
figure is the median over the three runs of each run's p99 (p50 likewise).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from churn.config import Settings, get_settings
from churn.simulator import Simulator
from churn.simulator.produce import run_backfill

DAY = 86400.0
SECONDS = 20
PROCESSES = 20


def _hey(url: str, customers: list[str], rate: float, post: bool) -> tuple[np.ndarray, int]:
    """One hey process per customer (``{customer}`` in ``url``), one connection each, ``rate`` requests/s in
    total for ``SECONDS``: every request's response time (s), and how many did not answer 200.

    Each process sends on its own ticker, so processes started together would send in bursts of one
    request each; their starts are staggered over one period, which spreads the requests evenly (one
    every ``1 / rate`` s), as a constant rate means."""
    per_process = rate / len(customers)
    procs = []
    for customer in customers:
        cmd = ["hey", "-z", f"{SECONDS}s", "-c", "1", "-q", str(per_process), "-o", "csv"]
        if post:
            cmd += ["-m", "POST", "-T", "application/json", "-d", "{}"]
        procs.append(subprocess.Popen([*cmd, url.replace("{customer}", customer)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True))
        time.sleep(1.0 / rate)
    times, failed = [], 0
    for p in procs:
        out, _ = p.communicate(timeout=SECONDS + 60)
        for row in csv.DictReader(io.StringIO(out)):
            times.append(float(row["response-time"]))
            failed += row["status-code"] != "200"
    return np.asarray(times), failed


def _wait_until_answered(url: str, timeout_s: float, ready=lambda body: True) -> None:
    """Until ``url`` answers 200 with a body ``ready`` accepts (TimeoutError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ready(r.read()):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer as expected within {timeout_s:.0f} s")
        time.sleep(0.5)


def bench_api(base: Settings) -> dict[str, tuple[float, str, dict]]:
    """Scoring API under a constant rate (hey, 20 s x 3): GET a customer's committed score at 500/s and
    POST a live score with explanations at 200/s; p50 and p99 latency, the stack and 7,043 customers'
    committed scores and online features in place."""
    from scoring import _catch_up, _env, _push_activity, _topics
    from conftest import free_ports

    from churn import feature_store
    from churn.model.bootstrap import train_bootstrap

    tmp = Path(tempfile.mkdtemp(prefix="churn-bench-api-"))
    base = base.model_copy(deep=True)
    base.scoring.registry_dir = tmp / "models"
    base.streaming.lake_dir = get_settings().streaming.lake_dir  # Feast's file sources name it at import
    base.feast.project = f"b{uuid.uuid4().hex[:6]}"
    train_bootstrap(base, customers=2000, days=45)
    feature_store.apply(base)
    tag = uuid.uuid4().hex[:6]
    s = _topics(base, tag)
    end = time.time() - DAY
    report = run_backfill(s, Simulator(seed=5, start_s=end - 1.0 * DAY, end_s=end))
    customers = _push_activity(s, Simulator(seed=5, start_s=end - 1.0 * DAY, end_s=end))
    api_port, metrics_port = free_ports(2)
    env = {**_env(s, tag, base.scoring.registry_dir, base.streaming.lake_dir, metrics_port),
           "CHURN_API__PORT": str(api_port)}
    log = open(tmp / "bench.log", "ab")
    _catch_up(s, env, report.cdr_messages, log)  # every CDR scored and committed; the worker stops
    api = subprocess.Popen([str(Path(os.sys.executable).parent / "churn"), "serve"], env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_answered(f"http://127.0.0.1:{api_port}/readyz", 120, lambda body: b'"scores_view":"ok"' in body)
        chosen = list(np.random.default_rng(0).choice(customers, PROCESSES, replace=False))
        url = f"http://127.0.0.1:{api_port}/v1/customers/" + "{customer}"
        results = {}
        for name, rate, post, suffix in (("api_get_customer", 500, False, ""),
                                         ("api_live_score", 200, True, "/score")):
            p50s, p99s, rates, failures = [], [], [], 0
            for _ in range(3):
                times, failed = _hey(url + suffix, chosen, rate, post)
                p50s.append(float(np.percentile(times, 50) * 1000))
                p99s.append(float(np.percentile(times, 99) * 1000))
                rates.append(len(times) / SECONDS)
                failures += failed
            detail = {"target_rps": rate, "achieved_rps": [round(r, 1) for r in rates], "non_200": failures,
                      "p99_ms_runs": [round(v, 2) for v in p99s], "p50_ms_runs": [round(v, 2) for v in p50s],
                      "customers_in_view": len(customers), "load_generator": f"hey, {PROCESSES} processes x 1 "
                      f"connection, staggered starts, {SECONDS} s per run"}
            results[f"{name}_p99_ms_at_{rate}rps"] = (float(np.median(p99s)), "ms", detail)
            results[f"{name}_p50_ms_at_{rate}rps"] = (float(np.median(p50s)), "ms", detail)
        results.update(_dashboard_first_render(env, log, len(customers), s.prometheus.port))
        return results
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(30)
        log.close()


def _dashboard_first_render(env: dict, log, customers: int, env_prometheus_port: int) -> dict[str, tuple[float, str, dict]]:
    """Seconds from opening each dashboard page in headless chromium to its data drawn, median of 3 loads
    (the first load of the session, which starts Streamlit's script runner, is not counted)."""
    from conftest import free_ports

    from churn.dashboard import browser

    (port,) = free_ports(1)
    dash = subprocess.Popen([str(Path(os.sys.executable).parent / "churn"), "dashboard"],
                            env={**env, "CHURN_API__DASHBOARD_PORT": str(port),
                                 "CHURN_PROMETHEUS__PORT": str(env_prometheus_port)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    driver = browser.chromium()
    try:
        _wait_until_answered(f"http://127.0.0.1:{port}/_stcore/health", 60)
        url = f"http://127.0.0.1:{port}"
        browser.load(driver, url, "at-risk")  # warm-up
        out = {}
        for page in browser.PAGES:
            times = [browser.load(driver, url, page) for _ in range(3)]
            assert not browser.errors(driver), (page, browser.errors(driver))
            out[f"dashboard_first_render_s_{page}"] = (float(np.median(times)), "s", {
                "runs_s": [round(t, 2) for t in times], "customers_in_view": customers,
                "browser": "headless chromium (Selenium)", "target_s": 2.0})
        return out
    finally:
        driver.quit()
        dash.send_signal(signal.SIGTERM)
        dash.wait(30)
