"""docker-compose.yml, checked without a Docker engine: it parses, and agrees with the local stack."""

from __future__ import annotations

import re
import subprocess

import click
import typer
import yaml

from churn.cli import app
from churn.config import PROJECT_ROOT, Settings

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
    # the EXTERNAL listener is the container port mapped to the host
    kafka_env = services["kafka"]["environment"]
    assert f":{host_port(services['kafka']['ports'][0])[1]}" in kafka_env["KAFKA_LISTENERS"]


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
    kafka_internal = COMPOSE["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")[0]
    assert jobs["kafka"]["static_configs"][0]["targets"] == [kafka_internal.split("//")[1]]
    assert jobs["redis"]["static_configs"][0]["targets"] == [
        f"redis:{host_port(COMPOSE['services']['redis']['ports'][0])[1]}"]
    blackbox = f"blackbox:{host_port(COMPOSE['services']['blackbox']['ports'][0])[1]}"
    for name in ("kafka", "redis"):
        assert jobs[name]["relabel_configs"][-1]["replacement"] == blackbox
    modules = yaml.safe_load((PROJECT_ROOT / "monitoring" / "prometheus" / "blackbox.yml").read_text())["modules"]
    assert {jobs["kafka"]["params"]["module"][0], jobs["redis"]["params"]["module"][0]} <= set(modules)


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
