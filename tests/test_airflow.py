"""The nightly as an Apache Airflow 3 DAG (``batch/dags/churn_nightly.py``), run with ``dag.test()`` by the
interpreter of ``.venv-airflow`` (``make airflow``; ``make test`` installs it, and without it these tests fail
rather than skip) in temporary Airflow homes (SQLite metadata databases, ``airflow db migrate``d), its tasks
in this interpreter, on a small real lake: 4 simulated days of 250 customers in Silver, their churn labels on
the stack's broker, profiles in Feast (Redis). One day's run goes through every step while, at the same time
(the two runs take about 100 s and 70 s, mostly cold Spark drivers), the next day's, holding a planted quality
failure, stops at the gate with nothing published and nothing trained. Without a stack:
``scheduled_step``'s results, exit codes and metrics, and the DAG file's steps and edges against
``batch.nightly``'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest
from conftest import free_ports, private_pipeline_env, settings_from
from test_batch_gold import plant_quality_failure, simulate
from test_training_any_base import write_silver

from batch import nightly
from churn.config import PROJECT_ROOT
from churn.lake import LakePaths

AIRFLOW_PYTHON = PROJECT_ROOT / ".venv-airflow" / "bin" / "python"
DAG_FILE = PROJECT_ROOT / "batch" / "dags" / "churn_nightly.py"
GOOD, BAD = date(2026, 10, 3), date(2026, 10, 4)  # the simulated days end on 2026-10-04

#: Run by .venv-airflow's interpreter: the DAG file's constants and edges, then (given a day) ``dag.test()``
#: for that day and every task's final state, as JSON on the last line.
DRIVER = """
import importlib.util, json, sys
from datetime import datetime, timezone
spec = importlib.util.spec_from_file_location("churn_nightly", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = {"steps": module.STEPS, "codes": [module.SKIPPED, module.BLOCKED], "catchup": module.dag.catchup,
       "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in module.dag.tasks}}
if len(sys.argv) > 2:
    run = module.dag.test(logical_date=datetime.fromisoformat(sys.argv[2]).replace(tzinfo=timezone.utc))
    out["run"] = str(run.state)
    out["states"] = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print(json.dumps(out))
"""


def airflow_env(home) -> dict:
    """Airflow with its home (metadata database, logs) in ``home``, the DAG folder of this repository, and
    tasks run by this interpreter."""
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(f"{AIRFLOW_PYTHON} missing: run `make airflow` (`make test` does)")
    return {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "CHURN_PYTHON": sys.executable,
            "CHURN_NIGHTLY_START_DATE": "2026-10-01"}  # the simulated days: no task runs before the DAG's start


def start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(AIRFLOW_PYTHON), "-c", DRIVER, str(DAG_FILE), *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT)


def finish(*procs: subprocess.Popen, timeout: float = 600) -> list[dict]:
    """Each driver's JSON line and its log, once every one has ended (killed past ``timeout``)."""
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            outs.append(proc.communicate()[0])
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-12000:]
    return [{**json.loads(out.strip().splitlines()[-1]), "log": out} for out in outs]


def test_the_dag_runs_batch_nightlys_steps_with_its_edges(tmp_path):
    """The DAG file cannot import the project (Airflow's interpreter): its copies of the steps, their order,
    the edges and the exit codes agree with ``batch.nightly``'s; ``latest_only`` sits before training."""
    (dag,) = finish(start(airflow_env(tmp_path)))
    assert tuple(dag["steps"]) == nightly.STEPS and dag["codes"] == [nightly.SKIPPED, nightly.BLOCKED]
    upstream = dag["upstream"]
    assert upstream.pop("latest_only") == ["publish"] and upstream["train"] == ["latest_only"]
    upstream["train"] = ["publish"]
    assert sorted(upstream.pop("report")) == sorted([*nightly.STEPS, "latest_only"])
    assert upstream == {s: [nightly.NEEDS[s]] if s in nightly.NEEDS else [] for s in nightly.STEPS}
    assert dag["catchup"]


@pytest.mark.stack
def test_a_days_run_goes_through_every_step_and_a_bad_day_stops_at_the_gate(live_stack, live_env, tmp_path):
    """Two days' runs at once, each in an Airflow home of its own (``airflow db migrate``d): the good day's
    goes through every step; the other day holds a planted duplicate with a negative charge, and its run
    fails at the quality gate, at once (no retry), with nothing published for that day and nothing trained."""
    from confluent_kafka import Producer
    from deltalake import DeltaTable

    from churn.model.registry import ModelRegistry

    homes = {day: airflow_env(tmp_path / f"airflow-{day}") for day in (GOOD, BAD)}
    migrations = [subprocess.Popen([str(AIRFLOW_PYTHON.parent / "airflow"), "db", "migrate"],
                                   env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True) for env in homes.values()]
    empty = tmp_path / "no-models"
    empty.mkdir()
    env, s = private_pipeline_env(
        live_env, empty, tmp_path, CHURN_RUN_DIR=str(tmp_path / "run"), CHURN_TRAINING__TRIALS="0",
        CHURN_PROMETHEUS__PUSHGATEWAY_PORT=str(free_ports(1)[0]),  # nobody there: the session's alerts stay quiet
        # short-lived Spark drivers on a tiny lake: with the JIT's quick tier alone they take ~20 % less time
        CHURN_SPARK__CONF=json.dumps({"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}))
    cols, labels = simulate()
    write_silver(s, [cols])
    lake = LakePaths(s.streaming.lake_dir)
    plant_quality_failure(lake.silver, BAD)
    p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
    for key, value in labels:
        p.produce(s.topics.churn_labels.name, value, key)
    assert p.flush(30) == 0
    for migration in migrations:
        assert migration.wait(timeout=300) == 0, migration.stdout.read()[-3000:]
    # the bad day's run has a run directory of its own (results, metrics); it reaches neither Feast nor the registry
    good, bad = finish(start({**env, **homes[GOOD]}, GOOD.isoformat()),
                       start({**env, **homes[BAD], "CHURN_RUN_DIR": str(tmp_path / "run-bad")}, BAD.isoformat()))

    assert good["run"] == "success", good["log"][-12000:]
    assert good["states"] == {**{step: "success" for step in nightly.STEPS}, "latest_only": "success",
                              "report": "success"}, good["log"][-12000:]
    registry = ModelRegistry(s.scoring.registry_dir)
    (version,) = registry.versions()  # trained by the good day's run only
    assert registry.card(version)["decision"]["promoted"] is not None and registry.pending() == []
    results = json.loads(nightly.report_path(s, GOOD, GOOD).read_text())["steps"]
    assert [r["name"] for r in results] == list(nightly.STEPS) and all(r["ok"] for r in results)
    assert "churn_batch_quality_gate_passed 1.0" in (s.run_dir / "metrics" / "batch.prom").read_text()

    assert bad["run"] == "failed"
    assert bad["states"] == {"gold": "success", "quality_gate": "failed", "report": "success",
                             **{t: "upstream_failed" for t in ("publish", "latest_only", "train", "promotion",
                                                               "materialize")}}, bad["log"][-12000:]
    assert "expect_column_values_to_be_unique(event_id)" in bad["log"]
    assert "up_for_retry" not in bad["log"]  # a failed gate is final
    bad_dir = tmp_path / "run-bad"
    assert "churn_batch_quality_gate_passed 0.0" in (bad_dir / "metrics" / "batch.prom").read_text()
    results = json.loads((bad_dir / "nightly" / f"{BAD}_{BAD}.json").read_text())["steps"]
    assert [(r["name"], r["ok"], r["blocked"]) for r in results] == [("gold", True, False),
                                                                     ("quality_gate", False, True)]

    # published: the good day alone
    assert {str(d) for d in DeltaTable(lake.gold_customer_day).to_pandas()["event_date"]} == {GOOD.isoformat()}
    assert {str(d) for d in DeltaTable(lake.gold_customer_snapshot).to_pandas()["snapshot_date"]} == {GOOD.isoformat()}
    published = DeltaTable(lake.gold_runs).to_pandas().set_index("date_to")["published"]
    assert published.to_dict() == {GOOD: True, BAD: False}


def raising(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_scheduled_steps_keep_their_results_and_tell_the_scheduler_what_happened(tmp_path, monkeypatch):
    """Without Spark or a stack: each step's result kept with the day's others (a retry replaces its own),
    exit codes for skipped and for a failed gate, other failures raised (a scheduler retries), and the
    report step's metrics from all of them."""
    import batch.gold
    import batch.train
    from batch.gold import QualityGateFailed
    from batch.quality import Check, GateReport
    from batch.train import NotEnoughLabels

    s = settings_from({"CHURN_RUN_DIR": str(tmp_path / "run"),
                       "CHURN_PROMETHEUS__PUSHGATEWAY_PORT": str(free_ports(1)[0])})
    day = date(2026, 10, 4)
    gold = type("Run", (), {"silver_rows": 9, "customer_day_rows": 3, "snapshot_rows": 2, "date_from": day,
                            "date_to": day})
    monkeypatch.setattr(batch.gold, "stage_gold", lambda *a: gold)
    monkeypatch.setattr(batch.gold, "check_gold", lambda *a: GateReport([Check("silver", "x", None, True, "")]))
    assert nightly.scheduled_step("gold", "2026-10-04T02:30:00+00:00", settings=s) == 0

    assert nightly.scheduled_step("quality_gate", day, settings=s) == 0
    monkeypatch.setattr(batch.gold, "publish_gold", raising(OSError("disk full")))
    with pytest.raises(nightly.StepFailed, match="publish 2026-10-04: failed: OSError: disk full"):
        nightly.scheduled_step("publish", day, settings=s)
    monkeypatch.setattr(batch.gold, "publish_gold", lambda *a: gold)
    assert nightly.scheduled_step("publish", day, settings=s) == 0  # the retry
    monkeypatch.setattr(batch.train, "train_challenger", raising(NotEnoughLabels("3 labels")))
    assert nightly.scheduled_step("train", day, settings=s) == nightly.SKIPPED
    assert nightly.scheduled_step("report", day, settings=s) == 0
    saved = json.loads(nightly.report_path(s, day, day).read_text())["steps"]
    assert [(r["name"], r["ok"], r["skipped"]) for r in saved] == [
        ("gold", True, False), ("quality_gate", True, False), ("publish", True, False), ("train", True, True)]
    metrics = (s.run_dir / "metrics" / "batch.prom").read_text()
    assert "churn_batch_quality_gate_passed 1.0" in metrics and 'churn_batch_step_success{step="train"} 1.0' in metrics

    # the next run of the day starts afresh; its gate fails for good
    failed = GateReport([Check("silver", "expect_column_values_to_be_unique", "event_id", False, "2 duplicates")])
    monkeypatch.setattr(batch.gold, "check_gold", raising(QualityGateFailed(failed)))
    assert nightly.scheduled_step("gold", day, settings=s) == 0
    assert nightly.scheduled_step("quality_gate", day, settings=s) == nightly.BLOCKED
    assert nightly.scheduled_step("report", day, settings=s) == 0
    saved = json.loads(nightly.report_path(s, day, day).read_text())["steps"]
    assert [(r["name"], r["ok"], r["blocked"]) for r in saved] == [("gold", True, False), ("quality_gate", False, True)]
    assert "churn_batch_quality_gate_passed 0.0" in (s.run_dir / "metrics" / "batch.prom").read_text()
