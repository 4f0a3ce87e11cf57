"""Who each component is to Kafka and Redis, and how every client library is told.

A component names its **role** when it opens a client; the role's principal is ``churn-<role>``
unless the settings name one (``kafka.username``, ``redis.username``): a deployment runs each
process with its own, the local stack gives each component its own. Passwords come from the
settings (``password``), a file (``password_file``, a mounted secret) or, on the local stack, the
file it generated for the principal; never from the code. The same credentials are then rendered for
each client library: librdkafka (confluent-kafka, kcat), aiokafka (Faust), the Java client (Spark's
Kafka source and sink) and redis-py (Feast's online store, the scorer's reader).

With the defaults (``PLAINTEXT``, no Redis ACL) every renderer adds nothing:

>>> from churn.config import Settings
>>> librdkafka_config(Settings(), "scorer")
{'bootstrap.servers': '127.0.0.1:19092'}
>>> redis_options(Settings(), "scorer")
{'host': '127.0.0.1', 'port': 16379}

With ``SASL_SSL`` and a Redis ACL they carry the principal, its password and the CA:

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> s = Settings(run_dir=d, kafka={"security_protocol": "SASL_SSL", "password": "pw"},
...              redis={"acl": True, "tls": True, "password": "rpw"})
>>> conf = librdkafka_config(s, "scorer")
>>> conf["sasl.username"], conf["sasl.mechanisms"], conf["security.protocol"]
('churn-scorer', 'SCRAM-SHA-512', 'SASL_SSL')
>>> spark_kafka_options(s, "stream")["kafka.sasl.jaas.config"].split()[-2:]
['username="churn-stream"', 'password="pw";']
>>> sorted(redis_options(s, "api"))
['host', 'password', 'port', 'ssl', 'ssl_ca_certs', 'username']
>>> feast_connection_string(s, "api").split(",")[1:3]
['username=churn-api', 'password=rpw']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn.config import Settings

#: The components, each with its own principal (``churn-<role>``) on the local stack.
ROLES = ("admin", "producer", "stream", "scorer", "api", "alerts", "batch")
#: The components that use Redis (Feast's online store).
REDIS_ROLES = ("admin", "stream", "scorer", "api", "batch")


class MissingCredentials(RuntimeError):
    """The settings ask for authentication but say nowhere what the principal's password is."""


def principal(role: str) -> str:
    """The local stack's principal for a component: ``churn-<role>``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return f"churn-{role}"


def credentials_dir(settings: Settings, service: str) -> Path:
    """Where the local stack keeps each principal's generated password for ``service`` (files 0600)."""
    return settings.run_dir / "secrets" / service


def local_ca_file(settings: Settings) -> Path:
    """The local stack's CA certificate (PEM): it signs the broker's and Redis' certificates."""
    return settings.run_dir / "tls" / "ca.pem"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    ca_file: Path


def _credentials(settings: Settings, service: str, section, role: str) -> Credentials:
    """``role``'s credentials for ``service`` from its settings ``section``: the password is, in order,
    ``password``, the contents of ``password_file``, the local stack's generated one."""
    username = section.username or principal(role)
    if section.password is not None:
        password = section.password.get_secret_value()
    else:
        path = section.password_file or credentials_dir(settings, service) / f"{username}.password"
        if not path.exists():
            env = f"CHURN_{service.upper()}__PASSWORD"
            raise MissingCredentials(f"no {service} password for principal {username!r}: set {env}_FILE "
                                     f"(or {env}); {path} does not exist")
        password = path.read_text().strip()
    return Credentials(username, password, section.ca_file or local_ca_file(settings))


# -- Kafka ------------------------------------------------------------------------------------
def kafka_credentials(settings: Settings, role: str) -> Credentials | None:
    """``role``'s Kafka credentials (None with ``PLAINTEXT``)."""
    return _credentials(settings, "kafka", settings.kafka, role) if settings.kafka.secured else None


def librdkafka_config(settings: Settings, role: str) -> dict[str, str]:
    """``bootstrap.servers`` and the security properties for confluent-kafka (and kcat's ``-X``)."""
    conf = {"bootstrap.servers": settings.kafka.bootstrap_servers}
    c = kafka_credentials(settings, role)
    if c is not None:
        conf.update({"security.protocol": "SASL_SSL", "sasl.mechanisms": settings.kafka.sasl_mechanism,
                     "sasl.username": c.username, "sasl.password": c.password, "ssl.ca.location": str(c.ca_file)})
    return conf


def local_client_config(settings: Settings, role: str) -> Path:
    """The local stack's ready-made librdkafka config of ``role``'s principal (``kcat -F``)."""
    return settings.run_dir / "kafka" / "clients" / f"{principal(role)}.properties"


def kcat_connection(settings: Settings, role: str) -> str:
    """kcat's arguments to reach the broker as ``role``: ``-b servers``, or ``-F`` the local client config."""
    if settings.kafka.secured and settings.kafka.username is None and settings.kafka.password is None:
        return f"-F {local_client_config(settings, role)}"
    return f"-b {settings.kafka.bootstrap_servers}"


def faust_credentials(settings: Settings, role: str):
    """Faust's ``broker_credentials`` (aiokafka's SASL over TLS), or None with ``PLAINTEXT``."""
    c = kafka_credentials(settings, role)
    if c is None:
        return None
    import ssl

    import faust

    return faust.SASLCredentials(username=c.username, password=c.password, mechanism=settings.kafka.sasl_mechanism,
                                 ssl_context=ssl.create_default_context(cafile=str(c.ca_file)))


def java_properties(settings: Settings, role: str) -> dict[str, str]:
    """The Java client's security properties (Spark's Kafka source and sink take them prefixed with
    ``kafka.``; a Java producer or consumer takes them as they are)."""
    c = kafka_credentials(settings, role)
    if c is None:
        return {}
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="{c.username}" password="{c.password}";')
    return {"security.protocol": "SASL_SSL", "sasl.mechanism": settings.kafka.sasl_mechanism,
            "sasl.jaas.config": jaas, "ssl.truststore.type": "PEM", "ssl.truststore.location": str(c.ca_file)}


def spark_kafka_options(settings: Settings, role: str) -> dict[str, str]:
    """Options for Spark's Kafka source and sink: the bootstrap servers and the Java client's security."""
    return {"kafka.bootstrap.servers": settings.kafka.bootstrap_servers,
            **{f"kafka.{k}": v for k, v in java_properties(settings, role).items()}}


# -- Redis ------------------------------------------------------------------------------------
def redis_options(settings: Settings, role: str) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis``: address, ACL user and password, TLS."""
    r = settings.redis
    options: dict[str, Any] = {"host": r.host, "port": r.port}
    if r.acl:
        c = _credentials(settings, "redis", r, role)
        options.update(username=c.username, password=c.password)
    if r.tls:
        options.update(ssl=True, ssl_ca_certs=str(r.ca_file or local_ca_file(settings)))
    return options


def feast_connection_string(settings: Settings, role: str) -> str:
    """Feast's Redis ``connection_string``: ``host:port`` then ``key=value`` options for ``redis.Redis``."""
    options = redis_options(settings, role)
    address = f"{options.pop('host')}:{options.pop('port')}"
    return ",".join([address, *(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())])


# -- PostgreSQL (Feast's registry) ------------------------------------------------------------------
def postgres_password(settings: Settings) -> str:
    """The registry role's password: ``postgres.password``, ``postgres.password_file``, or the local stack's."""
    p = settings.postgres
    if p.password is not None:
        return p.password.get_secret_value()
    path = p.password_file or credentials_dir(settings, "postgres") / f"{p.username}.password"
    if not path.exists():
        raise MissingCredentials(f"no PostgreSQL password for {p.username!r}: set CHURN_POSTGRES__PASSWORD_FILE "
                                 f"(or CHURN_POSTGRES__PASSWORD); {path} does not exist")
    return path.read_text().strip()


def registry_url(settings: Settings, hide_password: bool = False) -> str:
    """SQLAlchemy's URL of the registry database (psycopg 3), the password escaped (or masked)."""
    from sqlalchemy.engine import URL

    p = settings.postgres
    url = URL.create("postgresql+psycopg", username=p.username, password=postgres_password(settings),
                     host=p.host, port=p.port, database=p.database)
    return url.render_as_string(hide_password=hide_password)
