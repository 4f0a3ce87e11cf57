"""Spark's Python daemon (``pyspark.daemon``), with what every Python worker of ours imports already imported.

An executor starts one daemon, and the daemon forks a worker for each Python task it runs at once. Each worker
then imports what its function needs: for the streaming job's validation (``streaming.parse``), Spark's worker
loop and the contracts' validator (``churn.contracts``: pydantic, the settings, the schemas), ~0.5 s of CPU per
worker. Imported here, before the daemon forks, they are in every worker from its first instruction, once
per executor instead of once per worker. On two cores the first micro-batch is short of CPU: its workers start
while the JIT compiles.

Only modules that start no thread may be imported here: a fork copies the thread that calls it and no other,
so a lock another thread held would stay held in the worker for ever. pyarrow starts jemalloc's background
thread when imported, so the workers import it, as Spark leaves its worker module for them to import.

``churn.spark.spark_session`` starts every Spark session with this daemon (``spark.python.daemon.module``).
"""

import churn.contracts  # noqa: F401
import pyspark.worker  # noqa: F401
from pyspark import daemon

if __name__ == "__main__":
    daemon.manager()
