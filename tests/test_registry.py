"""Feast's registry on PostgreSQL (``feast.registry = "postgres"``): Debian's server started by the stack,
the definitions applied by one process and read by the others (the streaming job, this test), with
password authentication; and the values the stream pushes through it equal the batch computation."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydantic import SecretStr
from conftest import CHURN_BIN, free_ports, private_pipeline_env, settings_from
from test_scoring import simulate
from test_streaming import assert_online_features_equal_batch, start_stream

from churn.simulator.produce import run_backfill


@pytest.fixture(scope="module")
def postgres(live_stack, live_env):
    """The stack's PostgreSQL, as ``CHURN_FEAST__REGISTRY=postgres churn stack up`` starts it, in a run directory
    the server's own user (``postgres``) can reach (pytest's temporary folders are private to ours)."""
    from churn.stack.services import postgres_service

    run_dir = Path(tempfile.mkdtemp(prefix="churn-pg-"))
    run_dir.chmod(0o755)
    env = {**live_env, "CHURN_RUN_DIR": str(run_dir), "CHURN_FEAST__REGISTRY": "postgres",
           "CHURN_POSTGRES__PORT": str(free_ports(1)[0])}
    service = postgres_service(settings_from(env))
    assert service.start(60).startswith("started")
    password_file = run_dir / "secrets" / "postgres" / "churn-registry.password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    # every other process: the session's stack, this registry database and its password
    yield {"CHURN_FEAST__REGISTRY": "postgres", "CHURN_POSTGRES__PORT": env["CHURN_POSTGRES__PORT"],
           "CHURN_POSTGRES__PASSWORD_FILE": str(password_file), "CHURN_FEAST__REGISTRY_CACHE_TTL_S": "5"}
    service.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


def registered_views(s) -> set[str]:
    """The feature views the registry database holds for the settings' project (read with SQL, not Feast)."""
    import psycopg

    from churn.security import postgres_password

    p = s.postgres
    with psycopg.connect(host=p.host, port=p.port, dbname=p.database, user=p.username,
                         password=postgres_password(s)) as conn:
        return {row[0] for row in conn.execute("SELECT feature_view_name FROM feature_views WHERE project_id = %s",
                                               (s.feast.project,))}


def test_the_stream_and_readers_share_one_registry_on_postgres(postgres, live_env, bootstrap_registry, tmp_path):
    from churn import feature_store

    env, s = private_pipeline_env(live_env, bootstrap_registry, tmp_path,
                                  CHURN_STREAMING__TRIGGER_S="1", **postgres)  # `churn features apply`, a process
    assert s.feast.registry == "postgres"
    assert registered_views(s) >= {"customer_activity", "customer_activity_named", "customer_profile"}
    assert not (s.run_dir / "feast" / "registry.db").exists() or s.feast.project not in \
        (s.run_dir / "feast" / "registry.db").read_bytes().decode(errors="ignore")
    assert feature_store.is_applied(s)  # this process reads what that one wrote

    report = run_backfill(s, simulate(s, seed=71, customers=200, days=0.3))
    assert report.failed == 0 and report.cdr_messages > 0
    stream = start_stream(env, "--available-now", log=open(tmp_path / "stream.log", "ab"))
    assert stream.wait(timeout=400) == 0, (tmp_path / "stream.log").read_text()[-5000:]
    # the stream found the definitions in the registry database and pushed through them
    assert_online_features_equal_batch(s, s.streaming.lake_dir, at_least=150)

    # the password is required: a wrong one is refused, and nothing is read
    wrong = s.model_copy(update={"postgres": s.postgres.model_copy(update={"password": SecretStr("wrong"),
                                                                          "password_file": None})})
    with pytest.raises(Exception, match="password authentication failed"):
        registered_views(wrong)

    # the `feast` CLI on the generated feature_store.yaml, the password from the environment it names
    from churn.security import postgres_password

    yaml = feature_store.feature_store_yaml_path(s)
    assert "${CHURN_POSTGRES__PASSWORD}" in yaml.read_text() and postgres_password(s) not in yaml.read_text()
    feast = [str(Path(CHURN_BIN).parent / "feast"), "-f", str(yaml), "feature-views", "list"]
    listed = subprocess.run(feast, env={**os.environ, "CHURN_POSTGRES__PASSWORD": postgres_password(s)},
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "customer_activity" in listed.stdout, listed.stderr[-2000:]
    refused = subprocess.run(feast, env={**os.environ, "CHURN_POSTGRES__PASSWORD": "wrong"}, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "customer_activity" not in refused.stdout

