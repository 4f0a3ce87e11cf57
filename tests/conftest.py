"""Shared fixtures. Tests that need the real stack get one of their own, on free ports
and in a temporary run directory, so they never touch a stack a user is running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from churn import stack
from churn.config import PROJECT_ROOT, Settings, settings_with_env
from churn.stack.process import free_ports  # noqa: F401  (tests import it from here)
from churn.transport import ensure_topics

CHURN_BIN = str(Path(sys.executable).parent / "churn")

# A pytest-xdist worker runs under execnet, whose ``__main__`` has neither a spec nor a file. PySpark takes
# such a process for its own doctest run and exits on importing ``pyspark.sql.connect`` (Great Expectations
# imports it); a file name keeps the workers' imports as they are in one pytest process.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"


def stack_env(run_dir: Path) -> dict[str, str]:
    """Environment for a private stack: its own run directory and free ports."""
    kafka, controller, redis, prometheus, pushgateway, blackbox, stream_metrics, score_metrics, api, dash, s3, pg, \
        spark_master = free_ports(13)
    return {
        "CHURN_RUN_DIR": str(run_dir),
        "CHURN_KAFKA__PORT": str(kafka),
        "CHURN_KAFKA__CONTROLLER_PORT": str(controller),
        "CHURN_REDIS__PORT": str(redis),
        "CHURN_PROMETHEUS__PORT": str(prometheus),
        "CHURN_PROMETHEUS__PUSHGATEWAY_PORT": str(pushgateway),
        "CHURN_PROMETHEUS__BLACKBOX_PORT": str(blackbox),
        "CHURN_SIMULATOR__METRICS_PORT": "0",
        "CHURN_STREAMING__METRICS_PORT": str(stream_metrics),
        "CHURN_SCORING__METRICS_PORT": str(score_metrics),
        "CHURN_API__PORT": str(api),
        "CHURN_API__DASHBOARD_PORT": str(dash),
        "CHURN_S3__PORT": str(s3),
        "CHURN_POSTGRES__PORT": str(pg),
        "CHURN_SPARK__MASTER_PORT": str(spark_master),  # its web UI on the next port
    }


def recent_evening(hour: int = 18) -> float:
    """The latest ``hour``:00 UTC at least an hour ago: simulated windows ending there are busy
    whatever the time of day the tests run (nights are quiet in the simulator)."""
    import time

    now = time.time()
    day = 86400.0
    t = (now // day) * day + hour * 3600.0
    while t > now - 3600.0:
        t -= day
    return t


settings_from = settings_with_env  # the settings of a process started with os.environ + env


def sqlite_feature_store(settings: Settings, definitions: list):
    """A Feast store for one test: ``definitions`` applied to the settings' registry, a SQLite online
    store under the run directory instead of Redis, the file offline store."""
    from feast import FeatureStore, RepoConfig
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig

    from churn.feature_store import FEATURE_REPO, registry_path

    registry_path(settings).parent.mkdir(parents=True, exist_ok=True)
    fs = FeatureStore(config=RepoConfig(
        project=settings.feast.project, registry=str(registry_path(settings)), provider="local",
        online_store={"type": "sqlite", "path": str(settings.run_dir / "online.db")},
        offline_store=DaskOfflineStoreConfig(type="file"), entity_key_serialization_version=3,
        repo_path=str(FEATURE_REPO)))
    fs.apply(definitions)
    return fs


def stop_all(procs: list[subprocess.Popen], timeout_s: float = 90.0) -> None:
    """SIGTERM each process group still running, then wait for each; SIGKILL a group that outlives ``timeout_s``."""
    import signal

    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def live_members(pgid: int) -> list[str]:
    """Command lines of the live (not zombie) processes of process group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(cmdline.strip())
    return found


def stop_group(pgid: int, timeout_s: float = 90.0) -> list[str]:
    """SIGTERM a process group and wait until none of its processes is alive; SIGKILL what outlives
    ``timeout_s``. Returns the command lines that had to be killed (none: every one stopped on SIGTERM)."""
    import signal
    import time

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + timeout_s
    while (alive := live_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if alive:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def run_cli(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([CHURN_BIN, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=PROJECT_ROOT, **kw)


@pytest.fixture(scope="session")
def live_env(tmp_path_factory) -> dict[str, str]:
    return stack_env(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def live_stack(live_env) -> Settings:
    """A real Kafka broker, Redis and Prometheus for the whole session, with the topics created."""
    settings = settings_from(live_env)
    stack.up(settings)
    ensure_topics(settings)
    yield settings
    import gc

    gc.collect()  # destroy the tests' Kafka clients before their broker goes away (no reconnect noise)
    stack.down(settings)
    assert all(s.state == "stopped" for s in stack.status(settings))


@pytest.fixture(scope="session")
def bootstrap_registry(live_env, tmp_path_factory):
    """One small bootstrap champion for the session; each test gets a copy of the registry."""
    root = tmp_path_factory.mktemp("registry")
    env = {**live_env, "CHURN_SCORING__REGISTRY_DIR": str(root)}
    done = run_cli(["model", "bootstrap", "--customers", "2000", "--days", "60"], env, timeout=300)
    assert done.returncode == 0, done.stderr
    return root


def private_pipeline_env(live_env: dict, registry: Path, tmp_path: Path, **extra: str) -> tuple[dict, Settings]:
    """Settings for one test's own pipeline on the session stack: its own topics, lake, checkpoints,
    scorer group, copy of the model registry and Feast project (applied), plus ``extra`` variables."""
    import shutil
    import uuid

    tag = uuid.uuid4().hex[:6]
    shutil.copytree(registry, tmp_path / "models")
    env = {**live_env,
           "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake"),
           "CHURN_STREAMING__CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           "CHURN_TOPICS__CDR__NAME": f"cdr-{tag}", "CHURN_TOPICS__CDR_DLQ__NAME": f"dlq-{tag}",
           "CHURN_TOPICS__CHURN_SCORES__NAME": f"scores-{tag}", "CHURN_TOPICS__CHURN_ALERTS__NAME": f"alerts-{tag}",
           "CHURN_TOPICS__CHURN_LABELS__NAME": f"labels-{tag}",
           "CHURN_TOPICS__CUSTOMER_PROFILES__NAME": f"profiles-{tag}",
           "CHURN_TOPICS__CUSTOMER_PROFILES_DLQ__NAME": f"profiles-dlq-{tag}",
           "CHURN_SCORING__APP_ID": f"scorer-{tag}", "CHURN_SCORING__REGISTRY_DIR": str(tmp_path / "models"),
           "CHURN_FEAST__PROJECT": f"p{tag}", **extra}
    s = settings_from(env)
    ensure_topics(s)
    apply_features(s)
    return env, s


def apply_features(s: Settings) -> None:
    """What ``churn features apply`` does for ``s``, in this process: a CLI process spends seconds importing
    before it starts. ``feature_store.apply`` points the repo's module-level file sources at ``s``'s lake;
    they are pointed back afterwards, so that no later test reads through another test's lake."""
    from churn import feature_store
    from feature_repo.activity import activity_history
    from feature_repo.profile import profile_source

    sources = (profile_source, activity_history)
    before = [(src.file_options.uri, src.file_options.s3_endpoint_override) for src in sources]
    try:
        feature_store.apply(s)
    finally:
        for src, (uri, endpoint) in zip(sources, before):
            src.file_options.uri, src.file_options.s3_endpoint_override = uri, endpoint
