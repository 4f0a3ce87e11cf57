"""Kafka and Redis secured, on a stack of the test module's own: SASL/SCRAM over TLS and ACLs per
component on the broker, ACL users over TLS on Redis.

The stack is started with ``CHURN_KAFKA__SECURITY_PROTOCOL=SASL_SSL``, ``CHURN_REDIS__ACL=true`` and
``CHURN_REDIS__TLS=true``, as a user would start it; every client below is a real one (confluent-kafka,
kcat, the streaming job's Spark, the scorer's Faust and librdkafka, redis-py, Feast, the API),
authenticated as its own principal.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
import urllib.request
import uuid

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import CHURN_BIN, free_ports, recent_evening, run_cli, settings_from, stack_env, stop_all
from deltalake import DeltaTable

from churn import stack
from churn.lake import table_rows
from churn.security import REDIS_ROLES, ROLES, librdkafka_config, principal, redis_options
from churn.transport import admin, consumer, end_offsets, ensure_topics, producer

CUSTOMERS = 150


@pytest.fixture(scope="module")
def secure(tmp_path_factory, bootstrap_registry):
    run_dir = tmp_path_factory.mktemp("secure")
    shutil.copytree(bootstrap_registry, run_dir / "models")
    env = {**stack_env(run_dir), "CHURN_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "CHURN_REDIS__ACL": "true",
           "CHURN_REDIS__TLS": "true", "CHURN_SCORING__REGISTRY_DIR": str(run_dir / "models")}
    s = settings_from(env)
    stack.up(s)
    ensure_topics(s)
    yield env, s
    import gc

    gc.collect()
    stack.down(s)


def errors_of(config: dict, timeout_s: float = 6.0) -> tuple[bool, list[KafkaError]]:
    """Whether an admin client with ``config`` gets the cluster's metadata, and the errors it reported."""
    errors: list[KafkaError] = []
    client = AdminClient({**config, "error_cb": errors.append, "log_level": 0})
    try:
        client.list_topics(timeout=timeout_s)
        return True, errors
    except KafkaException as exc:
        client.poll(1.0)  # serves the error callbacks (the reason: authentication, TLS, ...)
        return False, [*errors, exc.args[0]]


def test_the_generated_secrets_are_private_and_churn_config_masks_the_password(secure):
    env, s = secure
    run = s.run_dir
    kafka_passwords = list((run / "secrets" / "kafka").glob("*.password"))
    redis_passwords = list((run / "secrets" / "redis").glob("*.password"))
    clients = list((run / "kafka" / "clients").glob("*.properties"))
    assert len(kafka_passwords) == len(ROLES) + 1  # and the controller's
    assert len(redis_passwords) == len(REDIS_ROLES)
    assert len(clients) == 2 * len(ROLES)
    private = [run / "kafka" / "server.properties", run / "redis" / "users.acl", *(run / "tls").glob("*"),
               *kafka_passwords, *redis_passwords, *clients]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "BEGIN PRIVATE KEY" in (run / "tls" / "kafka.pem").read_text()
    assert "BEGIN PRIVATE KEY" in (run / "tls" / "redis.key").read_text()
    # Redis keeps only hashes of its users' passwords
    acl = (run / "redis" / "users.acl").read_text()
    assert all(p.read_text().strip() not in acl for p in redis_passwords)

    shown = run_cli(["config"], {**env, "CHURN_KAFKA__PASSWORD": "do-not-print-me", "CHURN_REDIS__PASSWORD": "nor-me",
                                 "COLUMNS": "200"}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    effective = json.loads(shown.stdout)
    assert effective["kafka"]["password"] == effective["redis"]["password"] == "**********"
    assert "do-not-print-me" not in shown.stdout and "nor-me" not in shown.stdout
    assert effective["kafka"]["security_protocol"] == "SASL_SSL" and effective["redis"]["acl"] is True


def test_clients_without_the_right_credentials_are_refused(secure):
    _, s = secure
    good = librdkafka_config(s, "producer")
    assert errors_of(good) == (True, [])

    # a plaintext client against the TLS listener
    ok, errors = errors_of({"bootstrap.servers": s.kafka.bootstrap_servers})
    assert not ok and errors
    # TLS without SASL: no principal, refused
    ok, errors = errors_of({"bootstrap.servers": s.kafka.bootstrap_servers, "security.protocol": "SSL",
                            "ssl.ca.location": good["ssl.ca.location"]})
    assert not ok and errors
    # the right principal, a wrong password
    ok, errors = errors_of({**good, "sasl.password": "wrong"})
    assert not ok
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    # a client that does not trust the broker's CA
    ok, errors = errors_of({**good, "ssl.ca.location": "probe"})  # the system's CAs
    assert not ok and errors


def test_each_principal_is_held_to_its_acls(secure):
    _, s = secure
    t = s.topics
    cdr = json.dumps({"event_id": str(uuid.uuid4())}).encode()

    def produce_as(role: str, topic: str) -> KafkaError | None:
        delivered: list = []
        # not idempotent: a principal allowed to write nowhere is then refused per topic, not for a producer id
        p = producer(s, role=role, **{"message.timeout.ms": 10_000, "enable.idempotence": False,
                                      "on_delivery": lambda err, msg: delivered.append(err)})
        p.produce(topic, cdr, key=b"c1")
        p.flush(20)
        assert len(delivered) == 1
        return delivered[0]

    assert produce_as("producer", t.cdr.name) is None
    # the alerts consumer producing to cdr; the streaming job to churn-alerts; the API anywhere
    for role, topic in (("alerts", t.cdr.name), ("stream", t.churn_alerts.name), ("api", t.churn_scores.name)):
        err = produce_as(role, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (role, topic, err)

    def read_as(role: str, topic: str) -> KafkaError | None:
        c = consumer(s, group_id=f"{principal(role)}-t-{uuid.uuid4().hex[:6]}", role=role)
        try:
            # a principal that may not even describe the topic is told so by the metadata (and never fetches);
            # one that may describe it (a producer) is refused the fetch
            refused = c.list_topics(topic, timeout=10).topics[topic].error
            if refused is not None:
                return refused
            c.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                for m in c.consume(10, timeout=0.5):
                    if m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF:
                        return m.error()
                    if m.error() is None:
                        return None
            return None
        finally:
            c.close()

    # producers and the API may not read the CDR topic; the alerts consumer may not read scores
    for role, topic in (("producer", t.cdr.name), ("api", t.cdr.name), ("alerts", t.churn_scores.name)):
        err = read_as(role, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (role, topic, err)
    # a principal may not use another component's consumer group
    from confluent_kafka import ConsumerGroupTopicPartitions

    client = admin(s, role="alerts")
    with pytest.raises(KafkaException) as refused:
        (future,) = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(s.scoring.app_id)]).values()
        future.result(15)
    assert refused.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    # its own groups it may use
    (future,) = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions("churn-alerts-mine")]).values()
    assert future.result(15).group_id == "churn-alerts-mine"


def test_kcat_with_the_generated_client_configs(secure):
    _, s = secure
    clients = s.run_dir / "kafka" / "clients"
    event = json.dumps({"note": "kcat over SASL_SSL", "id": uuid.uuid4().hex})
    # the project's kcat (scripts/setup.sh): Debian's binary on confluent-kafka's newer librdkafka
    kcat = lambda user, *args: subprocess.run(  # noqa: E731
        [os.path.join(os.path.dirname(CHURN_BIN), "kcat"), "-F", str(clients / f"{user}.properties"), *args], input=event, capture_output=True, text=True,
        timeout=60)
    sent = kcat("churn-producer", "-P", "-t", s.topics.churn_labels.name, "-k", "kcat")
    assert sent.returncode == 0, sent.stderr
    refused = kcat("churn-alerts", "-P", "-t", s.topics.churn_labels.name, "-k", "kcat")
    assert refused.returncode != 0 and "authorization failed" in refused.stderr.lower(), refused.stderr
    read = kcat("churn-batch", "-C", "-t", s.topics.churn_labels.name, "-e", "-q", "-f", "%k %s\n")
    assert read.returncode == 0 and f"kcat {event}" in read.stdout.splitlines(), (read.stdout, read.stderr)


def test_every_component_works_with_its_own_principal(secure, tmp_path):
    """Simulator → streaming job (Spark) → Bronze/Silver; scorer (Faust, transactions) → scores and
    alerts; `churn alerts` and the API read them: each as its own least-privilege principal."""
    env, s = secure
    t = s.topics
    applied = run_cli(["features", "apply"], env, timeout=300)  # as churn-admin: the scorer may not write Redis
    assert applied.returncode == 0, applied.stderr
    produced = run_cli(["simulate", "--days", "2", "--customers", str(CUSTOMERS), "--bad-ratio", "0.02",
                        "--duplicate-ratio", "0", "--end", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(recent_evening()))],
                       env, timeout=300)
    assert produced.returncode == 0, produced.stderr
    cdrs = sum(end_offsets(s, t.cdr.name).values())
    assert cdrs > 1000

    procs = []
    try:
        for name, args in (("stream", ["stream"]), ("score", ["score", "--loglevel", "info"])):
            log = open(tmp_path / f"{name}.log", "ab")
            procs.append(subprocess.Popen([CHURN_BIN, *args], env={**os.environ, **env}, start_new_session=True,
                                          stdout=log, stderr=subprocess.STDOUT))

        def scored() -> int:
            """CDR offsets the scorer has committed (in its transactions), read as the admin."""
            c = consumer(s, group_id=s.scoring.app_id)
            try:
                done = c.committed([TopicPartition(t.cdr.name, p) for p in range(t.cdr.partitions)], timeout=10)
                return sum(max(tp.offset, 0) for tp in done)
            finally:
                c.close()

        def rows(table: str) -> int:
            path = s.streaming.lake_dir / table
            return table_rows(path) if (path / "_delta_log").exists() else 0

        def dead_letters() -> int:
            return sum(end_offsets(s, t.cdr_dlq.name).values())

        # a batch's Delta commits and its dead letters land in parallel: it is done when all of them are
        deadline = time.monotonic() + 300
        while not (rows("bronze") >= cdrs and rows("silver") + rows("quarantine") >= cdrs and scored() >= cdrs
                   and dead_letters() >= rows("quarantine")):
            for p, name in zip(procs, ("stream", "score")):
                assert p.poll() is None, (tmp_path / f"{name}.log").read_text()[-4000:]
            assert time.monotonic() < deadline, \
                f"bronze {rows('bronze')}, silver+quarantine {rows('silver') + rows('quarantine')}, " \
                f"scored {scored()} of {cdrs}, dead letters {dead_letters()} of {rows('quarantine')}"
            time.sleep(2)
        assert rows("bronze") == cdrs
        silver = rows("silver")
        quarantine = DeltaTable(str(s.streaming.lake_dir / "quarantine")).to_pyarrow_table(columns=["reason"])
        assert silver + quarantine.num_rows == cdrs and quarantine.num_rows > 0
        assert dead_letters() == quarantine.num_rows

        # the API, as churn-api: it reads every committed score and alert
        api_port, = free_ports(1)
        api_env = {**env, "CHURN_API__PORT": str(api_port)}
        log = open(tmp_path / "api.log", "ab")
        procs.append(subprocess.Popen([CHURN_BIN, "serve"], env={**os.environ, **api_env}, start_new_session=True,
                                      stdout=log, stderr=subprocess.STDOUT))

        def ready() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        deadline = time.monotonic() + 120
        while ready() is None:
            assert procs[-1].poll() is None, (tmp_path / "api.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the API never became ready"
            time.sleep(1)

        scores = read_as_role(s, t.churn_scores.name, "api")
        invalid = sum(1 for r in quarantine.column("reason").to_pylist() if r != "late_event:event_time")
        assert len(scores) == cdrs - invalid  # a decision per valid CDR (no rescoring by time so soon)
        alerts = read_as_role(s, t.churn_alerts.name, "alerts")
        assert alerts
        customer = json.loads(alerts[-1])["customer_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/customers/{customer}", timeout=10) as r:
            assert json.loads(r.read())["customer_id"] == customer

        # `churn alerts`, as churn-alerts
        shown = run_cli(["alerts", "--last", "100000"], {**env, "COLUMNS": "250"}, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert sum(1 for line in shown.stdout.splitlines() if line[:2] == "20") == len(alerts)
    finally:
        stop_all(procs, 60)


def read_as_role(s, topic: str, role: str) -> list[bytes]:
    """Every committed record value of ``topic``, read as ``role``'s principal (until 3 s without any)."""
    c = consumer(s, group_id=f"{principal(role)}-t-{uuid.uuid4().hex[:6]}", role=role,
                 **{"isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, p, 0) for p in end_offsets(s, topic, role=role)])
    out, idle = [], time.monotonic()
    try:
        while time.monotonic() - idle < 3:
            msgs = c.consume(5000, timeout=0.5)
            for m in msgs:
                assert m.error() is None, m.error()
                out.append(m.value())
            if msgs:
                idle = time.monotonic()
    finally:
        c.close()
    return out


def test_a_producer_with_no_credentials_at_all_is_told_what_to_set(secure, tmp_path):
    _, s = secure
    lonely = s.model_copy(update={"run_dir": tmp_path})
    with pytest.raises(RuntimeError, match="CHURN_KAFKA__PASSWORD_FILE"):
        Producer(librdkafka_config(lonely, "producer"))


def test_redis_refuses_strangers_and_holds_each_user_to_its_commands(secure):
    _, s = secure
    client = lambda **options: redis.Redis(**{**redis_options(s, "scorer"), **options}, socket_timeout=2)  # noqa: E731
    assert client().ping()
    with pytest.raises(redis.AuthenticationError):  # TLS, no user: the default user is off
        client(username=None, password=None).get("x")
    with pytest.raises(redis.AuthenticationError):
        client(password="wrong").ping()
    with pytest.raises(redis.ConnectionError):  # a plaintext client against the TLS port
        client(ssl=False, ssl_ca_certs=None).ping()
    # the readers may not write, even from a script; the writers may
    with pytest.raises(redis.exceptions.NoPermissionError):
        client().set("probe", "1")
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        client().eval("return redis.call('SET', KEYS[1], '1')", 1, "probe")
    writer = redis.Redis(**redis_options(s, "stream"), socket_timeout=5)
    assert writer.hset("probe", "f", "1") == 1 and client().hget("probe", "f") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):  # nobody but the admin flushes
        writer.flushdb()
    redis.Redis(**redis_options(s, "admin"), socket_timeout=5).delete("probe")


def test_the_readmes_secured_block_runs_as_written(secure, tmp_path):
    """README "Secured Kafka and Redis": the stack up (already running: nothing to do) and the kcat line,
    with this stack's run directory in place of ``.run``; alerts produced by the scorer come back."""
    from test_readme import _block

    env, s = secure
    block = _block("sh", "export CHURN_KAFKA__SECURITY_PROTOCOL=SASL_SSL")
    sent = producer(s, role="admin")
    alert = json.dumps({"customer_id": "readme", "note": uuid.uuid4().hex})
    sent.produce(s.topics.churn_alerts.name, alert.encode(), key=b"readme")
    assert sent.flush(20) == 0
    script = block.replace(".run/", f"{s.run_dir}/")
    bin_dir = os.path.dirname(CHURN_BIN)
    done = subprocess.run(["bash", "-c", f"set -e\nexport PATH={bin_dir}:$PATH\n{script}"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stdout and alert in done.stdout.splitlines(), done.stdout
