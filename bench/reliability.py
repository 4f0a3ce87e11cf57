"""The scorer through a broker crash: how long until it scores again, and what was lost or repeated.

A worker (under the same restart-on-failure loop the local stack uses) scores a simulated feed; the
broker is SIGKILLed with CDRs in flight and restarted after ``outage_s``. Measured: seconds from the
broker being back to the worker's next committed score, CDRs produced but not yet scored when the
broker died, and, against the topic's end offsets once everything is scored, CDRs never scored
(lost) and CDRs scored twice (duplicated), read with read_committed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter

import orjson

from churn.config import Settings
from churn.simulator import Simulator
from churn.simulator.produce import ProduceReport, StepProducer
from churn.stack.services import SUPERVISE, kafka_service
from scoring import CHURN, DAY, _committed, _env, _topics, scoring_setup


def _scores(s: Settings) -> list[dict]:
    from confluent_kafka import TopicPartition

    from churn.transport import consumer, end_offsets

    c = consumer(s, group_id=f"bench-rel-{uuid.uuid4().hex[:6]}", **{"isolation.level": "read_committed"})
    ends = end_offsets(s, s.topics.churn_scores.name)
    c.assign([TopicPartition(s.topics.churn_scores.name, p, 0) for p in ends])
    out, idle = [], time.time()
    while time.time() - idle < 3:
        msgs = c.consume(5000, timeout=0.5)
        out.extend(orjson.loads(m.value()) for m in msgs if m.error() is None)
        if msgs:
            idle = time.time()
    c.close()
    return out


def bench_broker_restart(base: Settings, outage_s: float = 15.0) -> dict[str, tuple[float, str, dict]]:
    """Broker SIGKILLed mid-stream and restarted after 15 s: the scorer's time to score again after the
    broker is back, CDRs in flight, lost and duplicated."""
    from conftest import free_ports

    from churn.transport import end_offsets

    base, tmp = scoring_setup(base, "rel", "r")
    tag = uuid.uuid4().hex[:6]
    s = _topics(base, tag)
    port = free_ports(1)[0]
    env = _env(s, tag, base.scoring.registry_dir, base.streaming.lake_dir, port)
    log = open(tmp / "worker.log", "ab")
    worker = subprocess.Popen(["bash", "-c", SUPERVISE, "supervise", CHURN, "score"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    broker = kafka_service(base)
    sender = StepProducer(s, ProduceReport(run_id="bench-rel"))
    end = time.time() - DAY
    steps = list(Simulator(seed=8, start_s=end - 0.6 * DAY, end_s=end, customers=2000).backfill_steps(600.0))
    third = len(steps) // 3
    group = env["CHURN_SCORING__APP_ID"]
    try:
        for step in steps[:third]:
            sender.send(step)
        sender.flush()
        produced = sum(end_offsets(s, s.topics.cdr.name).values())
        while _committed(s, group, s.topics.cdr.name) < produced:
            time.sleep(1)
        for step in steps[third:2 * third]:
            sender.send(step)
        sender.flush()
        in_flight = sum(end_offsets(s, s.topics.cdr.name).values()) - _committed(s, group, s.topics.cdr.name)
        os.kill(broker.pid(), signal.SIGKILL)
        time.sleep(outage_s)
        broker.start(120)
        back = time.monotonic()
        before = _committed(s, group, s.topics.cdr.name)
        while _committed(s, group, s.topics.cdr.name) <= before:
            if time.monotonic() - back > 600:
                raise TimeoutError("the scorer did not resume within 10 minutes")
            time.sleep(0.5)
        resumed = time.monotonic() - back
        for step in steps[2 * third:]:
            sender.send(step)
        sender.flush()
        total = sum(end_offsets(s, s.topics.cdr.name).values())
        while _committed(s, group, s.topics.cdr.name) < total:
            time.sleep(1)
        valid = {orjson.loads(v)["event_id"] for st in steps for v in st.values[:len(st.good)]}
        scores = [r for r in _scores(s) if r.get("trigger", "cdr") == "cdr"]
        ids = Counter(r["trigger_event_id"] for r in scores)
        lost = len(valid - set(ids))
        duplicated = sum(n - 1 for n in ids.values() if n > 1)
        restarts = (tmp / "worker.log").read_text().count("[supervisor]")
    finally:
        if broker.state() != "running":
            broker.start(120)
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(90)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    detail = {"outage_s": outage_s, "cdrs": total, "in_flight_at_kill": in_flight, "lost": lost,
              "duplicated": duplicated, "worker_restarts": restarts}
    return {"score_resume_after_broker_restart_s": (resumed, "s", detail),
            "score_in_flight_at_broker_kill": (float(in_flight), "events", detail),
            "score_lost_after_broker_restart": (float(lost), "events", detail),
            "score_duplicated_after_broker_restart": (float(duplicated), "events", detail)}
