"""The local stack secured: a CA and certificates, a principal per component, least-privilege ACLs.

**Kafka** (``kafka.security_protocol = "SASL_SSL"``): the broker listens for clients with SASL/SCRAM
over TLS only, authorises every request with KRaft's ``StandardAuthorizer`` and denies what no ACL
allows (``acl_bindings`` is the whole policy, applied by ``apply_acls`` after every start). Its own
controller link uses SASL/PLAIN on loopback as ``churn-controller``; it and ``churn-admin`` are the
super users. **Redis** (``redis.acl``, ``redis.tls``): an ACL user per component with only the commands
it needs (``redis_acl``), the default user off; TLS only, when asked.

Generated on first start under ``<run_dir>``, readable by the owner only (0600):

* ``tls/ca.pem`` (the CA), ``tls/kafka.pem`` (the broker's key and certificate chain), ``tls/redis.key``
  and ``tls/redis.crt``, for ``localhost`` and the configured hosts;
* ``secrets/kafka/<principal>.password`` and ``secrets/redis/<user>.password``: random passwords; the
  Kafka ones are written into the broker's metadata as SCRAM credentials when its storage is formatted;
* ``kafka/clients/<principal>.properties`` and ``….java.properties``: ready-made client configs
  (``kcat -F``, librdkafka; a Java client's ``--command-config``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import time
from pathlib import Path

from churn.config import Settings
from churn.security import (REDIS_ROLES, ROLES, credentials_dir, java_properties, librdkafka_config, local_ca_file,
                            local_client_config, principal)

CONTROLLER = "churn-controller"
SUPER_USERS = (principal("admin"), CONTROLLER)


def write_file(path: Path, text: str, mode: int) -> Path:
    """Write ``text`` to ``path`` with permissions ``mode`` from its creation on; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable and writable by the owner only (created 0600, never wider)."""
    return write_file(path, text, 0o600)


def properties_text(properties: dict[str, str]) -> str:
    """``key=value`` lines: a Java ``.properties`` file, or a librdkafka config (``kcat -F``)."""
    return "".join(f"{k}={v}\n" for k, v in properties.items())


def broker_pem(settings: Settings) -> Path:
    return settings.run_dir / "tls" / "kafka.pem"


def redis_cert(settings: Settings) -> tuple[Path, Path]:
    """Redis' certificate and key files."""
    return settings.run_dir / "tls" / "redis.crt", settings.run_dir / "tls" / "redis.key"


def password(settings: Settings, user: str, service: str = "kafka") -> str:
    """The generated password of ``user`` for ``service`` (created on first call)."""
    path = credentials_dir(settings, service) / f"{user}.password"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def _ca(settings: Settings, days: int):
    """The local CA's key and certificate: loaded if generated before, else generated now (EC P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_path, key_path = local_ca_file(settings), settings.run_dir / "tls" / "ca.key"
    if ca_path.exists() and key_path.exists():
        return (serialization.load_pem_private_key(key_path.read_bytes(), None),
                x509.load_pem_x509_certificate(ca_path.read_bytes()))
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "churn local CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_private(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode())
    write_private(ca_path, cert.public_bytes(pem).decode())
    return key, cert


def server_certificate(settings: Settings, common_name: str, host: str, days: int = 825) -> tuple[str, str]:
    """A key and a certificate (PEM) for a server at ``host`` (and ``localhost``), signed by the local CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca = _ca(settings, days)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = x509.IPAddress(ipaddress.ip_address(host))
        names += [] if address in names else [address]
    except ValueError:
        names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
            cert.public_bytes(pem).decode() + ca.public_bytes(pem).decode())


def broker_properties(settings: Settings, port: int, controller_port: int) -> list[str]:
    """A secured local node's listener, SASL, TLS and authoriser properties (``server.properties`` lines)."""
    host = settings.kafka.host
    return secured_listener_properties(settings, {"SASL_SSL": (f"{host}:{port}", f"{host}:{port}")},
                                       f"{host}:{controller_port}", broker_pem(settings), local_ca_file(settings))


def secured_listener_properties(settings: Settings, listeners: dict[str, tuple[str, str]], controller: str,
                                keystore: Path, truststore: Path) -> list[str]:
    """Listener, SASL, TLS and authoriser properties of a node whose client ``listeners`` (name: (bind
    address, advertised address); the first is the inter-broker one) all speak SASL/SCRAM over TLS and
    whose ``controller`` listener speaks SASL/PLAIN; ``keystore`` is its key and certificate chain (PEM),
    ``truststore`` the CA its own client side trusts."""
    mech = settings.kafka.sasl_mechanism
    admin, controller_user = principal("admin"), CONTROLLER
    controller_pw = password(settings, controller_user)
    scram_login = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                   f'username="{admin}" password="{password(settings, admin)}";')
    return [
        "listeners=" + ",".join(f"{name}://{bind}" for name, (bind, _) in listeners.items())
        + f",CONTROLLER://{controller}",
        "advertised.listeners=" + ",".join(f"{name}://{advertised}" for name, (_, advertised) in listeners.items()),
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={next(iter(listeners))}",
        "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,"
        + ",".join(f"{name}:SASL_SSL" for name in listeners),
        f"sasl.enabled.mechanisms={mech}",
        f"sasl.mechanism.inter.broker.protocol={mech}",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
        f'required username="{controller_user}" password="{controller_pw}" user_{controller_user}="{controller_pw}";',
        *(f"listener.name.{name.lower()}.{mech.lower()}.sasl.jaas.config={scram_login}" for name in listeners),
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",  # the broker's own client side (inter-broker) trusts the CA
        f"ssl.truststore.location={truststore}",
        "ssl.client.auth=none",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=" + ";".join(f"User:{u}" for u in SUPER_USERS),
        "allow.everyone.if.no.acl.found=false",
    ]


def scram_format_args(settings: Settings) -> list[str]:
    """``StorageTool format`` arguments that write every principal's SCRAM credential into the metadata."""
    mech = settings.kafka.sasl_mechanism
    args = []
    for role in ROLES:
        user = principal(role)
        args += ["--add-scram", f"{mech}=[name={user},password={password(settings, user)}]"]
    return args


def write_client_configs(settings: Settings) -> None:
    """``clients/<principal>.properties`` (librdkafka, ``kcat -F``) and ``.java.properties`` per principal."""
    for role in ROLES:
        lib, path = librdkafka_config(settings, role), local_client_config(settings, role)
        write_private(path, properties_text(lib))
        java = {"bootstrap.servers": lib["bootstrap.servers"], **java_properties(settings, role)}
        write_private(path.with_suffix(".java.properties"), properties_text(java))


def prepare_kafka(settings: Settings) -> None:
    """Everything the secured broker and its clients need, generated where missing."""
    if not broker_pem(settings).exists():
        write_private(broker_pem(settings), "".join(server_certificate(settings, "churn-kafka", settings.kafka.host)))
    for user in (*map(principal, ROLES), CONTROLLER):
        password(settings, user)
    write_client_configs(settings)


def acl_bindings(settings: Settings) -> list:
    """The authorisation policy: what each component's principal may do, and nothing more.

    * producers write ``cdr``, ``churn-labels`` and ``customer-profiles``;
    * the streaming job reads ``cdr`` and ``customer-profiles``, writes their dead-letter topics;
    * the scorer reads ``cdr`` and ``churn-labels``, reads and writes ``churn-scores`` (its state),
      writes ``churn-alerts``, uses its group and transactional ids (both prefixed with its app id)
      and its Faust leader topic;
    * the API reads ``churn-scores`` and ``churn-alerts``; alert consumers read ``churn-alerts``; the
      nightly job reads ``churn-labels``;
    * every principal may use consumer groups named after it (``churn-<role>…``); Spark's Kafka
      source uses its own group names (``spark-kafka-source-…``), granted to the streaming job.
    """
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    t = settings.topics
    leader = f"{settings.scoring.app_id}-__assignor-__leader"
    READ, WRITE, DESCRIBE, CREATE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.CREATE
    LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    TOPIC, GROUP, TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    reads = lambda *names: [(TOPIC, n, LITERAL, op) for n in names for op in (READ, DESCRIBE)]  # noqa: E731
    writes = lambda *names: [(TOPIC, n, LITERAL, op) for n in names for op in (WRITE, DESCRIBE)]  # noqa: E731
    policy = {
        "producer": writes(t.cdr.name, t.churn_labels.name, t.customer_profiles.name),
        "stream": [*reads(t.cdr.name, t.customer_profiles.name), *writes(t.cdr_dlq.name, t.customer_profiles_dlq.name),
                   (GROUP, "spark-kafka-source-", PREFIXED, READ)],
        "scorer": [*reads(t.cdr.name, t.churn_labels.name, t.churn_scores.name, leader),
                   *writes(t.churn_scores.name, t.churn_alerts.name), (TOPIC, leader, LITERAL, CREATE),
                   (GROUP, settings.scoring.app_id, PREFIXED, READ),
                   (TXN, settings.scoring.app_id, PREFIXED, WRITE), (TXN, settings.scoring.app_id, PREFIXED, DESCRIBE)],
        "api": reads(t.churn_scores.name, t.churn_alerts.name),
        "alerts": reads(t.churn_alerts.name),
        "batch": reads(t.churn_labels.name),
    }
    bindings = {}  # each once (a topic both read and written is described once), in policy order
    for role, rules in policy.items():
        user = f"User:{principal(role)}"
        for resource, name, pattern, op in [*rules, (GROUP, principal(role), PREFIXED, READ)]:
            bindings.setdefault((user, resource, name, pattern, op),
                                AclBinding(resource, name, pattern, user, "*", op, AclPermissionType.ALLOW))
    return list(bindings.values())


def apply_acls(settings: Settings, timeout_s: float = 30.0) -> int:
    """Create the policy's ACLs on the broker, as ``churn-admin`` (creating an existing ACL is a no-op)."""
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    from churn.transport import admin

    bindings = acl_bindings(settings)
    client = admin(settings, role="admin")  # alive until the futures resolve
    for future in client.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout_s)
    # created is not yet in force: each node's authoriser applies them as it replays the metadata log, so
    # wait until the broker lists them all (a client started right after this call is not refused)
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                             AclPermissionType.ANY)
    wanted, deadline = set(map(str, bindings)), time.monotonic() + timeout_s
    while not wanted <= set(map(str, client.describe_acls(every, request_timeout=timeout_s).result(timeout_s))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker does not list the {len(bindings)} ACLs {timeout_s:.0f} s after creating them")
        time.sleep(0.2)
    return len(bindings)


# -- Redis ------------------------------------------------------------------------------------
#: What each component may do in Redis. Feast's keys are binary entity keys (the project is their suffix),
#: so every user sees every key (``~*``); the commands are what differ. Scripts run with their caller's
#: permissions, so the readers' Lua lookup (``HMGET`` per key) cannot write either.
REDIS_PERMISSIONS = {
    "admin": "~* &* +@all",
    "stream": "~* +@read +@write +@connection +@transaction +@scripting -@dangerous",
    "batch": "~* +@read +@write +@connection +@transaction +@scripting -@dangerous",
    "scorer": "~* +@read +@connection +@scripting -@write -@dangerous",
    "api": "~* +@read +@connection +@scripting -@write -@dangerous",
}
assert set(REDIS_PERMISSIONS) == set(REDIS_ROLES)


def redis_acl(settings: Settings) -> str:
    """Redis' ACL file: the default user off, one user per component (passwords stored as SHA-256)."""
    import hashlib

    lines = ["user default off"]
    for role, permissions in REDIS_PERMISSIONS.items():
        digest = hashlib.sha256(password(settings, principal(role), "redis").encode()).hexdigest()
        lines.append(f"user {principal(role)} on #{digest} resetchannels {permissions}")
    return "\n".join(lines) + "\n"


def prepare_redis(settings: Settings, home: Path) -> None:
    """The ACL file and TLS files Redis needs (``redis_args``), generated where missing."""
    r = settings.redis
    if r.acl:
        write_private(home / "users.acl", redis_acl(settings))
    cert, key = redis_cert(settings)
    if r.tls and not (cert.exists() and key.exists()):
        key_pem, cert_pem = server_certificate(settings, "churn-redis", r.host)
        write_private(key, key_pem)
        write_private(cert, cert_pem)


def redis_args(settings: Settings, home: Path) -> list[str]:
    """``redis-server``'s arguments for the ACL file and TLS, as the settings ask (none by default)."""
    r = settings.redis
    args = ["--aclfile", str(home / "users.acl")] if r.acl else []
    if r.tls:
        cert, key = redis_cert(settings)
        args += ["--port", "0", "--tls-port", str(r.port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                 "--tls-ca-cert-file", str(local_ca_file(settings)), "--tls-auth-clients", "no"]
    return args
