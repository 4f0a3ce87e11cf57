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
OFFICIAL = {"kafka": "apache/kafka:", "redis": "redis:", "prometheus": "prom/prometheus:"}


def host_port(mapping: str) -> tuple[int, int]:
    """'127.0.0.1:${X:-19092}:19092' -> (19092, 19092) with defaults substituted."""
    mapping = re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", mapping)
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
