"""The pipeline through broker faults, on the real broker: SIGKILLed and restarted mid-stream, the
streaming job keeps its query and writes every record to Bronze and Silver exactly once, and the scorer
resumes by itself with every CDR scored exactly once; the scorer's liveness check tells a stopped worker
from a working one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import orjson
import pytest
from deltalake import DeltaTable
from conftest import CHURN_BIN, free_ports, private_pipeline_env
from test_scoring import assert_alerts_consistent, assert_exactly_once, metric, simulate, start_worker, wait_for, \
    wait_scored

from churn.lake import table_rows
from churn.transport import consumer, end_offsets
from churn.simulator.produce import ProduceReport, StepProducer
from churn.stack.process import port_is_free
from churn.stack.services import SUPERVISE, kafka_service


@pytest.fixture
def reliability_env(live_stack, live_env, bootstrap_registry, tmp_path):
    return private_pipeline_env(live_env, bootstrap_registry, tmp_path,
                                CHURN_SCORING__SESSION_TIMEOUT_S="6", CHURN_SCORING__TRANSACTION_TIMEOUT_S="15",
                                CHURN_SCORING__METRICS_PORT=str(free_ports(1)[0]),
                                CHURN_STREAMING__METRICS_PORT=str(free_ports(1)[0]), CHURN_STREAMING__TRIGGER_S="1")


def healthz(port: int) -> int | None:
    """The worker's /healthz status, or None if it does not answer within 2 s."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_the_scorer_resumes_by_itself_after_the_broker_is_killed_and_restarted(reliability_env, live_stack,
                                                                               tmp_path):
    """The single broker down for 20 s: longer than the scorer's session (6 s) and transaction (15 s) timeouts."""
    env, s = reliability_env
    broker_outage(env, s, kafka_service(live_stack), 20, tmp_path)


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory):
    """A stack of its own with a 3-node KRaft cluster (each node broker and controller), as
    `churn stack up --brokers 3` runs it."""
    from conftest import settings_from, stack_env

    from churn import stack
    from churn.transport import ensure_topics

    env = {**stack_env(tmp_path_factory.mktemp("three")), "CHURN_KAFKA__BROKERS": "3"}
    while True:  # the other nodes' ports (+100, +200) must be free too
        s = settings_from(env)
        ports = [p for n in range(3) for p in s.kafka.node_ports(n)]
        if all(port_is_free("127.0.0.1", p) for p in ports):
            break
        env["CHURN_KAFKA__PORT"], env["CHURN_KAFKA__CONTROLLER_PORT"] = map(str, free_ports(2))
    stack.up(s)
    ensure_topics(s)
    yield env, s
    import gc

    gc.collect()
    stopped = stack.down(s)
    # the nodes are stopped together: one after another, the last would wait for a quorum gone, and be killed
    assert [how.split(" (")[0] for name, how in stopped if name.startswith("kafka")] == ["stopped"] * 3, stopped


def test_one_broker_of_three_killed_and_restarted_loses_and_repeats_nothing(three_brokers, bootstrap_registry,
                                                                            tmp_path):
    """Replication factor 3, min.insync.replicas 2: with one node of three SIGKILLed for 15 s, producers
    (acks=all), the streaming job and the scorer carry on against the other two; every CDR is in Bronze
    once, every valid one in Silver once and scored once."""
    from churn.transport import topic_config

    env3, s3 = three_brokers
    env, s = private_pipeline_env(env3, bootstrap_registry, tmp_path,  # the scorer's default 10 s session
                                  CHURN_SCORING__METRICS_PORT=str(free_ports(1)[0]),
                                  CHURN_STREAMING__METRICS_PORT=str(free_ports(1)[0]), CHURN_STREAMING__TRIGGER_S="1")
    assert s.kafka.bootstrap_servers.count(",") == 2 and s.topics.replication_factor == 3
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": s.kafka.bootstrap_servers}).list_topics(s.topics.cdr.name, timeout=10)
    assert {len(p.replicas) for p in metadata.topics[s.topics.cdr.name].partitions.values()} == {3}
    assert topic_config(s, s.topics.cdr.name)["min.insync.replicas"] == "2"
    broker_outage(env, s, kafka_service(s3, node=1), 15, tmp_path)


def committed_cdrs(s) -> int:
    """CDR offsets the scorer's group has committed, over every partition (0 while the broker is unreachable)."""
    from confluent_kafka import KafkaException, TopicPartition

    c = consumer(s, group_id=s.scoring.app_id)
    try:
        parts = [TopicPartition(s.topics.cdr.name, p) for p in range(s.topics.cdr.partitions)]
        return sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
    except KafkaException:
        return 0
    finally:
        c.close()


def broker_outage(env: dict, s, broker, outage_s: float, tmp_path) -> None:
    """A third of a simulated feed scored, the second third in flight when ``broker`` is SIGKILLed, restarted
    ``outage_s`` later, the rest after: the scorer (under a supervisor) scores every valid CDR exactly once
    with consistent alerts, and the streaming job writes every record to Bronze and Silver exactly once."""
    port = s.scoring.metrics_port
    report = ProduceReport(run_id="broker")
    sender = StepProducer(s, report)
    sim = simulate(s, seed=61, customers=300, days=0.6)
    steps = list(sim.backfill_steps(slice_s=1200.0))
    third = len(steps) // 3
    log = open(tmp_path / "worker.log", "ab")
    # under a supervisor that restarts it on failure, as the local stack, Compose and systemd run it
    worker = subprocess.Popen(["bash", "-c", SUPERVISE, "supervise", CHURN_BIN, "score", "--loglevel", "info"],
                              env={**os.environ, **env}, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    stream = subprocess.Popen([CHURN_BIN, "stream"], env={**os.environ, **env}, start_new_session=True,
                              stdout=open(tmp_path / "stream.log", "ab"), stderr=subprocess.STDOUT)
    try:
        for step in steps[:third]:
            sender.send(step)
        sender.flush()
        wait_for(lambda: metric(port, "churn_score_events_total") >= sum(len(st.good) for st in steps[:third]), 120,
                 "scores before the outage")
        for step in steps[third:2 * third]:  # in flight when the broker dies
            sender.send(step)
        os.kill(broker.pid(), signal.SIGKILL)
        time.sleep(outage_s)
        broker.start(120)
        back = time.time()
        sender.flush()
        # everything produced so far committed by the scorer's transactions (a restarted worker's counters
        # start again from 0, so its group's committed offsets tell); with one node of three down it may well
        # have scored the CDRs in flight during the outage already
        wait_for(lambda: committed_cdrs(s) >= sum(end_offsets(s, s.topics.cdr.name).values()), 180,
                 "the CDRs in flight scored and committed")
        resumed_s = time.time() - back
        for step in steps[2 * third:]:
            sender.send(step)
        sender.flush()
        valid = {orjson.loads(v)["event_id"] for st in steps for v in st.values[:len(st.good)]}
        scores = wait_scored(s, len(valid), 240)
        assert_exactly_once(scores, valid)
        assert_alerts_consistent(s, scores)
        assert healthz(port) == 200
        print(f"broker outage {outage_s} s: every CDR in flight committed {resumed_s:.1f} s after the broker was back")
        assert resumed_s < 90, resumed_s
        text = (tmp_path / "worker.log").read_text()
        assert "Has not committed" not in text

        # the streaming job kept its query through the outage: every record in Bronze, every valid one
        # in Silver, each exactly once (against what the producer had acknowledged)
        lake = tmp_path / "lake"
        assert report.failed == 0
        wait_for(lambda: stream.poll() is not None or (table_rows(lake / "bronze") >= report.cdr_messages
                                                       and table_rows(lake / "silver") >= len(valid)), 240,
                 "the stream to catch up")
        assert stream.poll() is None, (tmp_path / "stream.log").read_text()[-3000:]
        stream.send_signal(signal.SIGTERM)  # a clean stop between micro-batches
        assert stream.wait(timeout=120) == 0, (tmp_path / "stream.log").read_text()[-3000:]
        bronze = DeltaTable(str(lake / "bronze")).to_pyarrow_table(columns=["partition", "offset"])
        positions = set(zip(bronze.column("partition").to_pylist(), bronze.column("offset").to_pylist()))
        assert bronze.num_rows == len(positions) == report.cdr_messages
        silver = DeltaTable(str(lake / "silver")).to_pyarrow_table(columns=["event_id"]).column(0).to_pylist()
        assert len(silver) == len(set(silver)) and set(silver) == valid
    finally:
        if stream.poll() is None:
            stream.send_signal(signal.SIGTERM)
            stream.wait(timeout=120)
        if broker.state() != "running":
            broker.start(120)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=90)


def test_healthz_turns_bad_on_a_stopped_worker_and_good_again_when_it_continues(reliability_env, tmp_path):
    env, s = reliability_env
    port = s.scoring.metrics_port
    sender = StepProducer(s, ProduceReport(run_id="liveness"))
    worker = start_worker(env, open(tmp_path / "worker.log", "ab"))
    try:
        for step in simulate(s, seed=62, customers=100, days=0.2).backfill_steps(slice_s=600.0):
            sender.send(step)
        sender.flush()
        wait_for(lambda: metric(port, "churn_score_events_total") > 0, 120, "scoring")
        wait_for(lambda: healthz(port) == 200, 30, "healthy")
        os.killpg(worker.pid, signal.SIGSTOP)
        assert healthz(port) is None  # a stopped worker does not answer: a liveness probe fails
        os.killpg(worker.pid, signal.SIGCONT)
        wait_for(lambda: healthz(port) == 200, 30, "healthy again")
        assert worker.poll() is None  # the time it was stopped is not counted as a stall
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=90) == 0
