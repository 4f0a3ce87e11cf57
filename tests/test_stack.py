"""The local stack from real processes: idempotent up, exact down, clear errors, topics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from conftest import run_cli, settings_from, stack_env

from churn import stack
from churn.stack.process import StackError, port_is_free
from churn.stack.services import prometheus_config, redis_service
from churn.transport import ensure_topics, topic_config


def _our_processes(run_dir: Path) -> list[int]:
    """PIDs whose working directory is inside run_dir (what `up` starts runs there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(run_dir)):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_up_twice_is_harmless_and_down_leaves_nothing_running(tmp_path):
    env = stack_env(tmp_path / "run")
    first = run_cli(["stack", "up"], env, timeout=180)
    assert first.returncode == 0, first.stderr + first.stdout
    s = settings_from(env)
    n = len(stack.services(s))  # Kafka, Redis, Pushgateway, blackbox exporter, Prometheus
    assert n == 5
    assert first.stdout.count("started (pid") == n
    infra = lambda: [st for st in stack.status(s) if st.name not in ("stream", "score")]  # noqa: E731 (jobs: not started by `up`)
    pids = {st.name: st.pid for st in infra()}
    assert len(pids) == n and all(pids.values()) and all(st.state == "running" for st in infra())

    second = run_cli(["stack", "up"], env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == n
    assert {st.name: st.pid for st in infra()} == pids  # same processes, nothing restarted
    topics = [line.split() for line in second.stdout.splitlines() if line.startswith("topic ")]
    assert topics == [["topic", spec.name, "exists"] for spec in s.topics.all()]  # every topic, once

    status = run_cli(["stack", "status"], env)
    assert status.returncode == 0 and status.stdout.count("running") >= n
    assert f"127.0.0.1:{env['CHURN_KAFKA__PORT']}" in status.stdout

    down = run_cli(["stack", "down"], env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped (pid") == n
    assert _our_processes(tmp_path / "run") == []
    for var in ("CHURN_KAFKA__PORT", "CHURN_REDIS__PORT", "CHURN_PROMETHEUS__PORT",
                "CHURN_PROMETHEUS__PUSHGATEWAY_PORT", "CHURN_PROMETHEUS__BLACKBOX_PORT"):
        assert port_is_free("127.0.0.1", int(env[var]))
    again = run_cli(["stack", "down"], env)
    assert again.returncode == 0 and again.stdout.count("not running") == n + 2  # and its two jobs (stream, score)


def test_a_taken_port_is_a_clear_error(tmp_path):
    env = stack_env(tmp_path / "run")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["CHURN_REDIS__PORT"])))
        squatter.listen()
        s = settings_from(env)
        try:
            redis_service(s).start(timeout_s=10)
            raise AssertionError("start should have failed")
        except StackError as exc:
            message = str(exc)
        assert f"port {env['CHURN_REDIS__PORT']} (CHURN_REDIS__PORT)" in message
        assert "already in use" in message
        assert not (tmp_path / "run" / "redis" / "pid").exists()

        cli = run_cli(["stack", "up", "--no-topics"], {**env}, timeout=180)
        assert cli.returncode == 1
        assert "CHURN_REDIS__PORT" in cli.stderr and "already in use" in cli.stderr
        run_cli(["stack", "down"], env, timeout=120)
    assert _our_processes(tmp_path / "run") == []


def test_a_service_that_dies_at_start_reports_its_log(tmp_path):
    env = stack_env(tmp_path / "run")
    s = settings_from(env)
    service = redis_service(s)
    service.command = lambda: ["redis-server", "--port", "not-a-port"]
    try:
        service.start(timeout_s=10)
        raise AssertionError("start should have failed")
    except StackError as exc:
        assert "redis exited with code" in str(exc)
        assert "Last lines of" in str(exc)


def test_topics_have_their_partitions_and_configs_and_creation_is_idempotent(live_stack):
    s = live_stack
    again = ensure_topics(s)
    assert again == [(t.name, "exists") for t in s.topics.all()]
    from churn.transport import admin

    md = admin(s).list_topics(timeout=10)
    for spec in s.topics.all():
        assert len(md.topics[spec.name].partitions) == spec.partitions
    assert topic_config(s, "churn-scores")["cleanup.policy"] == "compact"
    assert topic_config(s, "cdr")["message.timestamp.type"] == "CreateTime"


def test_redis_and_prometheus_answer(live_stack):
    s = live_stack
    with socket.create_connection(("127.0.0.1", s.redis.port)) as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        reply = b""
        while b"$1\r\nv\r\n" not in reply:
            reply += sock.recv(64)
    url = f"http://127.0.0.1:{s.prometheus.port}/api/v1/query?query=up%7Bjob%3D%22prometheus%22%7D"
    import time

    deadline = time.time() + 30
    while True:
        result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
        if result or time.time() > deadline:
            break
        time.sleep(1)
    assert result and result[0]["value"][1] == "1"


def test_rendered_prometheus_config_passes_promtool(tmp_path, live_stack):
    path = tmp_path / "prometheus.yml"
    path.write_text(prometheus_config(live_stack))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
