"""The Spark session the job, the nightly batch and the benchmarks share (``churn.spark.spark_session``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from churn.config import Settings

# in a fresh interpreter: a JVM already started by this one (another test's session) would be reused as it is
_SESSION = """
import json
from churn.config import Settings
from churn.spark import spark_session

spark = spark_session(Settings(), "test-session")
jvm = spark.sparkContext._jvm
factory = jvm.java.lang.management.ManagementFactory
hotspot = factory.getPlatformMXBean(jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
print(json.dumps({
    "arguments": list(factory.getRuntimeMXBean().getInputArguments()),
    "tiered_stop_at_level": hotspot.getVMOption("TieredStopAtLevel").getValue(),
    "use_serial_gc": hotspot.getVMOption("UseSerialGC").getValue(),
    "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
}))
spark.stop()
"""


def test_the_spark_jvm_runs_with_the_settings_java_options(tmp_path):
    assert Settings().spark.java_options == ""  # the JVM's full JIT unless set
    env = {**os.environ, "CHURN_RUN_DIR": str(tmp_path),
           "CHURN_SPARK__JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}
    out = subprocess.run([sys.executable, "-c", _SESSION], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "-XX:TieredStopAtLevel=1" in seen["arguments"] and "-XX:+UseSerialGC" in seen["arguments"]
    # the JVM's own view of the flags, not only its command line
    assert seen["tiered_stop_at_level"] == "1"
    assert seen["use_serial_gc"] == "true"
    assert seen["shuffle_partitions"] == str(Settings().spark.shuffle_partitions)


# a Python task that reports what its worker had imported before the task's own function ran, and the daemon's
# threads (its parent process: a fork copies only the calling thread, so the daemon must have one)
_WORKERS = """
import json
from churn.config import Settings
from churn.spark import spark_session

def seen(_rows):
    import os, sys
    daemon = os.getppid()
    yield {"contracts": "churn.contracts" in sys.modules, "daemon_threads": len(os.listdir(f"/proc/{daemon}/task")),
           "daemon_cmdline": open(f"/proc/{daemon}/cmdline").read().split(chr(0))}

spark = spark_session(Settings(), "test-daemon")
print(json.dumps(spark.sparkContext.parallelize(range(2), 2).mapPartitions(seen).collect()))
spark.stop()
"""


def test_python_workers_fork_from_a_single_threaded_daemon_with_the_contracts_imported(tmp_path):
    env = {**os.environ, "CHURN_RUN_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _WORKERS], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    workers = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(workers) == 2
    for worker in workers:
        assert worker["contracts"] is True  # imported by the daemon: the task's function never imports it
        assert worker["daemon_threads"] == 1
        assert "churn.spark_daemon" in worker["daemon_cmdline"]
