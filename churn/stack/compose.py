"""The secrets of ``docker-compose.yml``: what its one-shot ``secrets`` service writes before anything starts.

Compose runs the secured configuration of the local stack: Kafka with SASL/SCRAM over TLS on every
client listener and KRaft's ``StandardAuthorizer`` with the least-privilege ACLs of
``churn.stack.security``, Redis with an ACL user per component over TLS. ``write_secrets`` (the CLI's
``churn stack compose-secrets``) keeps what must outlive a run in its own directory, the settings'
``run_dir`` (the CA, every principal's password, the cluster id: generated once), and writes on every run
what each container reads into a directory that only that container mounts:

* ``<mounts>/kafka`` (the broker): ``server.properties``, ``format.args`` (the storage format's
  arguments: the cluster id and every principal's SCRAM credential), ``kafka.pem`` (its key and
  certificate chain), ``ca.pem`` and ``admin.properties`` (its health check's client config);
* ``<mounts>/redis`` (Redis): ``users.acl``, ``redis.crt``, ``redis.key``, ``ca.pem`` and
  ``admin.password`` (its health check);
* ``<mounts>/clients`` (the system's own containers): ``ca.pem``, readable by every user (the blackbox
  exporter checks both servers' certificates with it); ``kafka/<principal>.password``,
  ``redis/<principal>.password`` and ``kafka/<principal>.properties`` (``kcat -F`` inside the network),
  readable by their owner only.

The broker's and Redis' files are readable by every user of their own container, which runs as a user
of its image's choosing; no other container mounts them.
"""

from __future__ import annotations

from pathlib import Path

from churn.config import Settings
from churn.security import REDIS_ROLES, ROLES, java_properties, librdkafka_config, local_ca_file, principal
from churn.stack.security import (broker_pem, password, prepare_redis, properties_text, redis_acl, redis_cert,
                                  scram_format_args, secured_listener_properties, server_certificate, write_file,
                                  write_private)

#: Where the containers mount the secret volumes (``<MOUNTS>/kafka``, ``…/redis``, ``…/clients``).
MOUNTS = Path("/etc/churn")
#: The broker's listeners inside its container: the compose network's, the one published to the host, the
#: controller's.
KAFKA_PORTS = {"INTERNAL": 9092, "EXTERNAL": 19092, "CONTROLLER": 9093}
#: The broker's data directory in the ``apache/kafka`` image.
KAFKA_DATA = "/var/lib/kafka/data"


def secured_settings(settings: Settings, kafka_host: str, redis_host: str) -> Settings:
    """``settings`` with Kafka on SASL_SSL and Redis on ACL users over TLS, at the compose hosts."""
    s = settings.model_copy(deep=True)
    s.kafka.host, s.kafka.security_protocol, s.kafka.brokers = kafka_host, "SASL_SSL", 1
    s.redis.host, s.redis.acl, s.redis.tls = redis_host, True, True
    return s


def write_secrets(settings: Settings, mounts: Path = MOUNTS, kafka_host: str = "kafka", redis_host: str = "redis",
                  kafka_ports: dict[str, int] = KAFKA_PORTS, kafka_data: str = KAFKA_DATA) -> list[Path]:
    """Generate what is missing in ``settings.run_dir``, then write every container's files under
    ``mounts``; returns the files written. ``settings.kafka.port`` is the port the host reaches the
    broker on (the EXTERNAL listener is advertised as ``127.0.0.1:<port>``)."""
    from churn.stack.services import new_cluster_id, node_properties

    s = secured_settings(settings, kafka_host, redis_host)
    if not broker_pem(s).exists():
        write_private(broker_pem(s), "".join(server_certificate(s, "churn-kafka", kafka_host)))
    prepare_redis(s, s.run_dir / "redis")  # Redis' certificate, where missing
    cluster_id = s.run_dir / "kafka" / "cluster-id"
    if not cluster_id.exists():
        write_private(cluster_id, new_cluster_id())
    ca = local_ca_file(s).read_text()
    kafka, redis, clients = mounts / "kafka", mounts / "redis", mounts / "clients"
    internal, external, controller = (kafka_ports[n] for n in ("INTERNAL", "EXTERNAL", "CONTROLLER"))
    readable = lambda path, text: write_file(path, text, 0o644)  # noqa: E731  (only its container mounts it)
    written = [readable(kafka / "ca.pem", ca), readable(kafka / "kafka.pem", broker_pem(s).read_text())]

    listeners = secured_listener_properties(
        s, {"INTERNAL": (f"0.0.0.0:{internal}", f"{kafka_host}:{internal}"),
            "EXTERNAL": (f"0.0.0.0:{external}", f"127.0.0.1:{s.kafka.port}")},
        f"{kafka_host}:{controller}", kafka / "kafka.pem", kafka / "ca.pem")
    quorum = f"controller.quorum.voters=1@{kafka_host}:{controller}"
    broker = s.model_copy(deep=True)
    broker.kafka.ca_file, broker.kafka.bootstrap_override = kafka / "ca.pem", f"{kafka_host}:{internal}"
    admin = {"bootstrap.servers": broker.kafka.bootstrap_servers, **java_properties(broker, "admin")}
    format_args = ["-t", cluster_id.read_text().strip(), *scram_format_args(s)]
    written += [readable(kafka / "server.properties", node_properties(s, 0, quorum, listeners, kafka_data)),
                readable(kafka / "format.args", "\n".join(format_args) + "\n"),
                readable(kafka / "admin.properties", properties_text(admin))]

    cert, key = redis_cert(s)
    written += [readable(redis / "ca.pem", ca), readable(redis / "users.acl", redis_acl(s)),
                readable(redis / "redis.crt", cert.read_text()), readable(redis / "redis.key", key.read_text()),
                write_private(redis / "admin.password", password(s, principal("admin"), "redis"))]

    client = s.model_copy(deep=True)
    client.kafka.ca_file, client.kafka.bootstrap_override = clients / "ca.pem", f"{kafka_host}:{internal}"
    written.append(write_file(clients / "ca.pem", ca, 0o644))  # the blackbox exporter's user reads it
    for role in ROLES:
        user = principal(role)
        written.append(write_private(clients / "kafka" / f"{user}.password", password(s, user)))
        written.append(write_private(clients / "kafka" / f"{user}.properties",
                                     properties_text(librdkafka_config(client, role))))
    for role in REDIS_ROLES:
        user = principal(role)
        written.append(write_private(clients / "redis" / f"{user}.password", password(s, user, "redis")))
    return written
