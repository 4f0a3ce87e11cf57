"""Simulated CDRs through the real broker, read back with confluent-kafka and with Debian's kcat."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter

import orjson
import pytest
from conftest import CHURN_BIN, PROJECT_ROOT, recent_evening, run_cli, settings_from

from churn.config import Settings
from churn.contracts import CDR, CONTRACTS, parse_time
from churn.schema_docs import kcat_one_liner
from churn.simulator import Simulator
from churn.simulator.bad_events import BAD_KINDS
from churn.simulator.produce import run_backfill, run_live
from churn.transport import consumer, ensure_topics

DAY = 86400.0


def private_topics(s: Settings) -> Settings:
    """The settings with unique CDR and label topic names, created on the broker."""
    s = s.model_copy(deep=True)
    tag = uuid.uuid4().hex[:8]
    s.topics.cdr.name = f"cdr-{tag}"
    s.topics.churn_labels.name = f"labels-{tag}"
    ensure_topics(s)
    return s


def consume_all(s: Settings, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    c = consumer(s, group_id=f"test-{uuid.uuid4().hex[:8]}")
    c.subscribe([topic])
    got = []
    deadline = time.time() + timeout_s
    while len(got) < expected and time.time() < deadline:
        for msg in c.consume(num_messages=10_000, timeout=0.5):
            assert msg.error() is None, msg.error()
            got.append(msg)
    # nothing beyond what was expected arrives
    extra = c.consume(num_messages=10, timeout=1.0)
    c.close()
    return got + [m for m in extra if m.error() is None]


def kcat_consume(s: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    out = subprocess.run(
        ["kcat", "-b", s.kafka.bootstrap_servers, "-t", topic, "-C", "-e", "-q", "-o", "beginning",
         "-f", "%k\t%s\n"], capture_output=True, timeout=60, check=True,
    ).stdout
    return [tuple(line.split(b"\t", 1)) for line in out.splitlines()]


def test_round_trip_through_the_broker_with_confluent_kafka_and_kcat(live_stack):
    s = private_topics(live_stack)
    end = recent_evening()
    sim = Simulator(seed=11, start_s=end - 0.25 * DAY, end_s=end, customers=400,
                    bad_ratio=0.05, duplicate_ratio=0.02)
    sent: list[tuple[bytes, bytes]] = []
    labels_sent: list[tuple[bytes, bytes]] = []

    def keep(step, report):
        sent.extend(zip(step.keys, step.values))
        labels_sent.extend(step.labels)

    t0_ms = int(time.time() * 1000)
    report = run_backfill(s, sim, on_step=keep)
    t1_ms = int(time.time() * 1000)
    assert report.failed == 0
    assert report.cdr_messages == len(sent) > 1000

    # confluent-kafka reads back exactly what was produced, per-key order kept
    msgs = consume_all(s, s.topics.cdr.name, len(sent))
    assert len(msgs) == len(sent)
    assert Counter((m.key(), m.value()) for m in msgs) == Counter(sent)
    by_key_sent: dict[bytes, list] = {}
    for k, v in sent:
        by_key_sent.setdefault(k, []).append(v)
    by_key_got: dict[bytes, list] = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        by_key_got.setdefault(m.key(), []).append(m.value())
    assert by_key_got == by_key_sent
    # the record timestamp is the produce time (CreateTime), set by the client
    from confluent_kafka import TIMESTAMP_CREATE_TIME

    for m in msgs:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_CREATE_TIME and t0_ms - 5 <= ts <= t1_ms + 5

    # kcat, a third-party client, sees the same
    assert Counter(kcat_consume(s, s.topics.cdr.name)) == Counter(sent)
    assert Counter(kcat_consume(s, s.topics.churn_labels.name)) == Counter(labels_sent)

    # every bad message read back fails validation with the reason of its kind
    reasons = Counter()
    for m in msgs:
        _, violation = CDR.parse(m.value())
        if violation:
            reasons[violation.reason] += 1
    assert reasons == Counter({BAD_KINDS[k]: n for k, n in report.bad.items()})
    assert sum(reasons.values()) == sum(report.bad.values()) > 0


def test_kcat_produced_events_are_read_back_by_confluent_kafka(live_stack, tmp_path):
    s = private_topics(live_stack)
    end = time.time()
    sim = Simulator(seed=12, start_s=end - 3600, end_s=end, customers=200)
    lines = [k + b"|" + v for step in sim.backfill_steps() for k, v in zip(step.keys, step.values)]
    path = tmp_path / "cdrs.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    subprocess.run(["kcat", "-b", s.kafka.bootstrap_servers, "-t", s.topics.cdr.name, "-P", "-K", "|",
                    "-l", str(path)], check=True, timeout=60)
    msgs = consume_all(s, s.topics.cdr.name, len(lines))
    assert Counter(m.key() + b"|" + m.value() for m in msgs) == Counter(lines)
    assert all(CDR.parse(m.value())[1] is None for m in msgs)


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_documented_kcat_one_liner_produces_a_valid_event(live_stack, name):
    s = live_stack.model_copy(deep=True)
    contract = CONTRACTS[name]
    topic = f"doc-{name}-{uuid.uuid4().hex[:6]}".replace("_", "-")
    s.topics.cdr.name = topic
    ensure_topics(s)
    line = kcat_one_liner(contract, "127.0.0.1:19092")  # exactly as documented ...
    line = line.replace("127.0.0.1:19092", s.kafka.bootstrap_servers).replace(f"-t {contract.topic} ", f"-t {topic} ")
    subprocess.run(["bash", "-c", line], check=True, timeout=30)  # ... on the test broker and topic
    (msg,) = consume_all(s, topic, 1)
    event, violation = contract.parse(msg.value())
    assert violation is None, violation
    assert msg.key().decode() == event[contract.key_field]
    assert abs(time.time() - parse_time(event[contract.time_field])) < 60


def test_live_mode_produces_the_rate_with_current_event_times(live_stack):
    s = private_topics(live_stack)
    start = time.time()
    sim = Simulator(seed=13, start_s=start, end_s=start + 60 * DAY, customers=500, mode="live")
    report = run_live(s, sim, rate=2000, duration_s=2.0)
    assert report.failed == 0
    assert report.cdr_messages == 4000  # 20 ticks of exactly 200 events
    assert report.elapsed_s >= 2.0  # never faster than asked
    msgs = consume_all(s, s.topics.cdr.name, 4000)
    assert len(msgs) == 4000
    for m in msgs:  # stamped with the current time, produced right after it
        event_time = parse_time(orjson.loads(m.value())["event_time"])
        assert start - 0.01 <= event_time <= start + 2.2
        assert -0.05 <= m.timestamp()[1] / 1000 - event_time < 5


def test_live_mode_says_when_it_cannot_hold_the_rate(live_stack):
    s = private_topics(live_stack)
    start = time.time()
    # a far horizon: at this rate simulated time runs years per minute
    sim = Simulator(seed=14, start_s=start, end_s=start + 3650 * DAY, mode="live")
    warnings = []
    report = run_live(s, sim, rate=2_000_000, duration_s=3.0, warn=warnings.append)
    assert report.fell_behind
    assert warnings and "cannot hold 2e+06 events/s" in warnings[0]
    assert report.cdr_messages < 2_000_000 * 3.0
    assert report.failed == 0


def test_simulate_cli_backfill_reports_and_delivers(live_stack, live_env):
    s = private_topics(live_stack)
    env = {**live_env, "CHURN_TOPICS__CDR__NAME": s.topics.cdr.name,
           "CHURN_TOPICS__CHURN_LABELS__NAME": s.topics.churn_labels.name}
    out = run_cli(["simulate", "--days", "0.1", "--customers", "300", "--end", "2026-11-01T00:00:00Z",
                   "--bad-ratio", "0.02", "--json"], env, timeout=120)
    assert out.returncode == 0, out.stderr
    report = orjson.loads(out.stdout)
    assert report["failed_deliveries"] == 0 and report["cdr_messages"] > 500
    msgs = consume_all(s, s.topics.cdr.name, report["cdr_messages"])
    assert len(msgs) == report["cdr_messages"]
    invalid = sum(1 for m in msgs if CDR.parse(m.value())[1] is not None)
    assert invalid == sum(report["bad"].values())

    usage = run_cli(["simulate"], env)
    assert usage.returncode == 1 and "--rate" in usage.stderr


def test_simulate_cli_live_stops_on_sigterm_with_every_cdr_sent_delivered(live_stack, live_env, tmp_path):
    """SIGTERM ends live mode at once, the way a supervisor stops it: the report covers every CDR sent,
    and every one of them is on the topic."""
    s = private_topics(live_stack)
    env = {**os.environ, **live_env, "CHURN_TOPICS__CDR__NAME": s.topics.cdr.name,
           "CHURN_TOPICS__CHURN_LABELS__NAME": s.topics.churn_labels.name, "CHURN_SIMULATOR__METRICS_PORT": "0"}
    log = tmp_path / "simulate.err"
    with open(log, "w") as err:
        proc = subprocess.Popen([CHURN_BIN, "simulate", "--rate", "400", "--customers", "300", "--json"],
                                env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 60
        while "live:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        stopped_after_s = time.monotonic() - sent_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()
    assert stopped_after_s < 10
    report = orjson.loads(out)
    assert report["failed_deliveries"] == 0 and report["cdr_messages"] >= 400  # at least a second of the rate
    assert len(consume_all(s, s.topics.cdr.name, report["cdr_messages"])) == report["cdr_messages"]


def test_demo_runs_the_main_job_end_to_end(live_stack, live_env, tmp_path):
    from churn.stack.services import score_service, stream_service

    env = {**live_env, "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake"),
           "CHURN_STREAMING__CHECKPOINT_DIR": str(tmp_path / "checkpoints")}
    try:
        out = run_cli(["demo", "--duration", "3", "--rate", "1000", "--history-days", "0.05"], env, timeout=600)
    finally:
        # the demo leaves the streaming job and the scorer running (later tests use the scorer's port)
        stream_service(settings_from(env)).stop()
        score_service(settings_from(env)).stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all accounted for" in out.stdout
    assert "already running" in out.stdout  # the stack was up: demo reused it
    assert "cdr=" in out.stdout  # the live view printed flows (non-interactive form)
    # the stream processed everything and the lake accounts for every record
    text = " ".join(out.stdout.split())  # undo the console's line wrapping
    found = re.search(r"Bronze ([\d,]+) = Silver ([\d,]+) \+ quarantined ([\d,]+) \+ duplicates dropped ([\d,]+)", text)
    assert found, text[-2000:]
    bronze, silver, quarantined, duplicates = (int(n.replace(",", "")) for n in found.groups())
    assert bronze == silver + quarantined + duplicates and silver > 0 and quarantined > 0
