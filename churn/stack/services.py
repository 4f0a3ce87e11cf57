"""The local stack's services: Apache Kafka (KRaft), Redis and Prometheus, from real binaries.

Kafka runs from the jars Maven put in ``<cache_dir>/jars/kafka`` (``jvm/kafka/pom.xml``);
Redis and Prometheus are Debian's ``redis-server`` and ``prometheus``. Everything
listens on loopback, on the ports in the settings, with data and logs under
``<run_dir>/<service>/``.
"""

from __future__ import annotations

import base64
import shutil
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from churn.config import PROJECT_ROOT, Settings
from churn.security import librdkafka_config, redis_options
from churn.stack import security
from churn.stack.process import Service, StackError, tcp_open

PROMETHEUS_TEMPLATE = PROJECT_ROOT / "monitoring" / "prometheus" / "prometheus.yml.tmpl"
RULES_DIR = PROJECT_ROOT / "monitoring" / "prometheus" / "rules"
BLACKBOX_CONFIG = PROJECT_ROOT / "monitoring" / "prometheus" / "blackbox.yml"


def _which(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        raise StackError(f"{binary} not found: run `make setup` (installs it with apt-get)")
    return path


def new_cluster_id() -> str:
    """A new KRaft cluster id (base64 of a UUID; never starting with '-', which would read as an option)."""
    new = "-"
    while new[0] == "-":
        new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
    return new


def node_properties(s: Settings, node: int, quorum: str, listeners: list[str], data: Path | str) -> str:
    """``server.properties`` of KRaft node ``node`` (from 0, broker and controller in one process):
    its quorum and listener lines, then what every node of ours shares: replication sized to the
    cluster, no topic auto-creation, fast fencing in a multi-node cluster."""
    replicas = min(3, s.kafka.brokers)  # of the broker's internal topics (offsets, transactions)
    min_isr = min(2, replicas)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node + 1}",
        quorum,
        *listeners,
        f"log.dirs={data}",
        "num.partitions=3",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=12",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        # a node that stops heartbeating is fenced after 6 s (9 s by default), so its partitions (the group
        # and transaction coordinators' among them) move within a consumer's 10 s session
        *(["broker.session.timeout.ms=6000", "broker.heartbeat.interval.ms=1000"] if s.kafka.brokers > 1 else []),
        "auto.create.topics.enable=false",
        "log.retention.check.interval.ms=60000",
        "",
    ])


def kafka_service(s: Settings, node: int = 0) -> Service:
    """Node ``node`` (from 0) of the local Kafka cluster: a KRaft broker and controller in one process. One
    node is a standalone (dynamic) quorum; several are a static quorum of all of them."""
    run_dir, k = s.run_dir, s.kafka
    name = "kafka" if node == 0 else f"kafka-{node + 1}"
    home = run_dir / name
    jars = s.jars_dir / "kafka"
    props = home / "server.properties"
    port, controller_port = k.node_ports(node)

    def classpath() -> str:
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars missing in {jars}: run `make setup` (fetches them with Maven)")
        return f"{jars}/*"

    def java() -> str:
        return _which("java")

    def listeners() -> list[str]:
        if k.secured:
            return security.broker_properties(s, port, controller_port)
        return [
            f"listeners=PLAINTEXT://{k.host}:{port},CONTROLLER://{k.host}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{k.host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]

    def quorum() -> str:
        if k.brokers == 1:
            return f"controller.quorum.bootstrap.servers={k.host}:{controller_port}"
        return "controller.quorum.voters=" + ",".join(
            f"{n + 1}@{k.host}:{k.node_ports(n)[1]}" for n in range(k.brokers))

    def cluster_id() -> str:
        """The cluster's id, shared by its nodes (kept in the first node's directory)."""
        path = run_dir / "kafka" / "cluster-id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def prepare() -> None:
        data = home / "data"
        mode = home / "security"  # what the storage was formatted for: the principals live in its metadata
        formatted_for = mode.read_text().strip() if mode.exists() else "PLAINTEXT"
        if (data / "meta.properties").exists() and formatted_for != k.security_protocol:
            raise StackError(
                f"the broker's data in {data} was created for {formatted_for}, not {k.security_protocol}: use "
                f"another run directory (CHURN_RUN_DIR), or `churn stack down` and remove {home}")
        if k.secured:
            security.prepare_kafka(s)
        # it holds the broker's own passwords when secured
        security.write_private(props, node_properties(s, node, quorum(), listeners(), data))
        (home / "log4j2.properties").write_text(
            "\n".join(
                [
                    "status = error",
                    "appender.file.type = File",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {home / 'server.log'}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "logger.kafka.name = org.apache.kafka",
                    "logger.kafka.level = WARN",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            import subprocess

            result = subprocess.run(
                [java(), "-cp", classpath(), f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
                 "kafka.tools.StorageTool", "format", *(["--standalone"] if k.brokers == 1 else []),
                 "-t", cluster_id(), "-c", str(props), *(security.scram_format_args(s) if k.secured else [])],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}")
            mode.write_text(k.security_protocol)

    def command() -> list[str]:
        return [
            java(), f"-Xms{k.heap}", f"-Xmx{k.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "-cp", classpath(), "kafka.Kafka", str(props),
        ]

    def is_ready() -> bool:
        if not tcp_open(k.host, port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({**librdkafka_config(s, "admin"), "bootstrap.servers": f"{k.host}:{port}",
                              "log_level": 0}).list_topics(timeout=2)
            return node + 1 in md.brokers  # this node has joined the cluster as a broker
        except Exception:
            return False

    return Service(
        name=name, run_dir=run_dir, host=k.host,
        ports={"CHURN_KAFKA__PORT": port, "CHURN_KAFKA__CONTROLLER_PORT": controller_port},
        command=command, is_ready=is_ready, prepare=prepare,
    )


def kafka_services(s: Settings) -> list[Service]:
    """Every node of the local Kafka cluster."""
    return [kafka_service(s, n) for n in range(s.kafka.brokers)]


def redis_service(s: Settings) -> Service:
    r = s.redis
    home = s.run_dir / "redis"

    def command() -> list[str]:
        return [
            _which("redis-server"), "--bind", r.host, "--port", str(r.port), "--dir", str(home),
            "--daemonize", "no", "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--logfile", "", *security.redis_args(s, home),  # ACL users, TLS: when the settings ask
        ]

    def is_ready() -> bool:
        import redis

        try:
            return redis.Redis(**redis_options(s, "admin"), socket_timeout=0.5, socket_connect_timeout=0.5).ping()
        except (redis.RedisError, OSError):
            return False

    return Service(name="redis", run_dir=s.run_dir, host=r.host, ports={"CHURN_REDIS__PORT": r.port},
                   command=command, is_ready=is_ready, prepare=lambda: security.prepare_redis(s, home))


def _answers(url: str) -> bool:
    """True if ``url`` answers HTTP 200 within a second (a service's readiness endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def prometheus_config(s: Settings) -> str:
    """The stack's scrape config: ``monitoring/prometheus/prometheus.yml.tmpl`` with our ports."""
    return PROMETHEUS_TEMPLATE.read_text().format(
        scrape_interval_s=s.prometheus.scrape_interval_s,
        prometheus=f"{s.prometheus.host}:{s.prometheus.port}",
        simulator=f"127.0.0.1:{s.simulator.metrics_port}",
        streaming=f"127.0.0.1:{s.streaming.metrics_port}",
        scoring=f"{s.scoring.metrics_host}:{s.scoring.metrics_port}",
        api=f"{s.api.host}:{s.api.port}",
        pushgateway=f"{s.prometheus.pushgateway_host}:{s.prometheus.pushgateway_port}",
        rules_dir=RULES_DIR,
        blackbox=f"{s.prometheus.host}:{s.prometheus.blackbox_port}",
        kafka=", ".join(f'"{s.kafka.host}:{s.kafka.node_ports(n)[0]}"' for n in range(s.kafka.brokers)),
        redis=f"{s.redis.host}:{s.redis.port}",
        redis_module="tcp_connect" if s.redis.tls else "redis_ping",  # the PING probe speaks plain TCP
    )


def prometheus_service(s: Settings) -> Service:
    p = s.prometheus
    home = s.run_dir / "prometheus"

    def prepare() -> None:
        (home / "prometheus.yml").write_text(prometheus_config(s))

    def command() -> list[str]:
        return [
            _which("prometheus"), f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address={p.host}:{p.port}",
            "--storage.tsdb.retention.time=7d", "--web.enable-lifecycle",
        ]

    def is_ready() -> bool:
        return _answers(f"http://{p.host}:{p.port}/-/ready")

    return Service(name="prometheus", run_dir=s.run_dir, host=p.host, ports={"CHURN_PROMETHEUS__PORT": p.port},
                   command=command, is_ready=is_ready, prepare=prepare)


def _prometheus_tool(s: Settings, name: str, binary: str, host: str, port_env: str, port: int, ready_path: str,
                     *args: str) -> Service:
    """A Debian binary of the Prometheus project listening on ``host:port``, ready when ``ready_path`` answers."""
    return Service(name=name, run_dir=s.run_dir, host=host, ports={port_env: port},
                   command=lambda: [_which(binary), f"--web.listen-address={host}:{port}", *args],
                   is_ready=lambda: _answers(f"http://{host}:{port}{ready_path}"))


def pushgateway_service(s: Settings) -> Service:
    """Debian's Prometheus Pushgateway: where the nightly batch (a one-shot job) leaves its metrics."""
    p = s.prometheus
    return _prometheus_tool(s, "pushgateway", "prometheus-pushgateway", p.pushgateway_host,
                            "CHURN_PROMETHEUS__PUSHGATEWAY_PORT", p.pushgateway_port, "/-/ready",
                            f"--persistence.file={s.run_dir / 'pushgateway' / 'metrics.store'}")


def blackbox_service(s: Settings) -> Service:
    """Debian's blackbox exporter: Prometheus probes Kafka (TCP) and Redis (PING) through it."""
    p = s.prometheus
    return _prometheus_tool(s, "blackbox", "prometheus-blackbox-exporter", p.host, "CHURN_PROMETHEUS__BLACKBOX_PORT",
                            p.blackbox_port, "/-/healthy", f"--config.file={BLACKBOX_CONFIG}")


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def spark_master_status(s: Settings) -> dict | None:
    """The standalone master's state as its web UI serves it (``/json``), or None if it does not answer."""
    import json

    sp = s.spark
    try:
        with urllib.request.urlopen(f"http://{sp.master_host}:{sp.master_port + 1}/json/", timeout=1) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def alive_spark_workers(s: Settings) -> int:
    """Workers registered with the standalone master and alive (0 if the master does not answer)."""
    status = spark_master_status(s) or {}
    return sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")


def spark_master_service(s: Settings) -> Service:
    """A Spark standalone master from pyspark's own distribution (``spark.standalone_workers`` > 0)."""
    sp = s.spark

    def command() -> list[str]:
        return [str(_spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                "--host", sp.master_host, "--port", str(sp.master_port), "--webui-port", str(sp.master_port + 1)]

    def is_ready() -> bool:
        return (spark_master_status(s) or {}).get("status") == "ALIVE"

    return Service(name="spark-master", run_dir=s.run_dir, host=sp.master_host,
                   ports={"CHURN_SPARK__MASTER_PORT": sp.master_port, "CHURN_SPARK__MASTER_PORT (+1, web UI)":
                          sp.master_port + 1},
                   command=command, is_ready=is_ready, env={"SPARK_HOME": str(_spark_home())})


def spark_worker_service(s: Settings, n: int) -> Service:
    """Standalone worker ``n`` (1, 2, …): ``spark.worker_cores`` cores and ``spark.worker_memory`` for executors;
    ready once the master counts it (workers start one after another)."""
    sp = s.spark
    home = s.run_dir / f"spark-worker-{n}"

    def command() -> list[str]:
        return [str(_spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                f"spark://{sp.master_host}:{sp.master_port}", "--host", sp.master_host,
                "--cores", str(sp.worker_cores), "--memory", sp.worker_memory, "--work-dir", str(home / "work"),
                "--webui-port", "0"]

    return Service(name=f"spark-worker-{n}", run_dir=s.run_dir, host=sp.master_host, ports={}, command=command,
                   is_ready=lambda: alive_spark_workers(s) >= n,
                   env={"SPARK_HOME": str(_spark_home()), "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true"})


def s3_service(s: Settings) -> Service:
    """S3Proxy (Maven Central's ``org.gaul:s3proxy``) serving the S3 API over a folder of this machine:
    ``<run_dir>/s3/data/<bucket>/…``, one bucket per folder; AWS signatures (v2 or v4) with
    ``s3.access_key`` and the generated secret."""
    s3 = s.s3
    home = s.run_dir / "s3"

    def jar() -> str:
        found = sorted((s.jars_dir / "s3proxy").glob("s3proxy-*-jar-with-dependencies.jar"))
        if not found:
            raise StackError(f"S3Proxy missing in {s.jars_dir / 's3proxy'}: run `make setup`")
        return str(found[-1])

    def prepare() -> None:
        from churn.storage import local_secret_file

        (home / "data" / s3.bucket).mkdir(parents=True, exist_ok=True)  # the bucket: a folder
        security.password(s, s3.access_key, "s3")
        properties = {"s3proxy.endpoint": f"http://{s3.host}:{s3.port}", "s3proxy.authorization": "aws-v2-or-v4",
                      "s3proxy.identity": s3.access_key,
                      "s3proxy.credential": local_secret_file(s).read_text().strip(),
                      "jclouds.provider": "filesystem", "jclouds.filesystem.basedir": str(home / "data")}
        security.write_private(home / "s3proxy.properties", security.properties_text(properties))

    def command() -> list[str]:
        return [_which("java"), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", jar(),
                "--properties", str(home / "s3proxy.properties")]

    def is_ready() -> bool:
        try:
            urllib.request.urlopen(f"http://{s3.host}:{s3.port}/", timeout=1)
        except urllib.error.HTTPError:
            return True  # it answers (an anonymous request is refused)
        except OSError:
            return False
        return True

    return Service(name="s3", run_dir=s.run_dir, host=s3.host, ports={"CHURN_S3__PORT": s3.port},
                   command=command, is_ready=is_ready, prepare=prepare)


def s3_services(s: Settings) -> list[Service]:
    """The local S3 server, when the lake is on S3 and no endpoint of yours is named."""
    return [s3_service(s)] if s.s3.enabled and s.s3.endpoint_url is None else []


def _postgres_bin(name: str) -> str:
    import glob

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StackError(f"PostgreSQL's {name} not found: run `make setup` (installs postgresql with apt-get)")
    return found[-1]


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: when we are root, its commands run as Debian's ``postgres`` user."""
    import os

    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if os.geteuid() == 0 else []


def postgres_service(s: Settings) -> Service:
    """Debian's PostgreSQL server holding Feast's registry (``feast.registry = "postgres"``): a cluster of
    its own in ``<run_dir>/postgres/data``, on loopback, password (SCRAM) authentication only; its database
    owned by the registry role, whose password is generated on first start."""
    import os
    import subprocess

    p = s.postgres
    home = s.run_dir / "postgres"
    data = home / "data"

    def prepare() -> None:
        if (data / "PG_VERSION").exists():
            return
        password = security.password(s, p.username, "postgres")
        home.mkdir(parents=True, exist_ok=True)
        if _as_postgres_user() and subprocess.run([*_as_postgres_user(), "test", "-x", str(home)]).returncode:
            raise StackError(f"PostgreSQL runs as the postgres user, who cannot reach {home}: let it through "
                             f"the parent folders (chmod o+x), or choose a run_dir it can reach")
        data.mkdir(parents=True, mode=0o700, exist_ok=True)
        pwfile = home / "initdb.pw"
        security.write_private(pwfile, password)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            subprocess.run([*_as_postgres_user(), _postgres_bin("initdb"), "-D", str(data), "-U", p.username,
                            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                           check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(data, ignore_errors=True)
            raise StackError(f"initdb failed: {exc.stderr.strip()}") from None
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\n# churn's local stack\nlisten_addresses = '{p.host}'\nport = {p.port}\n"
                       f"unix_socket_directories = '{data}'\npassword_encryption = 'scram-sha-256'\n"
                       "shared_buffers = 32MB\nmax_connections = 100\n")
        # the database, created before the server first listens (single-user mode)
        subprocess.run([*_as_postgres_user(), _postgres_bin("postgres"), "--single", "-D", str(data), "postgres"],
                       input=f'CREATE DATABASE "{p.database}" OWNER "{p.username}";\n', check=True,
                       capture_output=True, text=True)

    def command() -> list[str]:
        return [*_as_postgres_user(), _postgres_bin("postgres"), "-D", str(data)]

    def is_ready() -> bool:
        done = subprocess.run([_postgres_bin("pg_isready"), "-q", "-h", p.host, "-p", str(p.port), "-d", p.database],
                              capture_output=True)
        return done.returncode == 0

    return Service(name="postgres", run_dir=s.run_dir, host=p.host, ports={"CHURN_POSTGRES__PORT": p.port},
                   command=command, is_ready=is_ready, prepare=prepare, stop_signal=signal.SIGINT, workdir=data)


def postgres_services(s: Settings) -> list[Service]:
    """The local PostgreSQL server, when Feast's registry is on PostgreSQL and not on one of yours."""
    return [postgres_service(s)] if s.feast.registry == "postgres" and s.postgres.local else []


def spark_services(s: Settings) -> list[Service]:
    """The standalone cluster: its master and ``spark.standalone_workers`` workers (none by default)."""
    n = s.spark.standalone_workers
    return [spark_master_service(s), *(spark_worker_service(s, i) for i in range(1, n + 1))] if n else []


#: Runs a command again whenever it exits with a failure, as systemd's ``Restart=on-failure`` or Compose's
#: ``restart: on-failure`` would; a clean exit (0) ends it. Stopping the process group (``Service.stop``)
#: stops the command gracefully and then the loop.
SUPERVISE = ('trap \'wait "$child"; exit 0\' TERM INT; '
             'while :; do "$@" & child=$!; wait "$child"; code=$?; [ "$code" -eq 0 ] && exit 0; '
             'echo "[supervisor] $(date -u +%FT%TZ) $1 exited with code $code; restarting in 2 s"; sleep 2; done')


def _job_service(s: Settings, name: str, args: list[str], host: str, port_env: str, port: int,
                 stop_timeout_s: float, supervised: bool = False, terminate_leader_only: bool = False) -> Service:
    """A ``churn`` subcommand run in the background as part of the stack (ready when its metrics answer);
    ``supervised``: restarted whenever it exits with a failure, and unhealthy while its ``/healthz`` says so."""
    import os
    import sys

    def command() -> list[str]:
        churn = [str(Path(sys.executable).parent / "churn"), *args]
        return ["bash", "-c", SUPERVISE, "supervise", *churn] if supervised else churn

    def is_ready() -> bool:
        return _answers(f"http://{host}:{port}/metrics")

    def unhealthy() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
                return None if resp.status == 200 else resp.read().decode().strip()
        except urllib.error.HTTPError as exc:
            return exc.read().decode().strip() or f"HTTP {exc.code}"
        except OSError as exc:
            return f"/healthz does not answer ({exc})"

    config = Path(os.environ.get("CHURN_CONFIG", "churn.toml")).resolve()
    env = {"CHURN_CONFIG": str(config)} if config.exists() else {}
    return Service(name=name, run_dir=s.run_dir, host=host, ports={port_env: port}, command=command,
                   is_ready=is_ready, env=env, stop_timeout_s=stop_timeout_s,
                   unhealthy=unhealthy if supervised else (lambda: None), terminate_leader_only=terminate_leader_only)


def stream_service(s: Settings) -> Service:
    """The streaming job (`churn stream`) in the background (used by the demo)."""
    st = s.streaming
    return _job_service(s, "stream", ["stream"], st.metrics_host, "CHURN_STREAMING__METRICS_PORT",
                        st.metrics_port, stop_timeout_s=60.0, terminate_leader_only=True)


def score_service(s: Settings) -> Service:
    """A scoring worker (`churn score`) in the background (used by the demo)."""
    sc = s.scoring
    return _job_service(s, "score", ["score"], sc.metrics_host, "CHURN_SCORING__METRICS_PORT",
                        sc.metrics_port, stop_timeout_s=60.0, supervised=True)


def services(s: Settings) -> list[Service]:
    """The infrastructure, in start order; stopped in reverse."""
    return [*kafka_services(s), redis_service(s), *postgres_services(s), *s3_services(s), *spark_services(s), pushgateway_service(s),
            blackbox_service(s), prometheus_service(s)]


def jobs(s: Settings) -> list[Service]:
    """Jobs that run on the stack when started (by `churn demo`); stopped before the stack."""
    return [stream_service(s), score_service(s)]
