"""One typed settings object for the whole system.

Values come, highest priority first, from: keyword arguments, environment
variables (``CHURN_`` prefix, ``__`` between section and field), an optional
TOML file (``churn.toml`` in the working directory, or the path in
``CHURN_CONFIG``), and the safe local defaults below. There are no credentials
here: the local stack listens on loopback only.

>>> s = Settings(kafka={"port": 29092})
>>> s.kafka.bootstrap_servers
'127.0.0.1:29092'
>>> s.topics.cdr.name, s.topics.cdr.partitions
('cdr', 12)

Environment variables override the file and the defaults, one field at a time:

>>> import os
>>> os.environ["CHURN_TOPICS__CDR__PARTITIONS"] = "24"
>>> t = Settings().topics.cdr
>>> t.name, t.partitions
('cdr', 24)
>>> del os.environ["CHURN_TOPICS__CDR__PARTITIONS"]

>>> os.environ["CHURN_REDIS__PORT"] = "26379"
>>> Settings().redis.port
26379
>>> del os.environ["CHURN_REDIS__PORT"]
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: The repository root (the directory holding ``pyproject.toml``).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class KafkaSettings(BaseModel):
    """The Kafka broker clients talk to, and how the local one is run."""

    #: Host of the local broker (``churn stack up``) and the address clients use when
    #: ``bootstrap_override`` is unset.
    host: str = "127.0.0.1"
    #: Port of the local broker's client listener.
    port: int = 19092
    #: Port of the local broker's KRaft controller listener.
    controller_port: int = 19093
    #: JVM heap (``-Xms``/``-Xmx``) of the local broker.
    heap: str = "512m"
    #: Nodes of the local Kafka cluster (``churn stack up --brokers 3``), each a KRaft broker and controller.
    #: Node n (from 0) listens on ``port + n * node_port_step`` and ``controller_port + n * node_port_step``;
    #: clients bootstrap from all of them; topics get ``min(3, brokers)`` replicas (unless
    #: ``topics.replication_factor`` says otherwise) and, from 3 brokers on, ``min.insync.replicas`` 2.
    brokers: int = Field(1, ge=1)
    #: Port distance between the nodes of a multi-broker local cluster.
    node_port_step: int = 100
    #: If set, clients use this instead of host:port (a user's own cluster).
    bootstrap_override: str | None = None
    #: How clients talk to the broker: ``PLAINTEXT`` (the local default: loopback, no authentication) or
    #: ``SASL_SSL`` (SCRAM over TLS, authorised by ACLs). With ``SASL_SSL`` the local stack's broker runs
    #: secured too: ``churn stack up`` generates its CA, certificate, principals and ACLs on first start.
    security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: SASL mechanism with ``SASL_SSL``.
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    #: The principal this process authenticates as. Unset: each component's own least-privilege principal
    #: (``churn-producer``, ``churn-stream``, ``churn-scorer``, ``churn-api``, ``churn-alerts``,
    #: ``churn-batch``, ``churn-admin``).
    username: str | None = None
    #: That principal's password. Prefer ``password_file``; unset both and the local stack's generated
    #: credentials (``<run_dir>/secrets/kafka/<principal>.password``) are used.
    password: SecretStr | None = None
    #: A file holding the password (a mounted secret), read when ``password`` is unset.
    password_file: Path | None = None
    #: PEM file of the CA that signed the broker's certificate. Unset: the local stack's
    #: (``<run_dir>/tls/ca.pem``).
    ca_file: Path | None = None

    def node_ports(self, node: int) -> tuple[int, int]:
        """Client and controller ports of local node ``node`` (from 0)."""
        return self.port + node * self.node_port_step, self.controller_port + node * self.node_port_step

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap_override or ",".join(
            f"{self.host}:{self.node_ports(n)[0]}" for n in range(self.brokers))

    @property
    def secured(self) -> bool:
        return self.security_protocol == "SASL_SSL"


class RedisSettings(BaseModel):
    #: The Redis that serves as Feast's online store (the local one, or yours).
    host: str = "127.0.0.1"
    #: Port of that Redis.
    port: int = 16379
    #: Authenticate as an ACL user (Redis 6+). The local stack then creates one user per component with
    #: only the commands it needs (``churn-stream`` and ``churn-batch`` write Feast's keys, ``churn-scorer``
    #: and ``churn-api`` only read them) and turns the default user off.
    acl: bool = False
    #: Talk TLS to Redis (the local stack then serves TLS only, with a certificate from its CA).
    tls: bool = False
    #: The ACL user this process authenticates as. Unset: each component's own (``churn-<role>``).
    username: str | None = None
    #: That user's password. Prefer ``password_file``; unset both and the local stack's generated
    #: credentials (``<run_dir>/secrets/redis/<user>.password``) are used.
    password: SecretStr | None = None
    #: A file holding the password (a mounted secret), read when ``password`` is unset.
    password_file: Path | None = None
    #: PEM file of the CA that signed Redis' certificate. Unset: the local stack's (``<run_dir>/tls/ca.pem``).
    ca_file: Path | None = None


class PrometheusSettings(BaseModel):
    #: Host of the local stack's Prometheus.
    host: str = "127.0.0.1"
    #: Port of the local stack's Prometheus.
    port: int = 19090
    #: How often the local Prometheus scrapes the jobs.
    scrape_interval_s: int = 5
    #: The Pushgateway that one-shot jobs (the nightly batch) push their metrics to; Prometheus scrapes it.
    pushgateway_host: str = "127.0.0.1"
    pushgateway_port: int = 19091
    #: The blackbox exporter through which Prometheus probes Kafka and Redis (TCP connect, Redis PING).
    blackbox_port: int = 19115
    #: Grafana's host port in ``docker-compose.yml``, where Grafana runs (the local stack has none: there the
    #: dashboards' expressions run in Prometheus' own UI).
    grafana_port: int = 13000


class TopicSpec(BaseModel):
    #: The topic's name.
    name: str
    #: Partitions the topic is created with.
    partitions: int
    #: Topic configs set at creation.
    config: dict[str, str] = Field(default_factory=dict)


# One class per topic so each field has its own default and can be overridden alone,
# e.g. CHURN_TOPICS__CDR__PARTITIONS=24.
class CdrTopic(TopicSpec):
    name: str = "cdr"
    partitions: int = 12
    config: dict[str, str] = {"retention.ms": str(7 * 24 * 3600 * 1000), "message.timestamp.type": "CreateTime"}


class ChurnAlertsTopic(TopicSpec):
    name: str = "churn-alerts"
    partitions: int = 3


class ChurnScoresTopic(TopicSpec):
    """Latest score per customer; also the scorer's state changelog, so partitioned exactly like ``cdr``."""

    name: str = "churn-scores"
    partitions: int | None = None  # None: as many as ``cdr``
    config: dict[str, str] = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}


class ChurnLabelsTopic(TopicSpec):
    name: str = "churn-labels"
    partitions: int = 3


class CdrDlqTopic(TopicSpec):
    name: str = "cdr.dlq"
    partitions: int = 3
    config: dict[str, str] = {"retention.ms": str(30 * 24 * 3600 * 1000)}


class CustomerProfilesTopic(TopicSpec):
    """Profile upserts (CDC style), keyed by customer id; compacted: the newest version per customer stays."""

    name: str = "customer-profiles"
    partitions: int = 3
    config: dict[str, str] = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}


class CustomerProfilesDlqTopic(TopicSpec):
    name: str = "customer-profiles.dlq"
    partitions: int = 1
    config: dict[str, str] = {"retention.ms": str(30 * 24 * 3600 * 1000)}


class TopicsSettings(BaseModel):
    """Every topic the system uses, with partition counts and topic configs.

    ``cdr`` has 12 partitions so that up to 12 consumers (Spark tasks, Faust
    workers) can share it; keys are customer ids, so one customer's events stay
    in order on one partition.
    """

    #: Replication factor of every topic ``churn topics create`` creates. Unset: ``min(3, kafka.brokers)``.
    replication_factor: int | None = None
    cdr: CdrTopic = CdrTopic()
    churn_alerts: ChurnAlertsTopic = ChurnAlertsTopic()
    churn_scores: ChurnScoresTopic = ChurnScoresTopic()
    churn_labels: ChurnLabelsTopic = ChurnLabelsTopic()
    cdr_dlq: CdrDlqTopic = CdrDlqTopic()
    customer_profiles: CustomerProfilesTopic = CustomerProfilesTopic()
    customer_profiles_dlq: CustomerProfilesDlqTopic = CustomerProfilesDlqTopic()

    def all(self) -> list[TopicSpec]:
        return [self.cdr, self.churn_alerts, self.churn_scores, self.churn_labels, self.cdr_dlq,
                self.customer_profiles, self.customer_profiles_dlq]


class ContractSettings(BaseModel):
    #: Events whose time is further than this ahead of the validator's clock are rejected.
    max_future_skew_s: float = 300.0


class SimulatorSettings(BaseModel):
    #: Random seed: the same seed and time window give the same stream, event ids included.
    seed: int = 42
    #: Days over which a churner's behaviour drifts before the churn label.
    precursor_days: int = 28
    #: How strongly churners who warn drift before they leave: 1 is the full drift (on average 65 % less usage, a
    #: quarter of calls to customer care, 12 points more dropped calls and 35 more off-net calls by the churn date),
    #: 0 none. With silent churners, loyal customers' churn-like episodes and usage noise, the default makes the
    #: simulated history about as hard as real churn: the bootstrap model's ROC AUC on its later validation window is
    #: between 0.85 and 0.92 (``bench/run.py simulator_behaviour_auc``).
    signal_strength: float = Field(1.0, ge=0.0)
    #: Address of the simulator's Prometheus metrics endpoint (port 0 disables it).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 19101


class ProfilesSettings(BaseModel):
    """Customer profiles: the extract ``churn features apply`` loads into the profile history (``churn.profiles``).

    The simulator, the bootstrap model and ``churn batch telco-cv`` read ``source`` too when it is read with
    the Telco mapping (they need the sample's columns, the ``Churn`` label included), else the bundled sample.
    ``simulator.customers_csv``, the old name of ``source``, is still accepted.
    """

    #: A CSV or Parquet extract of the customer base (default: the bundled IBM Telco sample).
    source: Path | None = None
    #: How its columns map onto the ``customer_profile`` contract (default: ``feature_repo/mappings/telco.toml``).
    mapping: Path | None = None


class S3Settings(BaseModel):
    """S3-compatible object storage for the lake. Off by default: the lake is a local folder."""

    #: Keep the lake (Bronze, Silver, quarantine, history, Gold) and the streaming checkpoints in
    #: ``s3a://<bucket>/<prefix>``. The local stack then runs an S3 server (S3Proxy) for it.
    enabled: bool = False
    #: The S3 API's URL, e.g. ``https://s3.eu-west-1.amazonaws.com``. Unset: the local stack's S3Proxy
    #: (``http://<host>:<port>``).
    endpoint_url: str | None = None
    #: Address of the local stack's S3 server.
    host: str = "127.0.0.1"
    port: int = 19000
    #: The bucket (created if missing), and a folder in it under which ``lake/`` and ``checkpoints/`` live
    #: (empty: the bucket's top).
    bucket: str = "churn"
    prefix: str = ""
    #: The bucket's region (signatures need one; S3Proxy accepts any).
    region: str = "us-east-1"
    #: Address buckets as ``<endpoint>/<bucket>`` (S3Proxy, MinIO) instead of ``<bucket>.<endpoint>`` (AWS).
    path_style: bool = True
    #: The access key id this system signs requests with.
    access_key: str = "churn"
    #: The secret key. Prefer ``secret_key_file``; unset both and the local stack's generated one
    #: (``<run_dir>/secrets/s3/<access_key>.password``) is used.
    secret_key: SecretStr | None = None
    #: A file holding the secret key (a mounted secret), read when ``secret_key`` is unset.
    secret_key_file: Path | None = None

    @property
    def url(self) -> str:
        return self.endpoint_url or f"http://{self.host}:{self.port}"


class SparkSettings(BaseModel):
    #: Any Spark master: local[N] by default, or spark://..., yarn, k8s://... With ``standalone_workers``
    #: set and this left at its default, the local stack's standalone master.
    master: str = "local[2]"
    #: Run a Spark standalone cluster in the local stack: a master and this many workers, started from
    #: pyspark's own distribution (0: none, Spark runs in the job's process, ``local[N]``).
    standalone_workers: int = 0
    #: Cores and memory of each standalone worker, and of each executor on it.
    worker_cores: int = 1
    worker_memory: str = "1g"
    #: Address of the standalone master; its web UI (and ``/json`` status) listens on ``master_port + 1``.
    master_host: str = "127.0.0.1"
    master_port: int = 17077
    #: ``spark.driver.memory``.
    driver_memory: str = "2g"
    #: Options of the Spark JVMs: the driver's (with ``local[N]`` the only one) and, on the local stack's
    #: standalone cluster, the executors'. ``-XX:TieredStopAtLevel=1`` (the JIT's first tier only) helps the
    #: first minute after a start on few cores, and its code is slower: the silver query's warm throughput
    #: drops (docs/benchmarks.md).
    java_options: str = ""
    #: Partitions of shuffles, state stores and Delta log replay: about the number of cores.
    shuffle_partitions: int = 2
    #: Extra Spark confs, e.g. {"spark.executor.memory": "4g"}.
    conf: dict[str, str] = Field(default_factory=dict)


class StreamingSettings(BaseModel):
    """The Spark streaming job: Kafka -> Bronze/Silver Delta, quarantine, features to Feast."""

    #: Where the Delta tables live (default: <run_dir>/lake).
    lake_dir: Path | None = None
    #: Streaming checkpoints, one folder per query; keep them with the tables (default: <run_dir>/checkpoints).
    checkpoint_dir: Path | None = None
    #: Micro-batch trigger interval of the Silver query (validation, features to Feast).
    trigger_s: float = 1.0
    #: How Bronze is written. ``silver_batch``: the silver query's micro-batch appends every Kafka record it read
    #: (duplicates and invalid records included) to Bronze, beside Silver's append: Kafka is read once, by one
    #: query. ``query``: Bronze is a query of its own (Delta's streaming sink, every ``bronze_trigger_s``; with a
    #: local master in a process of its own at ``bronze_nice``) that reads Kafka a second time. ``silver_batch``
    #: needs ``dedup`` other than ``spark``. A checkpoint keeps the way it was started with.
    bronze_writer: Literal["silver_batch", "query"] = "silver_batch"
    #: Bronze's own query (``bronze_writer`` = ``query``) is not on the freshness path: a slower trigger (fewer,
    #: larger batches) spreads its fixed cost per batch (a Delta commit) and leaves the cores to Silver. Bronze's
    #: rows land up to this much later.
    bronze_trigger_s: float = 30.0
    #: With Bronze's own query and a local master (``local[N]``), Bronze runs as a Spark application of its own
    #: in a child process at this OS niceness (0-19), so that the kernel gives the silver query, which makes the features fresh,
    #: the cores first and Bronze what is left (``streaming.bronze_process``). ``None``: Bronze runs in the
    #: job's own application, in Spark's background pool.
    bronze_nice: int | None = Field(19, ge=0, le=19)
    #: Most Kafka records per micro-batch (bounds batch duration when catching up).
    max_offsets_per_trigger: int = 200_000
    #: The same for Bronze's own query, which is not on the freshness path: larger batches when catching up
    #: spread its fixed cost per batch (a Delta commit) over more records.
    bronze_max_offsets_per_trigger: int = 1_000_000
    #: Events older than (newest event time seen before this batch - allowed lateness) are quarantined as late.
    allowed_lateness_s: float = 3600.0
    #: Duplicates of an event_id are recognised if they arrive within this processing-time window.
    dedup_window_s: float = 3600.0
    #: How the silver query remembers event ids for ``dedup_window_s``, by the batches' own time (Spark's
    #: processing time: the batch's timestamp in its offset log) or by the batch's time as a column.
    #: ``buckets``: ids grouped in 256 buckets by a hash, each bucket a map from id to when it expires (its batch's
    #: time plus the window), cleared of expired ids by one timer per bucket every half window (``jvm/churn-spark``):
    #: a record costs one read of the state, and a write if it is kept. ``processing_timers``: one timer per id at
    #: its batch's time plus the window, a scan, a read and two writes per record. With both, a batch touches only
    #: its own ids and those expiring, whatever the window holds, and the query's plan holds no value of the
    #: batch's (its generated code is compiled once). ``timers``: timers per id by event-time timers on the batch's
    #: time as a column, which runs interpreted. ``spark``: Spark's ``dropDuplicatesWithinWatermark``, which reads
    #: every remembered id on every batch (on two cores, ~0.27 s per batch for each million ids: an hour at 9,000
    #: events/s is 32 million) and keeps ids for up to twice the window. A checkpoint keeps the kind it was
    #: started with.
    dedup: Literal["buckets", "processing_timers", "timers", "spark"] = "buckets"
    #: Where a query starts on its first run (``startingOffsets``); afterwards its checkpoint decides.
    starting_offsets: str = "earliest"
    #: How long the broker may hold a fetch that has no new data. Every micro-batch reads each partition
    #: to its end, where Kafka's default (500 ms) is waited out once per partition: with 12 partitions on
    #: 2 cores that alone costs ~3 s per batch and per query.
    kafka_fetch_max_wait_ms: int = 10
    #: How features reach Feast's online store: ``redis`` writes Feast's Redis hashes directly in Feast's
    #: format, with Feast's newer-only rule (``churn.online_writer``); ``feast`` calls ``FeatureStore.push``.
    online_writer: Literal["redis", "feast"] = "redis"
    #: While the silver query is behind (a batch read ``max_offsets_per_trigger`` records), its next batch starts
    #: while the driver ends the last one: the Delta writes, the features and their push to Feast run beside
    #: the next batch's Spark job, which otherwise waits for them. The batch's rows are kept beside the
    #: checkpoint until its work has ended, and a restart ends it first (``streaming.pending_batches``), so this
    #: stays exactly once. Caught up, a batch always ends before the next starts: its push has the cores.
    overlap_batches: bool = True
    #: Tasks that read and validate a micro-batch's records: the Kafka source's partitions (one task each)
    #: are coalesced to this many, about the number of cores (0: one task per Kafka partition). With 12
    #: partitions on 2 cores, 2 tasks make Silver's batches 10-15 % faster than 12 (one Python worker, one
    #: Arrow stream per core instead of twelve).
    validate_tasks: int = 2
    #: The ``customer-profiles`` topic's query: how often it looks for upserts, and the most per batch.
    profiles_trigger_s: float = 2.0
    profiles_max_offsets_per_trigger: int = 100_000
    #: Address of the streaming job's Prometheus metrics endpoint (port 0 disables it).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 19102


class ScoringSettings(BaseModel):
    """The scoring worker (``churn score``): batching, bands, alerting, the model registry."""

    #: The Faust app id: consumer group and transactional-id prefix. Workers with the same id share the
    #: ``cdr`` partitions.
    app_id: str = "churn-scorer"
    #: Drift (``churn.model.drift``): PSI over the latest scored input of up to ``drift_customers``
    #: customers, exported once the window holds at least ``drift_min_customers``.
    drift_customers: int = 20_000
    drift_min_customers: int = 1_000
    #: Where models and the champion pointer live (default ``<run_dir>/models``).
    registry_dir: Path | None = None
    #: Events per scoring batch, and the longest a batch waits to fill.
    batch_max: int = 4000
    batch_within_s: float = 0.005
    #: How the worker's consumer fetches from the broker. While records flow a fetch returns once it has
    #: ``fetch_min_bytes`` or has waited ``fetch_max_wait_ms`` (Faust's consumer decodes each fetch in Python,
    #: so a fetch per few CDRs cost as much CPU as the scoring loop). After an empty fetch the next one
    #: returns at the first record, or after ``fetch_idle_max_wait_ms``, so an idle worker rarely asks.
    fetch_min_bytes: int = 65_536
    fetch_max_wait_ms: int = 10
    fetch_idle_max_wait_ms: int = 1500
    #: How often the worker's transaction commits (outputs become visible to read_committed readers).
    commit_interval_s: float = 0.025
    #: Consumer-group session timeout: how soon a dead worker's partitions move.
    session_timeout_s: float = 10.0
    #: How long the broker lets one of the worker's transactions stay open before it aborts it (Kafka's
    #: ``transaction.timeout.ms``): a worker cut off from the broker for longer has its open transaction
    #: aborted, fails its next commit, and is restarted to score those CDRs again.
    transaction_timeout_s: float = Field(60.0, ge=1.0, le=900.0)
    #: Lower bounds of the bands medium, high, critical (low below the first).
    band_thresholds: tuple[float, float, float] = (0.3, 0.5, 0.7)
    #: A customer leaves a band only when the risk falls this far below its lower bound.
    hysteresis: float = 0.05
    #: The lowest band that raises alerts (lower bands are scored, not alerted).
    alert_min_band: str = "high"
    #: After an alert, a repeat for the same band waits this long (a higher band alerts at once).
    cooldown_s: float = 6 * 3600.0
    #: Online-store lookups: attempts and first backoff before scoring degraded.
    lookup_attempts: int = 3
    lookup_backoff_s: float = 0.05
    #: How features are read: ``redis`` reads Feast's Redis hashes directly in Feast's format (fast
    #: path), ``feast`` calls ``FeatureStore.get_online_features`` (``churn.online_reader``).
    online_reader: Literal["redis", "feast"] = "redis"
    #: Reasons (largest feature contributions) carried by each alert.
    reasons: int = 3
    #: How often a worker checks the champion pointer (hot reload).
    model_check_interval_s: float = 1.0
    #: The overlay (``streaming.scoring.overlay``; off: decisions read the pushed state only, which lags
    #: the CDRs by the streaming job's delay: for benchmarks, not for use): the most CDRs kept that the streaming job's pushed state
    #: does not cover yet (beyond it the oldest are dropped and decisions lacking them are marked degraded),
    #: and how many customers' last inputs are kept (exact decisions while the stream is ahead of the worker).
    overlay: bool = True
    overlay_max_events: int = 200_000
    overlay_own_states: int = 100_000
    #: A customer without any CDR for this long is scored again at the current time (going quiet is what
    #: churners do); the worker looks for such customers every ``rescore_check_s``, at most
    #: ``rescore_max_per_check`` at a time.
    rescore_after_s: float = 6 * 3600.0
    rescore_check_s: float = 1.0
    rescore_max_per_check: int = 2000
    #: Liveness (``streaming.scoring.liveness``): stalled after this long without scoring or committing while
    #: CDRs wait (``/healthz`` answers 503); the process exits (code 70, for a supervisor to restart it)
    #: after ``stall_exit_s`` stalled. Taking partitions over must finish within ``takeover_deadline_s``.
    stall_after_s: float = 30.0
    stall_exit_s: float = 120.0
    takeover_deadline_s: float = 180.0
    #: Write each decision's activity state into its score record (``activity_state``): for audits and tests.
    record_inputs: bool = False
    #: Address of the worker's ``/metrics`` and ``/healthz`` endpoint.
    metrics_host: str = "127.0.0.1"
    #: Port of that endpoint.
    metrics_port: int = 19103


class TrainingSettings(BaseModel):
    """Retraining and promotion (``churn batch train``, ``churn model bootstrap``)."""

    #: Optuna trials of the bounded hyper-parameter search (0: the default parameters).
    trials: int = 20
    #: A new model replaces the champion only if its validation ROC AUC is this much higher.
    promotion_margin: float = 0.005
    #: Risk at which a customer counts as flagged for F1/recall/precision in model cards.
    operating_threshold: float = 0.5


class FeastSettings(BaseModel):
    #: Feast project: namespaces the registry entries and the online store's keys.
    project: str = "churn"
    #: Where Feast's registry lives: ``file`` (``<run_dir>/feast/registry.db``), or ``postgres``: a SQL
    #: registry in the database of the ``postgres`` settings, which processes on several machines share.
    registry: Literal["file", "postgres"] = "file"
    #: How long a process serves its cached copy of a SQL registry before reading it again (seconds).
    registry_cache_ttl_s: int = 60


class PostgresSettings(BaseModel):
    """The PostgreSQL database of Feast's registry (``feast.registry = "postgres"``)."""

    #: Run PostgreSQL in the local stack (Debian's server). False: yours, at ``host``:``port``.
    local: bool = True
    #: Address of the server (the local stack's listens there).
    host: str = "127.0.0.1"
    port: int = 15432
    #: The database that holds the registry's tables.
    database: str = "feast"
    #: The role the registry is read and written as (the owner of ``database`` on the local stack).
    username: str = "churn-registry"
    #: Its password. Prefer ``password_file``; unset both and the local stack's generated one
    #: (``<run_dir>/secrets/postgres/<username>.password``) is used.
    password: SecretStr | None = None
    #: A file holding the password (a mounted secret), read when ``password`` is unset.
    password_file: Path | None = None


class ApiSettings(BaseModel):
    """The scoring API (``churn serve``) and the retention dashboard (``churn dashboard``)."""

    #: Where the API listens.
    host: str = "127.0.0.1"
    port: int = 18080
    #: Scores kept per customer for its risk history (the latest is always kept).
    history: int = 100
    #: Most rows one page of ``/v1/at-risk`` returns.
    max_page: int = 1000
    #: Where the dashboard listens, and the API it reads (None: this API's host and port).
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 18501
    dashboard_api_url: str | None = None

    @property
    def url(self) -> str:
        return self.dashboard_api_url or f"http://{self.host}:{self.port}"


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="CHURN_", env_nested_delimiter="__", extra="ignore"
    )

    #: Data and logs of the local stack, the lake, checkpoints and the model registry.
    run_dir: Path = PROJECT_ROOT / ".run"
    #: Downloaded JVM jars (``<cache_dir>/jars``: the Kafka broker's, Spark's Kafka source and Delta).
    cache_dir: Path = PROJECT_ROOT / ".cache"
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    topics: TopicsSettings = TopicsSettings()
    contracts: ContractSettings = ContractSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    profiles: ProfilesSettings = ProfilesSettings()
    spark: SparkSettings = SparkSettings()
    streaming: StreamingSettings = StreamingSettings()
    feast: FeastSettings = FeastSettings()
    postgres: PostgresSettings = PostgresSettings()
    scoring: ScoringSettings = ScoringSettings()
    training: TrainingSettings = TrainingSettings()
    api: ApiSettings = ApiSettings()
    s3: S3Settings = S3Settings()
    #: Seconds a service may take to become ready before `stack up` gives up.
    startup_timeout_s: float = 60.0

    @model_validator(mode="before")
    @classmethod
    def _customers_csv_is_profiles_source(cls, data: Any) -> Any:
        """``simulator.customers_csv`` (before profiles had settings of their own) sets ``profiles.source``."""
        simulator = data.get("simulator") if isinstance(data, dict) else None
        if isinstance(simulator, dict) and "customers_csv" in simulator:
            simulator = dict(simulator)
            profiles = data.get("profiles")
            profiles = dict(profiles) if isinstance(profiles, dict) else {}
            profiles.setdefault("source", simulator.pop("customers_csv"))
            data = {**data, "simulator": simulator, "profiles": profiles}
        return data

    @model_validator(mode="after")
    def _paths_under_run_dir(self) -> "Settings":
        if self.streaming.lake_dir is None:
            self.streaming.lake_dir = self.run_dir / "lake"
        if self.streaming.checkpoint_dir is None:
            self.streaming.checkpoint_dir = self.run_dir / "checkpoints"
        if self.scoring.registry_dir is None:
            self.scoring.registry_dir = self.run_dir / "models"
        if self.spark.standalone_workers and "master" not in self.spark.model_fields_set:
            self.spark.master = f"spark://{self.spark.master_host}:{self.spark.master_port}"
        if self.topics.replication_factor is None:
            self.topics.replication_factor = min(3, self.kafka.brokers)
        if self.topics.churn_scores.partitions is None:
            self.topics.churn_scores.partitions = self.topics.cdr.partitions
        if self.topics.churn_scores.partitions != self.topics.cdr.partitions:
            raise ValueError(
                "topics.churn_scores.partitions must equal topics.cdr.partitions: the scores topic is the "
                "scoring worker's state changelog, partition for partition with the CDR topic")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("CHURN_CONFIG", "churn.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @property
    def jars_dir(self) -> Path:
        return self.cache_dir / "jars"

    def describe(self) -> dict[str, Any]:
        """The effective settings as plain data (for `churn config`), passwords masked."""
        return self.model_dump(mode="json")

    def json_with_secrets(self) -> str:
        """These settings as JSON with the passwords in clear: for a child process's stdin, never for a log
        (``model_dump_json`` masks them, and a child given masked passwords could not authenticate)."""
        import json

        def reveal(value: Any) -> Any:
            if isinstance(value, SecretStr):
                return value.get_secret_value()
            if isinstance(value, dict):
                return {k: reveal(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [reveal(v) for v in value]
            return value

        return json.dumps(reveal(self.model_dump(mode="python")), default=str)


def settings_with_env(env: dict[str, str]) -> Settings:
    """The settings a process reads whose environment is this one's plus ``env`` (for a child process)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
