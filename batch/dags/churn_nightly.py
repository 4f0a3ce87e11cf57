"""The nightly batch as an Apache Airflow 3 DAG: one task per step of ``batch.nightly``.

```
gold -> quality_gate -> publish -> latest_only -> train -> promotion
                        publish -> materialize
every task -> report (a teardown: the run's metrics, whatever happened)
```

Each task runs ``batch.nightly.scheduled_step(step, day)`` in the project's own interpreter
(``.venv/bin/python``, or ``CHURN_PYTHON``) through ``ExternalPythonOperator``: the same step
functions ``churn batch nightly`` runs one after another (the cron way). Airflow itself lives in
its own environment, ``.venv-airflow`` (``make airflow``): its pins conflict with the project's.
Steps hand data to each other through the lake (Gold staged, checked, then published) and the
model registry (a challenger registered, then decided on), never through XComs.

- **Schedule**: 02:30 UTC every night. A run processes the day of its logical date (``ds``): the
  run for day D has the interval [D 02:30, D+1 02:30) and starts at D+1 02:30, once D is over and
  the streaming job has caught up with D's late events.
- **Catchup and backfills**: ``catchup=True`` from ``CHURN_NIGHTLY_START_DATE`` (default
  2026-11-01), so nights the scheduler missed run in order; ``airflow backfill create --dag-id
  churn_nightly --from-date D1 --to-date D2T02:30`` rebuilds Gold day by day, D1 to D2 (any days);
  ``airflow dags test churn_nightly D`` runs the whole DAG for day D (a day from the start date on:
  Airflow runs no task of a manual run before it). One run at a time (``max_active_runs=1``): the
  steps share the lake and the registry. ``latest_only`` skips training and promotion in every run
  but the latest scheduled one (a 30-day backfill rebuilds Gold 30 times and trains no model: the
  training set is every label up to now, the same for each of those days); manual runs train.
- **Retries**: two, ten minutes apart, for a step that crashed. A failed quality gate is final
  (exit code ``BLOCKED``: the same data fails the same way): the run fails at ``quality_gate`` with
  nothing published, ``report`` pushes ``churn_batch_quality_gate_passed 0``
  (alert ``ChurnQualityGateFailed``). A step with nothing to do (too few labels to train on, no
  model to promote) is skipped (exit code ``SKIPPED``), and so are the steps that need it.

The settings are the project's (``churn.toml`` in the repository root, ``CHURN_CONFIG``, ``CHURN_*``
variables in the scheduler's environment), as for ``churn batch nightly``.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.standard.operators.latest_only import LatestOnlyOperator
from airflow.providers.standard.operators.python import ExternalPythonOperator
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("CHURN_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
START = datetime.fromisoformat(os.environ.get("CHURN_NIGHTLY_START_DATE", "2026-11-01")).replace(tzinfo=timezone.utc)
#: ``batch.nightly``'s steps and the one each needs (``STEPS``, ``NEEDS``; this file is parsed by Airflow's
#: interpreter, which cannot import the project: tests/test_airflow.py checks they agree).
STEPS = ("gold", "quality_gate", "publish", "train", "promotion", "materialize")
SKIPPED, BLOCKED = 99, 3  # batch.nightly.SKIPPED, BLOCKED: scheduled_step's exit codes


def nightly_step(step: str, day: str, root: str) -> None:
    """Runs in the project's interpreter: one step of ``batch.nightly`` for ``day``, from the repository root
    (where ``churn batch nightly`` runs from cron), exiting with ``scheduled_step``'s code."""
    import os
    import sys

    os.chdir(root)
    from batch.nightly import scheduled_step

    code = scheduled_step(step, day)
    if code:
        sys.exit(code)


class NightlyStep(ExternalPythonOperator):
    """A ``batch.nightly`` step for the run's logical date in the project's interpreter; exit code ``SKIPPED``
    marks it skipped, ``BLOCKED`` fails it without retries."""

    def __init__(self, *, step: str, **kwargs):
        super().__init__(task_id=step, python=PYTHON, python_callable=nightly_step,
                         op_kwargs={"step": step, "day": "{{ ds }}", "root": str(ROOT)},
                         expect_airflow=False, skip_on_exit_code=SKIPPED, **kwargs)

    def _iter_serializable_context_keys(self):
        # the step takes no Airflow context; without this the operator probes the project's interpreter for
        # pendulum on every run (and logs its ImportError)
        yield from self.BASE_SERIALIZABLE_CONTEXT_KEYS

    def execute_callable(self):
        try:
            return super().execute_callable()
        except subprocess.CalledProcessError as exc:
            if exc.returncode == BLOCKED:
                raise AirflowFailException(
                    f"{self.task_id}: the quality gate failed, nothing was published (its report is in the log "
                    "above). Fix the data or the expectation, then clear this run's gold task and the tasks "
                    "after it (gold reads Silver again).") from None
            raise


with DAG(
    dag_id="churn_nightly",
    description="Gold, quality gate, publish, retrain, promotion, materialize (batch.nightly), one task each",
    schedule=CronDataIntervalTimetable("30 2 * * *", timezone="UTC"),
    start_date=START,
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10), "execution_timeout": timedelta(hours=3)},
    tags=["churn"],
    doc_md=__doc__,
) as dag:
    gold, quality_gate, publish, train, promotion, materialize = (NightlyStep(step=s) for s in STEPS)
    latest_only = LatestOnlyOperator(task_id="latest_only")
    report = NightlyStep(step="report")

    gold >> quality_gate >> publish >> latest_only >> train >> promotion
    publish >> materialize
    [gold, quality_gate, publish, latest_only, train, promotion, materialize] >> report.as_teardown()
