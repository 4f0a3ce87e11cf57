"""The Spark session, configured from the settings: any master, Delta Lake, the Kafka source.

Jars come from ``<cache_dir>/jars/spark`` (fetched by Maven from ``jvm/spark/pom.xml``) and
``<cache_dir>/jars/churn`` (the project's own operators, ``jvm/churn-spark``, compiled by
``scripts/build_jvm.sh``), and are given to Spark as local paths: nothing is resolved at run time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from churn import storage
from churn.config import Settings


def spark_jars(settings: Settings) -> list[str]:
    """Delta Lake, the Kafka source and the project's own operators; with the lake on S3, Hadoop's S3A
    connector and the AWS SDK."""
    folder = settings.jars_dir / "spark"
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise RuntimeError(f"Delta/Kafka jars missing in {folder}: run `make setup`")
    own = settings.jars_dir / "churn" / "churn-spark.jar"
    if not own.is_file():
        raise RuntimeError(f"{own} missing: run `make setup`")
    jars.append(str(own))
    if settings.s3.enabled:
        s3a = sorted(str(p) for p in (settings.jars_dir / "s3a").glob("*.jar"))
        if not any("hadoop-aws" in j for j in s3a):
            raise RuntimeError(f"S3A jars missing in {settings.jars_dir / 's3a'}: run `make setup`")
        jars += s3a
    return jars


#: The fair scheduler's pool for work off the freshness path (the streaming job's Bronze query): it gets the
#: cores only when the ``default`` pool, where everything else runs, has no task waiting for one. Sharing the
#: cores as equals, Bronze's large batches (every ``bronze_trigger_s``) held up the Silver query's batch
#: behind them, and with it the features pushed to Feast.
BACKGROUND_POOL = "background"
SCHEDULER_POOLS = f"""<?xml version="1.0"?>
<allocations>
  <pool name="default"><schedulingMode>FIFO</schedulingMode><weight>1000</weight><minShare>1000</minShare></pool>
  <pool name="{BACKGROUND_POOL}"><schedulingMode>FIFO</schedulingMode><weight>1</weight><minShare>0</minShare></pool>
</allocations>
"""


def scheduler_pools_file() -> str:
    """The fair scheduler's allocation file (``SCHEDULER_POOLS``), written once per process."""
    path = Path(tempfile.gettempdir()) / f"churn-spark-pools-{os.getpid()}.xml"
    if not path.exists():
        path.write_text(SCHEDULER_POOLS)
    return str(path)


def cluster_conf(settings: Settings) -> dict[str, str]:
    """Executors' size on the local stack's standalone cluster: one per worker, with the worker's cores and
    memory (nothing for ``local[N]``, or for a cluster of yours: size it with ``spark.conf``)."""
    sp = settings.spark
    if not (sp.standalone_workers and sp.master.startswith("spark://")):
        return {}
    return {"spark.executor.cores": str(sp.worker_cores), "spark.executor.memory": sp.worker_memory,
            "spark.cores.max": str(sp.worker_cores * sp.standalone_workers),
            **({"spark.executor.extraJavaOptions": sp.java_options} if sp.java_options else {}),
            # the executors run the same Python, with the project installed
            "spark.pyspark.python": str(Path(os.sys.executable))}


def checkpoint_conf(settings: Settings) -> dict[str, str]:
    """Streaming checkpoints on a local disk written through Hadoop's ``FileSystem``, not its ``FileContext``
    (Spark's default). Without Hadoop's native library, ``FileContext`` starts a ``chmod`` process to create a
    file and a ``readlink`` process to rename one, and a checkpoint file is both: the offset and commit
    logs took 45-90 ms per batch each, and a state store commit paid the same. ``FileSystem`` renames with
    the same atomic ``rename(2)`` and starts no process: 15-20 ms. Nothing for a lake on S3."""
    if settings.s3.enabled:
        return {}
    return {"spark.sql.streaming.checkpointFileManagerClass":
            "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"}


def spark_session(settings: Settings, app_name: str = "churn"):
    """A SparkSession with Delta Lake and the Kafka source, for ``settings.spark.master``."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", str(Path(os.sys.executable)))
    sp = settings.spark
    builder = (
        SparkSession.builder.master(sp.master)
        .appName(app_name)
        .config("spark.jars", ",".join(spark_jars(settings)))
        .config("spark.driver.memory", sp.driver_memory)
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(sp.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        # commit state by appending a changelog instead of snapshotting RocksDB every batch
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        # no count of the state's rows (the numRowsTotal metric): counting reads every key before it is written
        # or removed, and the de-duplication's timers write three times per new id (11 % of a backlog's time)
        .config("spark.sql.streaming.stateStore.rocksdb.trackTotalNumberOfRows", "false")
        .config("spark.databricks.delta.autoCompact.enabled", "false")
        # Delta replays its log with 50 tasks by default: far too many for small tables on few cores
        .config("spark.databricks.delta.snapshotPartitions", str(sp.shuffle_partitions))
        .config("spark.default.parallelism", str(sp.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Parquet timestamps as UTC instants (TIMESTAMP_MICROS), not Spark's legacy INT96: readers that
        # go by the Parquet files alone (Feast's offline store reads the tables' files with dask) got
        # INT96 as naive times, and Feast's point-in-time join then mixed naive and UTC times
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.scheduler.allocation.file", scheduler_pools_file())
        # Spark's Python daemon with our workers' common imports done before it forks them (churn/spark_daemon.py)
        .config("spark.python.daemon.module", "churn.spark_daemon")
    )
    java = {"spark.driver.extraJavaOptions": sp.java_options} if sp.java_options else {}
    for key, value in {**java, **cluster_conf(settings), **checkpoint_conf(settings), **storage.spark_conf(settings),
                       **sp.conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
