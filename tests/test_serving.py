"""The scoring API and the retention dashboard against the real stack. A worker scores simulated CDRs, Gold is built
from the same history with Spark, `churn serve` answers from what the worker committed, live scores come from
Feast's online store; each dashboard page renders in Streamlit's AppTest and in a real headless chromium without an
error element; readiness follows Redis."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import CHURN_BIN, free_ports, private_pipeline_env, recent_evening, run_cli
from test_scoring import _push, read_committed, scores_of, start_worker, wait_for, wait_scored

from churn.feature_store import profile_frame
from churn.features import DAY, SUM_FEATURES
from churn.lake import LakePaths, silver_frame
from churn.model.inputs import MODEL_FEATURES
from churn.model.linear import LinearModel
from churn.model.registry import ModelRegistry
from churn.simulator import Simulator
from churn.simulator.produce import ProduceReport, StepProducer
from streaming.scoring.bands import BAND_INDEX

pytestmark = pytest.mark.stack
APP = Path(__file__).resolve().parents[1] / "churn" / "dashboard" / "app.py"


def call(port: int, path: str, body: dict | None = None, method: str | None = None) -> tuple[int, str, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, ctype, raw = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        status, ctype, raw = e.code, e.headers.get("Content-Type", ""), e.read()
    return status, ctype, (json.loads(raw) if "json" in ctype else raw.decode())


def caught_up(port: int) -> bool:
    try:
        code, _, body = call(port, "/readyz")
    except OSError:  # not listening yet
        return False
    return code == 200 and body["checks"]["scores_view"] == "ok"


def assert_problem(got, status: int, *mentions: str) -> dict:
    code, ctype, body = got
    assert code == status, got
    assert ctype.startswith("application/problem+json"), ctype
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    for m in mentions:
        assert m in body["detail"], body
    return body


def _prometheus_has(s, promql: str, at_least: float) -> bool:
    from churn.dashboard.client import Prometheus

    got = Prometheus(f"http://{s.prometheus.host}:{s.prometheus.port}").scalar(promql)
    return got is not None and got >= at_least


@pytest.fixture(scope="module")
def served(live_stack, live_env, bootstrap_registry, tmp_path_factory):
    """Scores committed by a real worker, Gold built by the real job, the API up: (env, settings, valid CDRs)."""
    from batch.gold import run_gold
    from churn.spark import spark_session

    tmp = tmp_path_factory.mktemp("dashboard")
    # the stack's scoring and API ports (Prometheus scrapes them)
    env, s = private_pipeline_env(live_env, bootstrap_registry, tmp, CHURN_SCORING__RECORD_INPUTS="true",
                                  CHURN_SCORING__MODEL_CHECK_INTERVAL_S="0.5")
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
        yield env, s, valid
    finally:
        for proc in (api, worker):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


@pytest.fixture
def app_with(monkeypatch):
    """``app_with(env)``: the dashboard in Streamlit's AppTest, reading settings from ``env`` (restored, and
    the settings cache cleared, after the test)."""
    from streamlit.testing.v1 import AppTest

    from churn.config import get_settings

    import streamlit as st

    def make(env: dict):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        st.cache_resource.clear()  # the clients, built from the settings
        st.cache_data.clear()
        return AppTest.from_file(str(APP), default_timeout=30)

    yield make
    get_settings.cache_clear()


def _texts(at) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "caption", "header", "subheader", "info", "warning")
                    for e in getattr(at, kind))


def _nodes(node):
    """Every element under ``node`` (``AppTest.get`` sees only the top level)."""
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def test_each_page_renders_the_stacks_data_in_apptest(served, app_with):
    env, s, valid = served
    _, _, top = call(s.api.port, "/v1/at-risk?band=high&limit=1000")
    _, _, models = call(s.api.port, "/v1/models")

    at = app_with(env).run()
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
    assert float(at.metric[3].value.replace(",", "")) == valid  # the worker's counter, through Prometheus
    assert "Invalid CDRs skipped by the scorer" in _texts(at)


def test_each_page_loads_in_a_headless_chromium_without_an_error(served, tmp_path, record_property):
    from churn.dashboard import browser

    env, s, valid = served
    (port,) = free_ports(1)
    dash = subprocess.Popen([CHURN_BIN, "dashboard"], env={**os.environ, **env, "CHURN_API__DASHBOARD_PORT": str(port)},
                            start_new_session=True, stdout=open(tmp_path / "dashboard.log", "ab"),
                            stderr=subprocess.STDOUT)
    driver = browser.chromium()
    shots = Path(os.environ.get("CHURN_DASHBOARD_SCREENSHOTS", tmp_path))
    try:
        wait_for(lambda: _listening(port) and call(port, "/_stcore/health")[0] == 200, 60, "the dashboard up")
        for page in browser.PAGES:
            record_property(f"first_render_s_{page}", round(browser.load(driver, f"http://127.0.0.1:{port}", page), 2))
            time.sleep(1.0)  # charts and tables finish drawing
            assert not browser.errors(driver), (page, browser.errors(driver))
            assert browser.heading(driver).startswith({"at-risk": "At risk", "customer": "Customer", "model": "Model",
                                                       "pipeline": "Pipeline"}[page]), browser.heading(driver)
            browser.screenshot(driver, shots / f"dashboard-{page}.png")
    finally:
        driver.quit()
        dash.send_signal(signal.SIGTERM)  # `churn dashboard` became Streamlit (exec): it stops itself
        assert dash.wait(timeout=30) is not None


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_api_serves_what_the_worker_committed_scores_live_with_exact_explanations_and_follows_redis(
        served, live_stack):
    """Runs last in this module: it pushes a state to Feast, promotes another model and stops Redis."""
    from churn.stack.services import redis_service

    env, s, valid = served
    api_port = s.api.port
    scores = scores_of(s)
    # -- committed scores: each customer's latest, as the worker committed it -------------------
    latest: dict[str, dict] = {}
    for r in scores:  # in each partition's order; a customer's records are all on one partition
        latest[r["customer_id"]] = r
    alerts = {}
    for m in read_committed(s, s.topics.churn_alerts.name):
        a = orjson.loads(m.value())
        alerts[a["customer_id"]] = a
    assert alerts, "the simulation raised no alert: nothing to compare reasons with"
    for cid, r in latest.items():
        code, _, got = call(api_port, f"/v1/customers/{cid}")
        assert code == 200
        for key in ("risk", "band", "scored_at", "model_version", "trigger_event_id", "degraded"):
            assert got[key] == r[key], (cid, key)
        assert got["alert"]["band"] == r["alert_band"] and got["alert"]["alerted_at"] == r["alerted_at"]
        assert got["alert"]["reasons"] == (alerts[cid]["reasons"] if cid in alerts else [])
        assert got["history"][-1]["risk"] == r["risk"]
        assert [h["risk"] for h in got["history"]] == [x["risk"] for x in scores if x["customer_id"] == cid][-100:]

    # -- at risk: every customer at or above the band, riskiest first, in pages ----------------
    expected = sorted((r for r in latest.values() if BAND_INDEX[r["band"]] >= BAND_INDEX["medium"]),
                      key=lambda r: (-r["risk"], r["customer_id"]))
    assert expected, "no customer at medium or above"
    paged, offset = [], 0
    while offset is not None:
        code, _, page = call(api_port, f"/v1/at-risk?band=medium&limit=7&offset={offset}")
        assert code == 200 and page["total"] == len(expected)
        paged += page["items"]
        offset = page["next_offset"]
    assert [(p["customer_id"], p["risk"]) for p in paged] == [(r["customer_id"], r["risk"]) for r in expected]
    contract = profile_frame().set_index("customer_id")["contract"].to_dict()
    monthly = [r["customer_id"] for r in expected if contract.get(r["customer_id"]) == "Month-to-month"]
    _, _, page = call(api_port, "/v1/at-risk?band=medium&limit=1000&contract=Month-to-month")
    assert [p["customer_id"] for p in page["items"]] == monthly and page["total"] == len(monthly)

    # -- the registry ---------------------------------------------------------------------------
    registry = ModelRegistry(s.scoring.registry_dir)
    _, _, models = call(api_port, "/v1/models")
    assert models["champion"] == registry.champion_version()
    assert [m["version"] for m in models["versions"]] == registry.versions()
    _, _, card = call(api_port, f"/v1/models/{registry.champion_version()}")
    assert card["champion"] is True and card["card"] == registry.card(registry.champion_version())

    # -- live score: the same input gives the worker's risk; contributions sum to the log-odds ----
    cid, r = next((c, r) for c, r in latest.items() if r["trigger"] == "cdr" and r["activity_state"])
    state = r["activity_state"]
    _push(s, cid, {**state, **dict(zip(SUM_FEATURES, state["sums"]))})
    code, _, live = call(api_port, f"/v1/customers/{cid}/score", {"at": r["trigger_event_time"]})
    assert code == 200, live
    assert live["risk"] == pytest.approx(r["risk"], abs=2e-6) and live["model_version"] == r["model_version"]
    explained = live["explanation"]
    total = explained["base"] + sum(f["contribution"] for f in explained["features"])
    assert total == pytest.approx(explained["log_odds"], abs=1e-4)
    assert total == pytest.approx(math.log(live["risk"] / (1 - live["risk"])), abs=1e-3)
    assert len(explained["features"]) == len(registry.load_champion().features)
    assert all(f["text"] for f in explained["features"])
    by_name = {f["feature"]: f for f in explained["features"]}
    assert explained["reasons"], "no reason for a live score"
    for x in explained["reasons"]:
        assert x["contribution"] > 0 and x["text"]
        if x["feature"] != "missing_features":
            assert x["contribution"] == pytest.approx(by_name[x["feature"]]["contribution"], abs=1e-4)

    # -- problems: 404, 422 ---------------------------------------------------------------------
    assert_problem(call(api_port, "/v1/customers/NOBODY-0000"), 404, "NOBODY-0000")
    assert_problem(call(api_port, "/v1/customers/NOBODY-0000/score", {}), 404, "NOBODY-0000")
    assert_problem(call(api_port, "/v1/models/xgb-none"), 404, "xgb-none")
    bad = assert_problem(call(api_port, "/v1/at-risk?band=purple"), 422, "query.band")
    assert [e["field"] for e in bad["errors"]] == ["query.band"]
    assert_problem(call(api_port, f"/v1/customers/{cid}/score", {"at": "yesterday"}), 422, "body.at")
    assert_problem(call(api_port, "/v1/at-risk?limit=0"), 422, "query.limit")

    # -- hot reload: a promoted model of another family serves the next live score, explained --------
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, len(MODEL_FEATURES))).astype(np.float32)
    y = (X[:, MODEL_FEATURES.index("care_calls_7d")] + rng.normal(size=600) > 0.5).astype(int)
    linear = LinearModel.fit(X[:400], y[:400], X[400:], y[400:], MODEL_FEATURES)
    copy = registry.register(linear.to_bytes(), {"family": "logistic_regression", "kind": "test"},
                             version="lr-test-1")
    registry.promote(copy, reason="test")
    wait_for(lambda: call(api_port, f"/v1/customers/{cid}/score", {})[2]["model_version"] == copy, 10,
             "the API scoring with the promoted model")
    _, _, live = call(api_port, f"/v1/customers/{cid}/score", {})
    assert live["model_family"] == "logistic_regression"
    assert "standardised" in live["explanation"]["method"]
    explained = live["explanation"]
    assert explained["base"] + sum(f["contribution"] for f in explained["features"]) == pytest.approx(
        math.log(live["risk"] / (1 - live["risk"])), abs=1e-3)
    _, _, models = call(api_port, "/v1/models")
    assert models["champion"] == copy
    assert {m["version"]: m["family"] for m in models["versions"]}[copy] == "logistic_regression"

    # -- metrics: latency by route ---------------------------------------------------------------
    _, _, text = call(api_port, "/metrics")
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("churn_api_request_seconds_count")}
    assert {"/v1/customers/{customer_id}", "/v1/customers/{customer_id}/score", "/v1/at-risk",
            "/v1/models"} <= routes
    count = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith('churn_api_request_seconds_count{method="GET",route="/v1/customers/{customer_id}"'))
    assert count >= len(latest)
    assert call(api_port, "/docs")[0] == 200 and "/v1/at-risk" in call(api_port, "/openapi.json")[2]["paths"]

    # -- readiness follows Redis ---------------------------------------------------------------
    redis = redis_service(live_stack)
    redis.stop()
    try:
        body = assert_problem(call(api_port, "/readyz"), 503, "redis")
        assert body["checks"]["redis"] != "ok" and body["checks"]["broker"] == "ok"
        assert_problem(call(api_port, f"/v1/customers/{cid}/score", {}), 503, "online feature store")
        assert call(api_port, "/healthz")[0] == 200
        assert call(api_port, f"/v1/customers/{cid}")[0] == 200  # committed scores do not need Redis
    finally:
        redis.start(60)
    wait_for(lambda: call(api_port, "/readyz")[0] == 200, 30, "ready again")
    applied = run_cli(["features", "apply"], env, timeout=180)  # the restarted Redis is empty
    assert applied.returncode == 0, applied.stderr


def test_the_pipeline_page_says_prometheus_is_unreachable_instead_of_failing(app_with):
    (port,) = free_ports(1)  # nothing listens there
    at = app_with({"CHURN_PROMETHEUS__PORT": str(port)})
    at.query_params["page"] = "pipeline"
    at.run()
    assert not at.exception, at.exception
    assert [m.value for m in at.metric] == ["no data", "no data", "stream not reporting", "no data"]
    assert any("Prometheus not reachable" in w.value for w in at.warning)
