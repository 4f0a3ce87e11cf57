"""The local stack: ``up``, ``down`` and ``status`` over the services in ``services.py``."""

from __future__ import annotations

from dataclasses import dataclass

from churn.config import Settings
from churn.stack import security
from churn.stack.process import Service, StackError
from churn.stack.services import jobs, kafka_services, score_service, services, stream_service

__all__ = ["StackError", "ServiceStatus", "up", "down", "status", "start_stream", "start_scorer"]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str
    pid: int | None
    address: str
    log: str


def up(settings: Settings) -> list[tuple[str, str]]:
    """Start every service not yet running; harmless to repeat. Returns (service, what happened)."""
    done = []
    nodes = kafka_services(settings)
    try:
        launched = [(node, node.launch()) for node in nodes]  # a quorum of controllers first, then wait for each
        for node, started in launched:
            done.append((node.name, node.wait_started(started, settings.startup_timeout_s)))
    except StackError:
        for node in nodes:
            node.stop()
        raise
    for service in services(settings)[len(nodes):]:
        done.append((service.name, service.start(settings.startup_timeout_s)))
    if settings.kafka.secured:
        done.append(("kafka acls", f"{security.apply_acls(settings)} in force"))
    return done


def start_stream(settings: Settings) -> str:
    """Run the streaming job in the background (idempotent); `down` stops it."""
    return stream_service(settings).start(max(settings.startup_timeout_s, 120.0))


def start_scorer(settings: Settings) -> str:
    """Run a scoring worker in the background (idempotent); `down` stops it."""
    return score_service(settings).start(max(settings.startup_timeout_s, 60.0))


def _every_node(settings: Settings) -> Settings:
    """The settings with every service the run directory has had: as many Kafka nodes and Spark workers,
    the S3 server, PostgreSQL (``up --brokers 3``, or with ``CHURN_S3__ENABLED`` …, and then ``down`` without
    the variables exported still stops and shows them all)."""
    def numbered(prefix: str) -> list[int]:
        return [int(p.name.rsplit("-", 1)[1]) for p in settings.run_dir.glob(f"{prefix}-[0-9]*")
                if p.name.rsplit("-", 1)[1].isdigit()]

    s = settings.model_copy(deep=True)
    s.kafka.brokers = max(s.kafka.brokers, *numbered("kafka"), 1)
    s.spark.standalone_workers = max(s.spark.standalone_workers, *numbered("spark-worker"), 0)
    if (s.run_dir / "s3" / "pid").exists() and s.s3.endpoint_url is None:
        s.s3.enabled = True
    if (s.run_dir / "postgres" / "pid").exists() and s.postgres.local:
        s.feast.registry = "postgres"
    return s


def down(settings: Settings) -> list[tuple[str, str]]:
    """Stop exactly the processes ``up`` (and ``start_stream``) started, by PID, last started first; the Kafka
    nodes last, all at once: stopped one after another, the last of a cluster would wait for a controller
    quorum the others had taken with them, until it is killed."""
    from concurrent.futures import ThreadPoolExecutor

    settings = _every_node(settings)
    nodes = kafka_services(settings)
    node_names = {node.name for node in nodes}
    rest = [service for service in services(settings) + jobs(settings) if service.name not in node_names]
    done = [(service.name, service.stop()) for service in reversed(rest)]
    with ThreadPoolExecutor(len(nodes)) as pool:
        stopped = list(pool.map(lambda node: node.stop(), nodes))
    return done + [(node.name, how) for node, how in reversed(list(zip(nodes, stopped)))]


def _address(service: Service) -> str:
    return ", ".join(f"{service.host}:{port}" for port in service.ports.values())


def status(settings: Settings) -> list[ServiceStatus]:
    settings = _every_node(settings)
    return [
        ServiceStatus(s.name, s.state(), s.pid(), _address(s), str(s.log_file))
        for s in services(settings) + jobs(settings)
    ]
