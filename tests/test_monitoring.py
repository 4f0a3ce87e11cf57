"""Monitoring: promtool on the configs and rules, the dashboards' JSON, and every dashboard
expression run against the real Prometheus of a running pipeline (stream, scorer, simulator)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from conftest import CHURN_BIN, private_pipeline_env, run_cli, stop_all

from churn.config import PROJECT_ROOT
from monitoring.grafana.dashboards import DASHBOARDS, FOLDER, expressions, write

GRAFANA = PROJECT_ROOT / "monitoring" / "grafana"


def test_promtool_checks_the_configs_and_rules_and_the_alert_unit_tests_pass(tmp_path):
    done = run_cli(["monitoring", "check"], {}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == 3
    # the unit tests cover every alert rule, firing and quiet
    rules = yaml.safe_load((PROJECT_ROOT / "monitoring/prometheus/rules/alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    unit = yaml.safe_load((PROJECT_ROOT / "monitoring/prometheus/tests/alerts_test.yml").read_text())
    firing, quiet = set(), set()
    for case in unit["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == quiet == alerts


def test_a_broken_rule_fails_promtool(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(foo[5m]\n")
    done = subprocess.run(["promtool", "check", "rules", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0


def test_metrics_stay_in_process_with_feast_imported_and_a_variable_inherited_from_a_parent_that_had_it():
    """Importing Feast sets PROMETHEUS_MULTIPROC_DIR, which would put prometheus_client in its multiprocess
    mode (metric updates through memory-mapped files); ours keep in-process values, in the process and in a
    child that inherited Feast's variable."""
    import sys

    probe = ("import os, churn, feast; from prometheus_client import values; from streaming.scoring import metrics; "
             "print(values.ValueClass is values.MutexValue, type(metrics.EVENTS._value).__name__, "
             "'feast_metrics_' in os.environ.get('PROMETHEUS_MULTIPROC_DIR', ''))")
    env = {k: v for k, v in os.environ.items() if "PROMETHEUS" not in k.upper()}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "MutexValue", "True"]  # Feast did set it, to no effect on ours
    inherited = {**env, "PROMETHEUS_MULTIPROC_DIR": "/tmp/feast_metrics_parent",
                 "PROMETHEUS_MULTIPROCESS_DIR": "/tmp/feast_metrics_parent"}
    out = subprocess.run([sys.executable, "-c", probe], env=inherited, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "MutexValue", "True"]
    # without the project imported first, the same import order is in multiprocess mode
    bare = "import feast; from prometheus_client import values; print(values.ValueClass is values.MutexValue)"
    out = subprocess.run([sys.executable, "-c", bare], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_dashboard_json_is_current_and_valid_for_grafana_provisioning():
    assert write(check=True) == []  # the files are what dashboards.py generates
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/churn.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and source["type"] == "prometheus"
    uids = set()
    for d in DASHBOARDS:
        data = json.loads((FOLDER / f"{d.uid}.json").read_text())
        assert data["uid"] not in uids and len(data["uid"]) <= 40  # Grafana's uid limit
        uids.add(data["uid"])
        assert data["title"] and data["schemaVersion"] >= 12
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids))
        for p in data["panels"]:
            assert p["type"] in {"timeseries", "stat", "heatmap"}
            pos = p["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0
            assert p["targets"] and p["description"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == source["uid"]
                assert t["expr"].strip()
    assert uids == {"churn-latency", "churn-health", "churn-model"}


def prometheus_query(s, expr: str) -> list:
    url = f"http://{s.prometheus.host}:{s.prometheus.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def values(result: list) -> list[float]:
    return [float(r["value"][1]) for r in result]


#: Panels with no data until the pipeline has seen customers for the 30-day window (the drift drill has 3 days).
NEEDS_MATURE_HISTORY = {'churn_drift_psi{feature="risk"}'}


@pytest.fixture
def pipeline_env(live_stack, live_env, bootstrap_registry, tmp_path):
    """The pipeline on the stack's own metrics ports (the ones its Prometheus scrapes)."""
    return private_pipeline_env(live_env, bootstrap_registry, tmp_path, CHURN_SCORING__DRIFT_MIN_CUSTOMERS="200")


def test_every_dashboard_expression_returns_data_from_the_real_prometheus(pipeline_env, tmp_path):
    from batch.nightly import NightlyReport, StepResult, write_metrics

    env, s = pipeline_env
    log = open(tmp_path / "pipeline.log", "ab")
    start = lambda *args: subprocess.Popen([CHURN_BIN, *args], env={**os.environ, **env},  # noqa: E731
                                           start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    # three days of history (a day's sums are comparable from then on), then live traffic whose data
    # usage has grown fivefold (a drift drill),
    # with invalid and duplicate CDRs so the dead-letter and de-duplication panels have data
    procs = [start("stream"), start("score"),
             start("simulate", "--days", "3", "--rate", "100", "--duration", "600", "--customers", "400",
                   "--data-scale", "5", "--bad-ratio", "0.02", "--duplicate-ratio", "0.02")]
    # a nightly run whose quality gate failed, pushed to the stack's Pushgateway
    from churn.model.alerting import alert_report

    alerting = alert_report([0.95, 0.8, 0.72, 0.6, 0.55, 0.4, 0.35, 0.2, 0.1, 0.05], [1, 1, 0, 1, 0, 0, 1, 0, 0, 0],
                            [0.0, 86400.0, 2 * 86400.0, 0, 0, 0, 0, 0, 0, 0], thresholds=(0.3, 0.5, 0.7),
                            min_band="high", tops=(0.1, 0.5))
    write_metrics(s, NightlyReport(steps=[StepResult("gold", True, 12.5, "staged"),
                                          StepResult("quality_gate", False, 8.5, "quality gate failed")],
                                   alerting=alerting))
    try:
        wanted = expressions()
        assert len(wanted) >= 30
        def alert_states() -> dict:
            return {(a["metric"]["alertname"], a["metric"].get("feature")): a["metric"]["alertstate"]
                    for a in prometheus_query(s, "ALERTS")}

        # the core latency and freshness panels must carry real numbers, not just series
        core = ("churn:score_e2e_latency_seconds:p99", "churn:score_lookup_seconds:p99",
                'churn:stream_batch_duration_seconds:p99{query="silver"}',
                "time() - churn_stream_newest_pushed_event_timestamp_seconds")

        def not_numbers() -> dict:
            got = {expr: values(prometheus_query(s, expr)) for expr in core}
            return {e: v for e, v in got.items() if not v or not all(math.isfinite(x) and x >= 0 for x in v)}

        deadline = time.time() + 420
        while True:
            empty = [(uid, title, expr) for uid, title, expr in wanted
                     if expr not in NEEDS_MATURE_HISTORY and not prometheus_query(s, expr)]
            states, bad = alert_states(), not_numbers()
            if (not empty and not bad and ("ChurnFeatureDrift", "data_mb_1d") in states
                    and ("ChurnQualityGateFailed", None) in states) or time.time() > deadline:
                break
            time.sleep(5)
        assert not empty, f"panels without data: {empty}"
        # the risk's drift is compared once the pipeline has seen customers for 29 days
        # (churn.model.drift.maturity_days): three days of history export none yet
        assert all(not prometheus_query(s, expr) for expr in NEEDS_MATURE_HISTORY)
        assert values(prometheus_query(s, "churn_drift_window_customers"))[0] >= 200
        assert not bad, bad
        assert max(values(prometheus_query(s, "churn:score_events:rate1m"))) > 0
        # Kafka and Redis, probed through the blackbox exporter, answer
        assert values(prometheus_query(s, 'probe_success{job="kafka"}')) == [1.0]
        assert values(prometheus_query(s, 'probe_success{job="redis"}')) == [1.0]
        # alerts evaluated by the real Prometheus: the failed gate fires (no `for`), the data drift is
        # pending (its `for` is 15 min) and labelled with the drifted feature
        assert states.get(("ChurnQualityGateFailed", None)) == "firing", states
        assert states.get(("ChurnFeatureDrift", "data_mb_1d")) in ("pending", "firing"), states
        assert values(prometheus_query(s, 'churn_drift_psi{feature="data_mb_1d"}'))[0] > 0.25
    finally:
        stop_all(procs)
        log.close()
