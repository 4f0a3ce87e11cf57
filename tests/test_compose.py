"""docker-compose.yml, checked without a Docker engine: it parses, and agrees with the local stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import click
import pytest
import redis as redis_py
import typer
import yaml
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from churn.cli import app
from churn.config import PROJECT_ROOT, Settings, settings_with_env
from churn.security import librdkafka_config, redis_options
from churn.stack.compose import KAFKA_PORTS, write_secrets
from churn.stack.process import free_ports
from churn.stack.security import apply_acls
from churn.transport import ensure_topics, producer

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
OFFICIAL = {"kafka": "apache/kafka:", "redis": "redis:", "prometheus": "prom/prometheus:",
            "pushgateway": "prom/pushgateway:", "grafana": "grafana/grafana:",
            "blackbox": "prom/blackbox-exporter:", "s3": "andrewgaul/s3proxy:", "postgres": "postgres:"}


def host_port(mapping: str) -> tuple[int, int]:
    """'127.0.0.1:${X:-19092}:19092' -> (19092, 19092) with defaults substituted."""
    mapping = re.sub(r"\$\{[A-Z0-9_]+:-(\d+)\}", r"\1", mapping)
    *_, host, container = mapping.split(":")
    return int(host), int(container)


def test_infrastructure_uses_official_images_on_the_local_stack_ports():
    s = Settings()
    services = COMPOSE["services"]
    for name, prefix in OFFICIAL.items():
        assert services[name]["image"].startswith(prefix)
        assert "healthcheck" in services[name]
        for mapping in services[name]["ports"]:
            assert mapping.startswith("127.0.0.1:")  # loopback only, like the local stack
    assert host_port(services["kafka"]["ports"][0])[0] == s.kafka.port
    assert host_port(services["redis"]["ports"][0]) == (s.redis.port, 6379)
    assert host_port(services["prometheus"]["ports"][0]) == (s.prometheus.port, 9090)
    assert host_port(services["pushgateway"]["ports"][0]) == (s.prometheus.pushgateway_port, 9091)
    assert host_port(services["blackbox"]["ports"][0]) == (s.prometheus.blackbox_port, 9115)
    assert host_port(services["grafana"]["ports"][0]) == (s.prometheus.grafana_port, 3000)
    # the EXTERNAL listener (the broker's server.properties comes from `churn stack compose-secrets`) is the
    # container port mapped to the host
    assert host_port(services["kafka"]["ports"][0])[1] == KAFKA_PORTS["EXTERNAL"]


def test_volumes_are_declared_or_exist_in_the_repo():
    declared = set(COMPOSE.get("volumes", {}))
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (PROJECT_ROOT / source).exists(), (name, source)
            else:
                assert source in declared, (name, source)


def test_app_services_run_real_churn_commands():
    root = typer.main.get_command(app)
    app_services = [n for n, svc in COMPOSE["services"].items() if svc.get("image") == "churn-rt:local"]
    assert {"topics", "simulator"} <= set(app_services)
    for name in app_services:
        args = [re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", a) for a in COMPOSE["services"][name]["command"]]
        command, words = root, list(args)
        while isinstance(command, click.Group):
            word = words.pop(0)
            command = command.get_command(click.Context(command), word)
            assert command is not None, (name, word)
        command.make_context(name, words)  # raises on an unknown option or a bad value
    assert (PROJECT_ROOT / "Dockerfile").exists()


def test_compose_prometheus_config_passes_promtool_and_scrapes_the_same_jobs():
    path = PROJECT_ROOT / "monitoring" / "prometheus" / "prometheus.compose.yml"
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    compose_jobs = {j["job_name"] for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    template = (PROJECT_ROOT / "monitoring" / "prometheus" / "prometheus.yml.tmpl").read_text()
    assert compose_jobs == set(re.findall(r"job_name: (\S+)", template))


def test_grafana_is_provisioned_with_the_repo_dashboards_and_prometheus():
    grafana = COMPOSE["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    root = PROJECT_ROOT / "monitoring" / "grafana"
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((root / "provisioning" / "dashboards" / "churn.yml").read_text())["providers"][0]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert sorted(p.name for p in (root / "dashboards").glob("*.json")) == [
        "churn-health.json", "churn-latency.json", "churn-model.json"]
    source = yaml.safe_load((root / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    # the datasource reaches the prometheus service on its container port
    assert source["url"] == f"http://prometheus:{host_port(COMPOSE['services']['prometheus']['ports'][0])[1]}"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana.get("environment", {})  # credentials only from .env
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_prometheus_loads_the_rules_the_local_stack_loads():
    prometheus = COMPOSE["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    config = yaml.safe_load((PROJECT_ROOT / "monitoring" / "prometheus" / "prometheus.compose.yml").read_text())
    rules_in_container = mounts["./monitoring/prometheus/rules"]
    assert config["rule_files"] == [f"{rules_in_container}/*.yml"]
    # the pushgateway target is the compose service on its container port, labels kept as pushed
    push = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
    assert push["honor_labels"] is True
    assert push["static_configs"][0]["targets"] == [
        f"pushgateway:{host_port(COMPOSE['services']['pushgateway']['ports'][0])[1]}"]


def test_compose_probes_kafka_and_redis_where_they_listen_inside_the_network():
    config = yaml.safe_load((PROJECT_ROOT / "monitoring" / "prometheus" / "prometheus.compose.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["kafka"]["static_configs"][0]["targets"] == [f"kafka:{KAFKA_PORTS['INTERNAL']}"]
    assert jobs["redis"]["static_configs"][0]["targets"] == [
        f"redis:{host_port(COMPOSE['services']['redis']['ports'][0])[1]}"]
    blackbox = f"blackbox:{host_port(COMPOSE['services']['blackbox']['ports'][0])[1]}"
    for name in ("kafka", "redis"):
        assert jobs[name]["relabel_configs"][-1]["replacement"] == blackbox
    # both speak TLS only: probed by a handshake that checks their certificates against the stack's CA
    mounts = dict(v.split(":")[:2] for v in COMPOSE["services"]["blackbox"]["volumes"])
    modules = yaml.safe_load((PROJECT_ROOT / mounts["./monitoring/prometheus/blackbox.compose.yml"].replace(
        "/etc/blackbox/blackbox.yml", "monitoring/prometheus/blackbox.compose.yml")).read_text())["modules"]
    assert jobs["kafka"]["params"]["module"] == jobs["redis"]["params"]["module"] == ["tls_connect"]
    assert modules["tls_connect"]["tcp"]["tls"] is True
    assert modules["tls_connect"]["tcp"]["tls_config"]["ca_file"] == f"{mounts['client-secrets']}/ca.pem"


def test_the_nightly_job_is_one_shot_and_pushes_to_the_pushgateway():
    nightly = COMPOSE["services"]["nightly"]
    assert nightly["command"] == ["batch", "nightly"] and nightly["restart"] == "no"
    assert nightly["profiles"] == ["nightly"]  # not started by `docker compose up`
    env = nightly["environment"]
    assert (env["CHURN_PROMETHEUS__PUSHGATEWAY_HOST"], int(env["CHURN_PROMETHEUS__PUSHGATEWAY_PORT"])) == (
        "pushgateway", host_port(COMPOSE["services"]["pushgateway"]["ports"][0])[1])


def test_the_lake_is_in_the_s3_service_and_feasts_registry_in_postgres_with_credentials_from_env_only():
    s = Settings()
    services = COMPOSE["services"]
    assert host_port(services["s3"]["ports"][0])[0] == s.s3.port
    assert host_port(services["postgres"]["ports"][0])[0] == s.postgres.port
    s3, pg = services["s3"]["environment"], services["postgres"]["environment"]
    assert s3["S3PROXY_IDENTITY"] == s.s3.access_key and s3["JCLOUDS_PROVIDER"] == "filesystem"
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == (s.postgres.username, s.postgres.database)
    reference = re.compile(r"^\$\{([A-Z0-9_]+):\?[^}]+\}$")  # required from .env, never a value in the file
    s3_secret, pg_password = reference.match(s3["S3PROXY_CREDENTIAL"]), reference.match(pg["POSTGRES_PASSWORD"])
    assert s3_secret and pg_password
    env_example = (PROJECT_ROOT / ".env.example").read_text()
    assert f"\n{s3_secret[1]}=\n" in env_example and f"\n{pg_password[1]}=\n" in env_example
    s3_port_inside = host_port(services["s3"]["ports"][0])[1]
    for name in ("features", "streaming", "scoring", "api", "nightly"):
        env = services[name]["environment"]
        assert env["CHURN_S3__ENABLED"] == "true" and env["CHURN_S3__ENDPOINT_URL"] == f"http://s3:{s3_port_inside}"
        assert reference.match(env["CHURN_S3__SECRET_KEY"])[1] == s3_secret[1]
        assert env["CHURN_FEAST__REGISTRY"] == "postgres" and env["CHURN_POSTGRES__HOST"] == "postgres"
        assert env["CHURN_POSTGRES__PORT"] == str(host_port(services["postgres"]["ports"][0])[1])
        assert reference.match(env["CHURN_POSTGRES__PASSWORD"])[1] == pg_password[1]
        Settings.model_validate({"s3": {"enabled": True, "endpoint_url": env["CHURN_S3__ENDPOINT_URL"]},
                                 "feast": {"registry": env["CHURN_FEAST__REGISTRY"]}})
    # the registry's tables exist (one `churn features apply`) before the jobs that read it start
    assert services["features"]["command"] == ["features", "apply"] and services["features"]["restart"] == "no"
    for name in ("streaming", "api", "nightly"):
        assert services[name]["depends_on"]["features"]["condition"] == "service_completed_successfully"


# -- the secured configuration, run for real: the broker from our Kafka jars, Redis from Debian's binary ------
def compose_env(service: str) -> dict[str, str]:
    """A compose service's environment with its YAML merges resolved, ${VAR:-default} substituted."""
    return {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]+)\}", r"\1", str(v))
            for k, v in COMPOSE["services"][service].get("environment", {}).items()}


#: The principal each compose service of ours runs as: the role its command opens its clients with.
PRINCIPALS = {"topics": "churn-admin", "acls": "churn-admin", "features": "churn-admin", "simulator": "churn-producer",
              "streaming": "churn-stream", "scoring": "churn-scorer", "api": "churn-api", "nightly": "churn-batch"}


def test_each_service_is_its_own_principal_with_only_the_client_secrets_mounted():
    services = COMPOSE["services"]
    secret_volumes = {"secrets", "kafka-secrets", "redis-secrets", "client-secrets"}
    for name, service in services.items():
        mounted = {v.split(":")[0] for v in service.get("volumes", [])} & secret_volumes
        expected = {"secrets": secret_volumes, "kafka": {"kafka-secrets"}, "redis": {"redis-secrets"},
                    "blackbox": {"client-secrets"}}.get(name, {"client-secrets"} if name in PRINCIPALS else set())
        assert mounted == expected, name
    for name, user in PRINCIPALS.items():
        env = compose_env(name)
        assert (env["CHURN_KAFKA__SECURITY_PROTOCOL"], env["CHURN_KAFKA__USERNAME"]) == ("SASL_SSL", user), name
        assert env["CHURN_KAFKA__PASSWORD_FILE"] == f"/etc/churn/clients/kafka/{user}.password"
        assert "CHURN_KAFKA__PASSWORD" not in env and "CHURN_REDIS__PASSWORD" not in env
        if "CHURN_REDIS__USERNAME" in env:
            assert env["CHURN_REDIS__USERNAME"] == user and env["CHURN_REDIS__ACL"] == env["CHURN_REDIS__TLS"] == "true"
            assert env["CHURN_REDIS__PASSWORD_FILE"] == f"/etc/churn/clients/redis/{user}.password"
        assert any(v.endswith(":/etc/churn/clients:ro") for v in services[name]["volumes"])
    # the broker and Redis start after the secrets exist; every client of Kafka after the ACLs are in force
    for name in ("kafka", "redis"):
        assert services[name]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    for name in ("simulator", "streaming", "scoring", "api"):
        assert services[name]["depends_on"]["acls"]["condition"] == "service_completed_successfully"
    assert services["acls"]["command"] == ["topics", "acls", "--apply"]


def test_the_compose_secrets_run_a_secured_broker_and_redis_that_hold_each_principal_to_its_acls(tmp_path):
    """``churn stack compose-secrets``' files start a real broker (formatted as compose's kafka command does)
    and compose's redis command; the clients configured as compose configures its services authenticate,
    the ACLs hold, and strangers are refused."""
    internal, external, controller, redis_port = free_ports(4)
    mounts, kafka_data = tmp_path / "etc", tmp_path / "kafka-data"
    s = Settings(run_dir=tmp_path / "state", kafka={"port": external})
    write_secrets(s, mounts, "127.0.0.1", "127.0.0.1", {"INTERNAL": internal, "EXTERNAL": external,
                                                        "CONTROLLER": controller}, str(kafka_data))
    # the broker's files: readable where they are mounted; the clients' passwords for their owner only
    assert (mounts / "kafka" / "server.properties").stat().st_mode & 0o777 == 0o644
    assert (mounts / "clients" / "kafka" / "churn-stream.password").stat().st_mode & 0o777 == 0o600
    properties = (mounts / "kafka" / "server.properties").read_text()
    assert f"advertised.listeners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{external}" in properties
    # compose publishes the EXTERNAL listener's container port on the host: the generator's default is that port
    assert host_port(COMPOSE["services"]["kafka"]["ports"][0])[1] == KAFKA_PORTS["EXTERNAL"]

    java, jars = shutil.which("java"), f"{s.jars_dir / 'kafka'}/*"
    format_args = (mounts / "kafka" / "format.args").read_text().splitlines()
    subprocess.run([java, "-cp", jars, "kafka.tools.StorageTool", "format", "-c",
                    str(mounts / "kafka" / "server.properties"), *format_args], check=True, capture_output=True)
    redis_command = [a.replace("/etc/churn/redis", str(mounts / "redis")).replace("6379", str(redis_port))
                     for a in COMPOSE["services"]["redis"]["command"]]
    assert redis_command[0] == "redis-server"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [subprocess.Popen([java, "-Xmx512m", "-cp", jars, "kafka.Kafka", str(mounts / "kafka" / "server.properties")],
                              stdout=open(logs / "kafka.log", "w"), stderr=subprocess.STDOUT),
             subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", *redis_command[1:],
                               "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                              stdout=open(logs / "redis.log", "w"), stderr=subprocess.STDOUT)]
    try:
        def as_service(service: str, port: int = internal) -> Settings:
            """The settings compose gives ``service``, its /etc/churn paths pointing at this test's files."""
            env = {k: v.replace("/etc/churn", str(mounts)) for k, v in compose_env(service).items()
                   if k.startswith(("CHURN_KAFKA__", "CHURN_REDIS__"))}
            return settings_with_env({**env, "CHURN_KAFKA__BOOTSTRAP_OVERRIDE": f"127.0.0.1:{port}",
                                      "CHURN_REDIS__HOST": "127.0.0.1", "CHURN_REDIS__PORT": str(redis_port),
                                      "CHURN_RUN_DIR": str(tmp_path / "client-run")})

        admin_settings = as_service("topics")
        deadline = time.monotonic() + 90
        while True:
            try:
                AdminClient({**librdkafka_config(admin_settings, "admin"), "log_level": 0}).list_topics(timeout=3)
                break
            except Exception:
                assert time.monotonic() < deadline, (logs / "kafka.log").read_text()[-3000:]
                time.sleep(1)
        assert {name for name, _ in ensure_topics(admin_settings)} >= {s.topics.cdr.name, s.topics.churn_alerts.name}
        assert apply_acls(admin_settings) > 20

        def produce(settings: Settings, topic: str) -> KafkaError | None:
            delivered: list = []
            p = producer(settings, **{"message.timeout.ms": 10_000, "enable.idempotence": False,
                                      "on_delivery": lambda err, msg: delivered.append(err)})
            p.produce(topic, b"{}", key=b"c1")
            p.flush(20)
            assert len(delivered) == 1
            return delivered[0]

        # the simulator writes cdr, through the listener the host reaches (EXTERNAL) as through the network's
        assert produce(as_service("simulator", external), s.topics.cdr.name) is None
        assert produce(as_service("simulator"), s.topics.cdr.name) is None
        # the alerts principal may not write cdr; the streaming job may not write alerts
        alerts = as_service("topics").model_copy(deep=True)
        alerts.kafka.username, alerts.kafka.password_file = "churn-alerts", mounts / "clients/kafka/churn-alerts.password"
        for settings, topic in ((alerts, s.topics.cdr.name), (as_service("streaming"), s.topics.churn_alerts.name)):
            err = produce(settings, topic)
            assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, err)
        # a plaintext client against the TLS listener gets nothing
        with pytest.raises(Exception):
            AdminClient({"bootstrap.servers": f"127.0.0.1:{external}", "log_level": 0}).list_topics(timeout=4)

        # Redis: the streaming job writes, the scorer only reads, a stranger is refused
        stream = redis_py.Redis(**redis_options(as_service("streaming"), "stream"), socket_timeout=5)
        assert stream.set("compose-check", "1") is True
        scorer = redis_py.Redis(**redis_options(as_service("scoring"), "scorer"), socket_timeout=5)
        assert scorer.get("compose-check") == b"1"
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            scorer.set("compose-check", "2")
        stranger = {k: v for k, v in redis_options(as_service("scoring"), "scorer").items()
                    if k not in ("username", "password")}
        with pytest.raises(redis_py.exceptions.AuthenticationError):
            redis_py.Redis(**stranger, socket_timeout=5).set("compose-check", "3")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_the_image_drops_the_jars_pyspark_ships_wherever_setup_does():
    """Two versions of a jar on one classpath break Spark: the image trims the same jar folders setup.sh does."""
    trimmed_by_setup = set(re.findall(r'\[ "\$name" = (\w+) \]', (PROJECT_ROOT / "scripts" / "setup.sh").read_text()))
    assert trimmed_by_setup == {"spark", "s3a"}
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"drop_shipped_jars\.py /app/\.cache/jars/(\w+)", dockerfile)) == trimmed_by_setup


def test_the_image_builds_the_projects_own_spark_operators_as_setup_does():
    """The streaming job needs ``.cache/jars/churn/churn-spark.jar`` (``churn.spark.spark_jars``): the image compiles
    it with the same script as setup.sh, with a JDK (javac), not a JRE."""
    setup = (PROJECT_ROOT / "scripts" / "setup.sh").read_text()
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "bash scripts/build_jvm.sh .venv/bin/python \"$dest\"" in setup and "dest=.cache/jars/churn" in setup
    assert "bash scripts/build_jvm.sh python /app/.cache/jars/churn" in dockerfile
    assert "openjdk-17-jdk-headless" in dockerfile and "jre" not in dockerfile
