"""The retention dashboard on real data: a worker scores simulated CDRs, Gold is built from the same history with
Spark, `churn serve` answers, Prometheus scrapes the worker, and each page renders in Streamlit's AppTest and in
a real headless chromium without an error element."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import CHURN_BIN, free_ports, private_pipeline_env, recent_evening
from test_api import call, caught_up
from test_scoring import start_worker, wait_for, wait_scored

from churn.features import DAY
from churn.lake import LakePaths, silver_frame
from churn.simulator import Simulator
from churn.simulator.produce import ProduceReport, StepProducer

pytestmark = pytest.mark.stack
APP = Path(__file__).resolve().parents[1] / "churn" / "dashboard" / "app.py"
PAGES = ["at-risk", "customer", "model", "pipeline"]


def _prometheus_has(s, promql: str, at_least: float) -> bool:
    from churn.dashboard.client import Prometheus

    got = Prometheus(f"http://{s.prometheus.host}:{s.prometheus.port}").scalar(promql)
    return got is not None and got >= at_least


@pytest.fixture(scope="module")
def served(live_stack, live_env, bootstrap_registry, tmp_path_factory):
    """Scores committed by a real worker, Gold built by the real job, the API up: (env, settings)."""
    from batch.gold import run_gold
    from churn.spark import spark_session

    tmp = tmp_path_factory.mktemp("dashboard")
    env, s = private_pipeline_env(live_env, bootstrap_registry, tmp)  # the stack's scoring and API ports
    end = recent_evening() - DAY
    history = dict(seed=71, start_s=end - 3 * DAY, end_s=end, customers=300, bad_ratio=0.02)
    sim = Simulator(**history)
    worker = start_worker(env, open(tmp / "worker.log", "ab"))
    api = None
    try:
        sender = StepProducer(s, ProduceReport(run_id="dashboard"))
        valid = 0
        for step in sim.backfill_steps(slice_s=3600.0):
            sender.send(step)
            valid += len(step.good)
        sender.flush()
        # Gold from the same history, with Spark, as the nightly job builds it
        spark = spark_session(s, app_name="dashboard-test")
        spark.createDataFrame(silver_frame(Simulator(**history).silver_columns(slice_s=3600.0))).write.format("delta") \
            .partitionBy("event_date").save(LakePaths(s.streaming.lake_dir).silver)
        days = [datetime.fromtimestamp(t, timezone.utc).date() for t in (end - 3 * DAY, end - 1)]
        assert run_gold(s, days[0], days[1], spark=spark).published
        assert len(wait_scored(s, valid, 180)) >= valid
        api = subprocess.Popen([CHURN_BIN, "serve"], env={**os.environ, **env}, start_new_session=True,
                               stdout=open(tmp / "api.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: caught_up(s.api.port), 60, "the API ready, its view caught up")
        wait_for(lambda: _prometheus_has(s, "sum(churn_score_events_total)", valid), 60,
                 "Prometheus scraping the worker")
        yield env, s
    finally:
        for proc in (api, worker):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


def _app(env: dict):
    from streamlit.testing.v1 import AppTest

    from churn.config import get_settings

    os.environ.update(env)
    get_settings.cache_clear()
    return AppTest.from_file(str(APP), default_timeout=30)


def _texts(at) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "caption", "header", "subheader", "info", "warning")
                    for e in getattr(at, kind))


def _nodes(node):
    """Every element under ``node`` (``AppTest.get`` sees only the top level)."""
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def test_each_page_renders_the_stacks_data_in_apptest(served, monkeypatch):
    env, s = served
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _, _, top = call(s.api.port, "/v1/at-risk?band=high&limit=1000")
    _, _, models = call(s.api.port, "/v1/models")

    at = _app(env).run()
    assert not at.exception and not at.error, (at.exception, at.error)
    table = at.dataframe[0].value
    assert list(table["customer"]) == [r["customer_id"] for r in top["items"]]
    assert list(table["risk"]) == [r["risk"] for r in top["items"]]
    assert [m.value for m in at.metric] == [f"{top['bands'][b]:,}" for b in ("low", "medium", "high", "critical")]
    at.selectbox(key="contract").set_value("Month-to-month").run()
    _, _, monthly = call(s.api.port, "/v1/at-risk?band=high&limit=1000&contract=Month-to-month")
    assert list(at.dataframe[0].value["customer"]) == [r["customer_id"] for r in monthly["items"]]

    at.sidebar.radio(key="page").set_value("customer").run()
    assert not at.exception and not at.error, (at.exception, at.error)
    customer = at.text_input(key="customer").value
    _, _, committed = call(s.api.port, f"/v1/customers/{customer}")
    assert at.metric[0].value == f"{committed['risk']:.2f}" and at.metric[1].value == committed["band"]
    assert "Daily behaviour" in _texts(at) and "No Gold table" not in _texts(at)
    assert len(at.get("vega_lite_chart")) >= 3  # risk history, waterfall, daily activity
    assert at.dataframe[-1].value["field"].tolist()[:2] == ["tenure_months", "monthly_charges"]

    at.sidebar.radio(key="page").set_value("model").run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert at.metric[0].value == models["champion"]
    selection = at.dataframe[1].value
    assert sorted(selection["family"]) == ["logistic_regression", "random_forest", "xgboost"]
    images = [n for n in _nodes(at.main) if type(n).__name__ == "Image"]
    assert len(images) == 2  # the champion card's ROC and calibration plots

    at.sidebar.radio(key="page").set_value("pipeline").run()
    assert not at.exception and not at.error, (at.exception, at.error)
    scored = float(at.metric[3].value.replace(",", ""))
    assert scored >= sum(1 for _ in top["items"])  # the worker's counter, through Prometheus
    assert "Invalid CDRs skipped by the scorer" in _texts(at)


def test_each_page_loads_in_a_headless_chromium_without_an_error(served, tmp_path, record_property):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    env, s = served
    (port,) = free_ports(1)
    dash = subprocess.Popen([CHURN_BIN, "dashboard"], env={**os.environ, **env, "CHURN_API__DASHBOARD_PORT": str(port)},
                            start_new_session=True, stdout=open(tmp_path / "dashboard.log", "ab"),
                            stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    shots = Path(os.environ.get("CHURN_DASHBOARD_SCREENSHOTS", tmp_path))
    try:
        wait_for(lambda: call(port, "/_stcore/health")[0] == 200 if _listening(port) else False, 60,
                 "the dashboard up")
        for page in PAGES:
            t0 = time.perf_counter()
            driver.get(f"http://127.0.0.1:{port}/?page={page}")
            while not _rendered(driver, By, page):
                assert time.perf_counter() - t0 < 30, f"page {page} not rendered in 30 s"
                time.sleep(0.05)
            record_property(f"first_render_s_{page}", round(time.perf_counter() - t0, 2))
            time.sleep(1.0)  # charts and tables finish drawing
            errors = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], '
                                                           '[data-testid="stAlertContentError"]')
            assert not errors, (page, [e.text for e in errors])
            heading = driver.find_element(By.CSS_SELECTOR, "h2").text
            assert heading.startswith({"at-risk": "At risk", "customer": "Customer", "model": "Model",
                                       "pipeline": "Pipeline"}[page]), heading
            height = driver.execute_script(
                'return document.querySelector(\'[data-testid="stMainBlockContainer"]\').scrollHeight')
            driver.set_window_size(1440, max(900, min(int(height) + 120, 4000)))
            time.sleep(0.5)
            driver.save_screenshot(str(shots / f"dashboard-{page}.png"))
            driver.set_window_size(1440, 900)
    finally:
        driver.quit()
        dash.send_signal(signal.SIGTERM)
        dash.wait(timeout=30)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


#: Elements each page draws once its data is there (Streamlit's test ids).
EXPECTED = {"at-risk": ["stMetric", "stDataFrame"], "customer": ["stMetric", "stVegaLiteChart"],
            "model": ["stMetric", "stDataFrame", "stImage"], "pipeline": ["stMetric", "stVegaLiteChart"]}


def _rendered(driver, By, page: str) -> bool:
    """The page's script has run to its end and its data elements are drawn."""
    if any(not driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{t}"]') for t in EXPECTED[page]):
        return False
    running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
    return not any("Running" in e.text for e in running)
