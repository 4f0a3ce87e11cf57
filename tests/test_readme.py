"""The README's copyable command blocks, run, so that the README cannot rot.

Every fenced ``sh`` and ``toml`` block of README.md is listed here with how it is checked; a new
block fails ``test_every_command_block_is_checked`` until it is added:

* ``make demo`` / ``make test``: the Makefile targets run what the README says (``make -n``); the
  demo itself runs end to end in ``tests/test_roundtrip.py`` and ``make test`` is what CI runs;
* "Your own Kafka, Redis and Spark": the block runs as written, with the addresses of the test's
  own broker, Redis and a local Spark master in place of the example hosts, then the kcat one-liner
  produces a CDR: the background ``churn stream`` lands it in Silver and ``churn score`` scores it;
* the same settings as ``churn.toml``: loaded by the settings object, with the example values;
* the kcat one-liner: run as written against the test's broker and topic (above);
* "Secured Kafka and Redis": run as written against a secured stack, in ``tests/test_security.py``;
* the cluster, S3 and PostgreSQL block: its variables give the stack the services and the jobs the
  master, lake and registry it names (below); the same stack runs the streaming job and the nightly's
  Gold in ``tests/test_streaming.py`` and the registry in ``tests/test_registry.py``, on free ports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
from conftest import private_pipeline_env, stop_group
from test_scoring import read_committed

from churn.config import PROJECT_ROOT, Settings
from churn.contracts import CDR
from churn.lake import table_rows

README = PROJECT_ROOT / "README.md"


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _block(language: str, first_line: str) -> str:
    (found,) = [b for b in blocks(language) if b.startswith(first_line)]
    return found


def test_every_command_block_is_checked():
    firsts = [b.splitlines()[0] for b in blocks("sh")] + [b.splitlines()[0] for b in blocks("toml")]
    assert firsts == [
        "make demo   # set up everything, then run the main job end to end on the local stack",
        "export CHURN_KAFKA__BOOTSTRAP_OVERRIDE=broker1:9092,broker2:9092   # your Kafka cluster",
        "export CHURN_SPARK__STANDALONE_WORKERS=2 CHURN_S3__ENABLED=true CHURN_FEAST__REGISTRY=postgres",
        "export CHURN_KAFKA__SECURITY_PROTOCOL=SASL_SSL CHURN_REDIS__ACL=true CHURN_REDIS__TLS=true",
        "printf '7590-VHVEG|{\"event_id\":\"kcat-%s\",\"customer_id\":\"7590-VHVEG\",\"event_time\":\"%s\",\"record_type\":\"voice\",\"direction\":\"outgoing\",\"duration_s\":61.0,\"counterparty\":\"off_net\",\"dropped\":false,\"cell_id\":\"C0421\",\"roaming\":false,\"charge\":0.12}\\n' \"$(date +%s%N)\" \"$(date -u +%Y-%m-%dT%H:%M:%S.000Z)\" | kcat -b 127.0.0.1:19092 -t cdr -X partitioner=murmur2_random -P -K '|'",
        "[kafka]",
    ], "a README command block was added, removed or changed: check it in this file"


def test_the_cluster_s3_and_postgres_block_starts_those_services_and_points_the_jobs_at_them(tmp_path):
    from conftest import settings_from

    from churn import storage
    from churn.stack.services import services

    block = _block("sh", "export CHURN_SPARK__STANDALONE_WORKERS=2")
    exports = dict(re.findall(r"(CHURN_\w+)=(\S+)", block.splitlines()[0]))
    s = settings_from({**exports, "CHURN_RUN_DIR": str(tmp_path)})
    names = [service.name for service in services(s)]
    assert {"postgres", "s3", "spark-master", "spark-worker-1", "spark-worker-2"} <= set(names)
    assert "spark-worker-3" not in names
    assert s.spark.master == f"spark://127.0.0.1:{Settings().spark.master_port}"
    assert storage.lake_url(s) == "s3a://churn/lake" and storage.checkpoints_url(s) == "s3a://churn/checkpoints"
    assert s.feast.registry == "postgres" and s.postgres.local
    assert [line.split("#")[0].strip() for line in block.splitlines()[1:]] == ["churn stack up", "churn stream"]


def test_make_demo_and_make_test_run_what_the_readme_says():
    block = _block("sh", "make demo")
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["make demo", "make test"]
    demo = subprocess.run(["make", "-n", "demo"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "scripts/setup.sh" in demo.stdout and re.search(r"churn demo$", demo.stdout, flags=re.M)
    test = subprocess.run(["make", "-n", "test"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "scripts/setup.sh" in test.stdout and "-m pytest" in test.stdout
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()  # CI runs the README's command


def test_the_toml_block_sets_what_the_environment_block_sets(tmp_path, monkeypatch):
    toml = tmp_path / "churn.toml"
    toml.write_text(_block("toml", "[kafka]"))
    for name in [n for n in os.environ if n.startswith("CHURN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHURN_CONFIG", str(toml))
    from_file = Settings()
    exports = dict(re.findall(r"(CHURN_\w+)=(\S+)", _block("sh", "export CHURN_KAFKA__BOOTSTRAP_OVERRIDE")))
    monkeypatch.delenv("CHURN_CONFIG")
    monkeypatch.chdir(tmp_path / "..")  # no churn.toml here
    for name, value in exports.items():
        monkeypatch.setenv(name, value)
    from_env = Settings()
    assert from_file.kafka.bootstrap_servers == from_env.kafka.bootstrap_servers == "broker1:9092,broker2:9092"
    assert (from_file.redis.host, from_file.redis.port) == (from_env.redis.host, from_env.redis.port) \
        == ("redis.internal", 6379)
    assert from_file.spark.master == from_env.spark.master == "spark://spark-master:7077"


def test_your_own_kafka_redis_and_spark_block_runs_and_a_kcat_cdr_is_streamed_and_scored(
        live_stack, live_env, bootstrap_registry, tmp_path):
    env, s = private_pipeline_env(live_env, bootstrap_registry, tmp_path)
    own = _block("sh", "export CHURN_KAFKA__BOOTSTRAP_OVERRIDE")
    # the example hosts replaced by this test's broker, Redis and a local Spark master; nothing else changes
    own = (own.replace("broker1:9092,broker2:9092", s.kafka.bootstrap_servers)
           .replace("CHURN_REDIS__HOST=redis.internal", f"CHURN_REDIS__HOST={s.redis.host}")
           .replace("CHURN_REDIS__PORT=6379", f"CHURN_REDIS__PORT={s.redis.port}")
           .replace("spark://spark-master:7077", "local[2]"))
    assert "broker1" not in own and "redis.internal" not in own and "spark-master" not in own
    bin_dir = str(Path(sys.executable).parent)
    script = tmp_path / "own.sh"
    script.write_text(f"set -e\nexport PATH={bin_dir}:$PATH\n{own}\njobs -p > {tmp_path / 'pids'}\nwait\n")
    log = open(tmp_path / "own.log", "ab")
    run = subprocess.Popen(["bash", str(script)], env={**os.environ, **env}, cwd=tmp_path, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "pids").exists():
            assert run.poll() is None, (tmp_path / "own.log").read_text()[-3000:]
            assert time.time() < deadline, "the block's foreground commands did not finish"
            time.sleep(0.5)
        kcat = _block("sh", "printf '7590-VHVEG|").replace("127.0.0.1:19092", s.kafka.bootstrap_servers) \
            .replace(" -t cdr ", f" -t {s.topics.cdr.name} ")
        done = subprocess.run(["bash", "-c", kcat], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        (sent,) = [m for m in read_committed(s, s.topics.cdr.name)]
        cdr, bad = CDR.parse(sent.value())
        assert bad is None and cdr["event_id"].startswith("kcat-")
        scored = []
        while not scored:
            assert run.poll() is None, (tmp_path / "own.log").read_text()[-3000:]
            assert time.time() < deadline, "the kcat CDR was not scored"
            scored = [r for r in map(lambda m: orjson.loads(m.value()), read_committed(s, s.topics.churn_scores.name))
                      if r["trigger_event_id"] == cdr["event_id"]]
            time.sleep(1)
        assert scored[0]["customer_id"] == "7590-VHVEG"
        while table_rows(tmp_path / "lake" / "silver") < 1:
            assert run.poll() is None, (tmp_path / "own.log").read_text()[-3000:]
            assert time.time() < deadline, "the kcat CDR did not reach Silver"
            time.sleep(1)
    finally:
        # the whole block (its shell, `churn stream` with its Spark JVM, `churn score`) stops on one SIGTERM
        # to its process group, as a terminal's Ctrl-C or a supervisor stops it: nothing may outlive it
        # (a driver left behind holds its metrics port, and the next job on that port cannot start)
        left = stop_group(run.pid)
        run.wait()
        log.close()
    assert not left, f"still running 90 s after SIGTERM: {left}"
