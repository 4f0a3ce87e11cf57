"""The Faust scoring worker against the real broker, real Redis and real Feast: killed, scaled out,
starved of Redis, handed a new champion, and shown a customer turning churny."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter

import numpy as np
import orjson
import pandas as pd
import pytest
from conftest import CHURN_BIN, free_ports, private_pipeline_env, recent_evening, run_cli

from churn.contracts import CHURN_RISK, CHURN_SCORE, format_time
from churn.features import DAY, SUM_FEATURES, partial_sums_numpy
from churn.model.inputs import ACTIVITY_FEATURES
from churn.model.registry import ModelRegistry
from churn.simulator import Simulator
from churn.simulator.produce import ProduceReport, StepProducer, run_backfill
from churn.transport import consumer, end_offsets, read_committed


@pytest.fixture
def score_env(live_stack, live_env, bootstrap_registry, tmp_path):
    return private_pipeline_env(live_env, bootstrap_registry, tmp_path,
                                CHURN_SCORING__SESSION_TIMEOUT_S="6",
                                CHURN_SCORING__METRICS_PORT=str(free_ports(1)[0]))


def start_worker(env: dict, log, **extra) -> subprocess.Popen:
    return subprocess.Popen([CHURN_BIN, "score", "--loglevel", "info"], env={**os.environ, **env, **extra},
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def scores_of(s) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_committed(s, s.topics.churn_scores.name)]


def wait_scored(s, n: int, timeout_s: float) -> list[dict]:
    deadline = time.time() + timeout_s
    while True:
        scores = scores_of(s)
        if len(scores) >= n or time.time() > deadline:
            return scores
        time.sleep(0.5)


def assert_exactly_once(scores: list[dict], valid_event_ids: set[str]) -> None:
    positions = Counter((r["source_partition"], r["source_offset"]) for r in scores)
    assert max(positions.values()) == 1, "a CDR was scored twice"
    ids = Counter(r["trigger_event_id"] for r in scores)
    assert set(ids) == valid_event_ids, "a CDR was not scored (or an unknown one was)"
    assert max(ids.values()) == 1


def assert_alerts_consistent(s, scores: list[dict]) -> list[dict]:
    alerts = [orjson.loads(m.value()) for m in read_committed(s, s.topics.churn_alerts.name)]
    ids = Counter(a["event_id"] for a in alerts)
    assert not ids or max(ids.values()) == 1, "duplicate alert"
    for a in alerts:
        assert CHURN_RISK.validate(a) is None
    # every alert belongs to exactly one score that recorded it, and vice versa
    raised = {r["trigger_event_id"] for r in scores if r["alerted_at"] == r["trigger_event_time"]}
    assert {a["trigger_event_id"] for a in alerts} == raised
    return alerts


def simulate(s, seed: int, customers: int, days: float, bad_ratio: float = 0.0):
    end = recent_evening() - DAY
    return Simulator(seed=seed, start_s=end - days * DAY, end_s=end, customers=customers, bad_ratio=bad_ratio)


def test_kill_9_and_restart_scores_every_cdr_exactly_once_without_duplicate_alerts(score_env, tmp_path):
    env, s = score_env
    port = s.scoring.metrics_port
    log = open(tmp_path / "worker.log", "ab")
    report = ProduceReport(run_id="score")
    sender = StepProducer(s, report)
    sim = simulate(s, seed=31, customers=800, days=0.6, bad_ratio=0.02)
    cut = [sim.start_s + f * (sim.end_s - sim.start_s) for f in (0.3, 0.6, 1.0)]
    valid: set[str] = set()

    def produce(until):
        for step in sim.backfill_steps(until_s=until):
            sender.send(step)
            valid.update(orjson.loads(v)["event_id"] for v in step.values[:len(step.good)])
        sender.flush()

    workers = []
    try:
        for kill in range(2):
            worker = start_worker(env, log)
            workers.append(worker)
            produce(cut[kill])  # new CDRs for this worker, so it is killed mid-stream, with work in flight
            wait_for(lambda: metric(port, "churn_score_transactions_total") >= 1, 120, "committed transactions")
            os.killpg(worker.pid, signal.SIGKILL)  # scored but uncommitted work is lost
            worker.wait()
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
    produce(cut[2])
    worker = start_worker(env, log)
    try:
        scores = wait_scored(s, len(valid), 180)
        assert_exactly_once(scores, valid)
        assert sum(report.bad.values()) > 0  # invalid CDRs were on the topic: skipped, never scored
        for r in scores[:50]:
            assert CHURN_SCORE.validate(r) is None
        alerts = assert_alerts_consistent(s, scores)
        assert alerts, "no alert at all from 800 customers"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_a_read_committed_consumer_sees_every_alert_once_while_the_worker_scores(score_env, tmp_path,
                                                                                  record_property):
    """What a retention system sees: a ``read_committed`` consumer of ``churn-alerts`` running while CDRs
    arrive. Every alert reaches it exactly once, and they are the alerts the committed scores recorded.
    The latency from the trigger CDR's produce time to the alert's arrival is recorded in the test's
    result (``record_property``), not asserted: timings belong to ``bench/``."""
    env, s = score_env
    log = open(tmp_path / "worker.log", "ab")
    sim = simulate(s, seed=37, customers=800, days=0.6)
    received: list[tuple[bytes, float]] = []
    stop = threading.Event()

    def follow():
        c = consumer(s, group_id=f"retention-{uuid.uuid4().hex[:6]}", **{"isolation.level": "read_committed"})
        c.subscribe([s.topics.churn_alerts.name])
        while not stop.is_set():
            m = c.poll(0.05)
            if m is not None and m.error() is None:
                received.append((m.value(), time.time()))
        c.close()

    follower = threading.Thread(target=follow, daemon=True)
    worker = start_worker(env, log)
    follower.start()
    sender = StepProducer(s, ProduceReport(run_id="follow"))
    valid: set[str] = set()
    try:
        wait_for(lambda: metric(s.scoring.metrics_port, "churn_score_owned_partitions") > 0, 120, "partitions")
        for step in sim.backfill_steps(slice_s=60.0):  # ~500 CDRs/s, as a live feed
            sender.send(step)
            sender.flush()
            valid.update(orjson.loads(v)["event_id"] for v in step.values[:len(step.good)])
            time.sleep(0.02)
        scores = wait_scored(s, len(valid), 180)
        assert_exactly_once(scores, valid)
        time.sleep(2)
    finally:
        stop.set()
        follower.join(10)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    committed = assert_alerts_consistent(s, scores)
    live = [orjson.loads(v) for v, _ in received]
    assert committed, "no alert at all from 800 customers"
    assert Counter(a["event_id"] for a in live) == Counter(a["event_id"] for a in committed)  # each once
    produced = {orjson.loads(m.value())["event_id"]: m.timestamp()[1] / 1000
                for m in read_committed(s, s.topics.cdr.name)}
    latency_ms = [(at - produced[a["trigger_event_id"]]) * 1000
                  for a, (_, at) in zip(live, received) if a["trigger_event_id"] in produced]
    assert len(latency_ms) == len(live)
    record_property("alerts", len(live))
    record_property("alert_visible_latency_p50_ms", round(float(np.percentile(latency_ms, 50)), 1))
    record_property("alert_visible_latency_p99_ms", round(float(np.percentile(latency_ms, 99)), 1))


def _states_for(cols: dict, customer: str, times: list[float]) -> list[dict]:
    """A customer's activity state read at each of ``times`` (numpy rendering of the features)."""
    keep = cols["customer_id"] == customer
    mine = {k: v[keep] for k, v in cols.items()}
    return [partial_sums_numpy(mine, at_s={customer: t})[customer] for t in times]


def _push(s, customer: str, state: dict) -> None:
    """Push ``state`` as the streaming job would: covering every CDR on the topic so far."""
    from feast.data_source import PushMode

    from churn.feature_store import store

    ends = end_offsets(s, s.topics.cdr.name)
    row = {"customer_id": customer, "feature_time": pd.Timestamp(state["ref_time"], unit="s", tz="UTC"),
           "ref_time": state["ref_time"], "active_days": [state["active_days"]], "batch_id": 0,
           **{n: state[n] for n in SUM_FEATURES}, "sums": [[state[n] for n in SUM_FEATURES]],
           "covered_offsets": [[ends.get(p, 0) for p in range(s.topics.cdr.partitions)]]}
    frame = pd.DataFrame({k: (v if isinstance(v, list) else [v]) for k, v in row.items()})
    store(s).push("customer_activity_push", frame, to=PushMode.ONLINE)


def _cdr(customer: str, event_id: str, t: float) -> bytes:
    return orjson.dumps({"event_id": event_id, "customer_id": customer, "event_time": format_time(t),
                         "record_type": "voice", "direction": "outgoing", "duration_s": 30.0,
                         "counterparty": "customer_care", "dropped": False, "cell_id": "C0001",
                         "roaming": False, "charge": 0.0})


def test_a_customer_turning_churny_gets_an_alert_whose_reasons_name_the_behaviour(score_env, tmp_path):
    from confluent_kafka import Producer

    from churn.feature_store import profile_frame
    from churn.model.inputs import matrix

    env, s = score_env
    registry = ModelRegistry(s.scoring.registry_dir)
    model = registry.load_champion()
    end = recent_evening()
    sim = Simulator(seed=41, start_s=end - 90 * DAY, end_s=end, customers=300, labels_from_s=end - 30 * DAY)
    cols = sim.silver_columns(slice_s=6 * 3600.0)
    profiles = profile_frame().set_index("customer_id").to_dict("index")
    # a churner the model finds safe on its profile and normal behaviour, risky on its drift
    chosen = None
    for c in np.flatnonzero(sim.pop.churner):
        label = float(sim.label_s[c])
        normal_t, churny_t = label - 40 * DAY, label - 2 * DAY
        cid = sim.pop.customer_id[c]
        normal, churny = _states_for(cols, cid, [normal_t, churny_t])
        X = matrix([profiles[cid]] * 2, [normal, churny], [normal_t, churny_t])
        risk = model.predict(X)
        if risk[0] < 0.3 and risk[1] >= 0.5:
            chosen = (cid, normal, churny, normal_t, churny_t)
            break
    assert chosen is not None, "no churner in the simulation turns from safe to risky"
    cid, normal, churny, normal_t, churny_t = chosen
    worker = start_worker(env, open(tmp_path / "worker.log", "ab"))
    try:
        p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "partitioner": "murmur2_random"})
        _push(s, cid, normal)
        p.produce(s.topics.cdr.name, _cdr(cid, "calm-1", normal_t), cid.encode())
        p.flush(10)
        first = wait_scored(s, 1, 90)
        assert [r["band"] for r in first] in (["low"], ["medium"]), first
        _push(s, cid, churny)
        p.produce(s.topics.cdr.name, _cdr(cid, "churny-1", churny_t), cid.encode())
        p.flush(10)
        scores = wait_scored(s, 2, 60)
        assert [r["trigger_event_id"] for r in scores] == ["calm-1", "churny-1"]
        (alert,) = [orjson.loads(m.value()) for m in read_committed(s, s.topics.churn_alerts.name)]
        assert alert["customer_id"] == cid and alert["trigger_event_id"] == "churny-1"
        assert alert["band"] in ("high", "critical") and alert["previous_band"] in ("low", "medium")
        assert CHURN_RISK.validate(alert) is None
        behaviour = [r for r in alert["reasons"] if r["feature"] in ACTIVITY_FEATURES]
        assert behaviour, alert["reasons"]
        # the reasons name what the simulator changed before churn: usage, care calls, drops, off-net
        changed = ("events", "calls", "call_minutes", "care_calls", "care_share", "dropped", "offnet", "data_mb",
                   "peer_events", "sms", "active_days", "days_since")
        assert all(r["feature"].startswith(changed) for r in behaviour), behaviour
        assert all(r["contribution"] > 0 and r["text"] for r in alert["reasons"])
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_hot_reload_switches_model_version_without_losing_events(score_env, tmp_path):
    env, s = score_env
    port = s.scoring.metrics_port
    registry = ModelRegistry(s.scoring.registry_dir)
    first = registry.champion_version()
    second = registry.register(registry.model_bytes(first), {"kind": "test copy"}, version="xgb-test-reload")
    report = ProduceReport(run_id="reload")
    sender = StepProducer(s, report)
    sim = simulate(s, seed=32, customers=300, days=0.5)
    worker = start_worker(env, open(tmp_path / "worker.log", "ab"))
    try:
        steps = list(sim.backfill_steps(slice_s=600.0))
        half = len(steps) // 2
        for step in steps[:half]:
            sender.send(step)
        sender.flush()
        wait_for(lambda: metric(port, "churn_score_events_total") >= sum(len(st.good) for st in steps[:half]), 120,
                 "the first half scored")
        registry.promote(second, reason="test")
        for step in steps[half:]:
            sender.send(step)
            time.sleep(0.05)
        sender.flush()
        valid = {orjson.loads(v)["event_id"] for st in steps for v in st.values[:len(st.good)]}
        scores = wait_scored(s, len(valid), 120)
        assert_exactly_once(scores, valid)
        assert Counter(r["model_version"] for r in scores).keys() == {first, second}
        # per partition, once the new version appears the old one never comes back
        for p in {r["source_partition"] for r in scores}:
            versions = [r["model_version"] for r in sorted(scores, key=lambda r: r["source_offset"])
                        if r["source_partition"] == p]
            switch = versions.index(second) if second in versions else len(versions)
            assert set(versions[switch:]) <= {second}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_redis_down_scores_degraded_without_losing_events_then_recovers(score_env, live_stack, tmp_path):
    from churn.stack.services import redis_service

    env, s = score_env
    port = s.scoring.metrics_port
    report = ProduceReport(run_id="redis")
    sender = StepProducer(s, report)
    sim = simulate(s, seed=33, customers=300, days=0.6)
    steps = list(sim.backfill_steps(slice_s=1800.0))
    third = len(steps) // 3
    redis = redis_service(live_stack)
    worker = start_worker(env, open(tmp_path / "worker.log", "ab"))
    try:
        for step in steps[:third]:
            sender.send(step)
        sender.flush()
        wait_for(lambda: metric(port, "churn_score_events_total") >= sum(len(st.good) for st in steps[:third]), 120,
                 "scores before the outage")
        redis.stop()
        for step in steps[third:2 * third]:
            sender.send(step)
        sender.flush()
        wait_for(lambda: metric(port, "churn_score_degraded_events_total") > 0, 120, "degraded scores")
        assert metric(port, "churn_score_online_store_up") == 0
        redis.start(60)
        applied = run_cli(["features", "apply"], env, timeout=180)  # the restarted Redis is empty: reload profiles
        assert applied.returncode == 0, applied.stderr
        for step in steps[2 * third:]:
            sender.send(step)
        sender.flush()
        valid = {orjson.loads(v)["event_id"] for st in steps for v in st.values[:len(st.good)]}
        scores = wait_scored(s, len(valid), 180)
        assert_exactly_once(scores, valid)
        degraded = [r for r in scores if r["degraded"]]
        assert degraded and len(degraded) < len(scores)
        last = {p: max((r for r in scores if r["source_partition"] == p), key=lambda r: r["source_offset"])
                for p in {r["source_partition"] for r in scores}}
        assert not any(r["degraded"] for r in last.values()), "did not recover"
        assert metric(port, "churn_score_online_store_up") == 1
    finally:
        if redis.state() != "running":
            redis.start(60)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def wait_sharing(ports: list[int], partitions: int) -> None:
    """Until the two workers on ``ports`` each own some of the ``partitions`` and together all of them."""
    owned = lambda: [metric(port, "churn_score_owned_partitions") for port in ports]  # noqa: E731
    wait_for(lambda: min(owned()) > 0 and sum(owned()) == partitions, 120, "both workers owning partitions")


def test_two_workers_share_partitions_and_one_stopping_hands_over_without_loss_or_repeat(score_env, tmp_path):
    env, s = score_env
    ports = free_ports(2)
    report = ProduceReport(run_id="scale")
    sender = StepProducer(s, report)
    sim = simulate(s, seed=34, customers=400, days=0.6)
    steps = list(sim.backfill_steps(slice_s=1800.0))
    log = open(tmp_path / "workers.log", "ab")
    a = start_worker(env, log, CHURN_SCORING__METRICS_PORT=str(ports[0]))
    b = start_worker(env, log, CHURN_SCORING__METRICS_PORT=str(ports[1]))
    try:
        wait_sharing(ports, s.topics.cdr.partitions)
        half = len(steps) // 2
        for step in steps[:half]:
            sender.send(step)
        sender.flush()
        wait_for(lambda: metric(ports[0], "churn_score_events_total") > 0
                 and metric(ports[1], "churn_score_events_total") > 0, 120, "both workers scoring")
        a.send_signal(signal.SIGTERM)  # graceful: commits, leaves the group
        for step in steps[half:]:
            sender.send(step)
            time.sleep(0.02)
        sender.flush()
        assert a.wait(timeout=60) == 0
        wait_for(lambda: metric(ports[1], "churn_score_owned_partitions") == s.topics.cdr.partitions, 60,
                 "the survivor owning every partition")
        valid = {orjson.loads(v)["event_id"] for st in steps for v in st.values[:len(st.good)]}
        scores = wait_scored(s, len(valid), 180)
        assert_exactly_once(scores, valid)
        assert_alerts_consistent(s, scores)
    finally:
        for w in (a, b):
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(timeout=60)


def test_a_worker_frozen_past_its_session_is_replaced_and_cannot_commit_when_it_wakes(score_env, tmp_path):
    """A zombie: one of two workers is frozen (SIGSTOP) inside an open transaction (it commits every 5 s,
    so one is open while CDRs flow) until the group has replaced it (session timeout 6 s). When it
    wakes, it is no longer the member its offsets name: it aborts the transaction and exits (code 70,
    for its supervisor), and its outputs are never visible. Every CDR is scored exactly once."""
    env, s = score_env
    ports = free_ports(2)
    sender = StepProducer(s, ProduceReport(run_id="zombie"))
    steps = list(simulate(s, seed=35, customers=400, days=0.6).backfill_steps(slice_s=300.0))
    valid = {orjson.loads(v)["event_id"] for st in steps for v in st.values[:len(st.good)]}
    log = open(tmp_path / "workers.log", "ab")
    zombie = start_worker(env, log, CHURN_SCORING__METRICS_PORT=str(ports[0]), CHURN_SCORING__COMMIT_INTERVAL_S="5")
    survivor = start_worker(env, log, CHURN_SCORING__METRICS_PORT=str(ports[1]))

    def feed():  # ~17 s of CDRs
        for step in steps:
            sender.send(step)
            sender.flush()
            time.sleep(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        wait_sharing(ports, s.topics.cdr.partitions)
        feeder.start()
        wait_for(lambda: metric(ports[0], "churn_score_events_total") > 0, 60, "the first worker scoring")
        os.killpg(zombie.pid, signal.SIGSTOP)  # CDRs scored, not committed: a transaction is open
        time.sleep(14)  # past the session timeout: the group rebalances without it
        os.killpg(zombie.pid, signal.SIGCONT)
        assert zombie.wait(timeout=90) == 70, (tmp_path / "workers.log").read_text()[-4000:]
        feeder.join(60)
        wait_for(lambda: metric(ports[1], "churn_score_owned_partitions") == s.topics.cdr.partitions, 120,
                 "the survivor owning every partition")
        scores = wait_scored(s, len(valid), 180)
        assert_exactly_once(scores, valid)
        assert_alerts_consistent(s, scores)
    finally:
        for w in (zombie, survivor):
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGCONT)
                w.send_signal(signal.SIGTERM)
                w.wait(timeout=60)


def test_direct_redis_reader_returns_what_feast_get_online_features_returns(score_env):
    """The scorer's fast path reads Feast's Redis hashes itself: it must agree with Feast's own API,
    value for value, for pushed customers, customers with a profile only, and unknown ones."""
    from churn.feature_store import ACTIVITY_ONLINE, store
    from churn.model.inputs import PROFILE_COLUMNS
    from churn.online_reader import FeastRedisReader, FeastSdkReader

    _, s = score_env
    end = recent_evening()
    sim = Simulator(seed=43, start_s=end - 20 * DAY, end_s=end, customers=40)
    cols = sim.silver_columns(slice_s=6 * 3600.0)
    pushed = list(dict.fromkeys(cols["customer_id"]))[:5]
    states = {c: _states_for(cols, c, [end])[0] for c in pushed}
    for c, state in states.items():
        _push(s, c, state)
    profile_only = [c for c in sim.pop.customer_id if c not in states][:3]
    customers = [*pushed, *profile_only, "no-such-customer"]
    fast, sdk = FeastRedisReader.from_settings(s), FeastSdkReader(store(s))
    for view, names in (("customer_activity", ACTIVITY_ONLINE), ("customer_profile", PROFILE_COLUMNS)):
        got, expected = fast.read(view, names, customers), sdk.read(view, names, customers)
        assert got == expected, view
    activity = fast.read("customer_activity", ACTIVITY_ONLINE, customers)
    for c, row in zip(pushed, activity):
        assert row["ref_time"] == states[c]["ref_time"]
        assert row["sums"] == [states[c][n] for n in SUM_FEATURES]
        assert row["active_days"] == states[c]["active_days"]
    assert activity[len(pushed):] == [None] * (len(profile_only) + 1)
    profiles = fast.read("customer_profile", PROFILE_COLUMNS, customers)
    assert all(p is not None and p["tenure_months"] is not None for p in profiles[:-1])
    assert profiles[-1] is None


def test_the_direct_reader_asks_ahead_in_one_round_trip_and_answers_as_read_does(score_env):
    """The scorer asks the store before admitting a batch's CDRs to the overlay and reads the answer after
    (``FeastRedisReader.send``, ``OnlineFeatures.start``): the activity states and the profiles pipelined on
    one connection. The answers must equal ``read``'s, also after Redis forgot its scripts (as after a
    restart), and a connection lost before the answer is read must cost a retry, not a degraded lookup."""
    import redis

    from churn.feature_store import ACTIVITY_ONLINE
    from churn.model.inputs import PROFILE_COLUMNS
    from churn.online_reader import FeastRedisReader, fail_fast_redis
    from churn.security import redis_options
    from streaming.scoring.lookup import OnlineFeatures

    _, s = score_env
    end = recent_evening()
    sim = Simulator(seed=44, start_s=end - 20 * DAY, end_s=end, customers=40)
    cols = sim.silver_columns(slice_s=6 * 3600.0)
    pushed = list(dict.fromkeys(cols["customer_id"]))[:6]
    for c in pushed:
        _push(s, c, _states_for(cols, c, [end])[0])
    profile_only = [c for c in sim.pop.customer_id if c not in pushed][:3]
    customers = [*pushed, *profile_only, "no-such-customer"]
    reader = FeastRedisReader.from_settings(s)
    reads = [("customer_activity", ACTIVITY_ONLINE, customers), ("customer_profile", PROFILE_COLUMNS, customers[2:]),
             ("customer_profile", PROFILE_COLUMNS, [])]
    expected = [reader.read(*r) for r in reads]
    assert expected[0][0]["sums"] and expected[1][0]["tenure_months"] is not None and expected[2] == []
    assert reader.send(reads).result() == expected

    fail_fast_redis(redis_options(s, "admin")).script_flush()  # as after a restart of Redis: NOSCRIPT first
    assert reader.send(reads).result() == expected
    assert reader.send(reads).result() == expected  # the script is loaded again

    sent = reader.send(reads)
    sent.conn.disconnect()  # the connection lost before the answer is read
    with pytest.raises(redis.ConnectionError):
        sent.result()
    assert reader.send(reads).result() == expected  # the pool serves a healthy connection again

    nowhere = FeastRedisReader(s.feast.project, {"host": "127.0.0.1", "port": free_ports(1)[0]}, socket_timeout_s=0.5)
    unsent = nowhere.send(reads)  # nothing listens: sending fails, and the answer raises it
    with pytest.raises(redis.ConnectionError):
        unsent.result()

    features = OnlineFeatures(reader, attempts=2, backoff_s=0.0)
    pending = features.start(customers)
    pending.sent.conn.disconnect()
    looked = pending.finish()  # the first attempt fails, the retry asks again
    assert not looked.degraded and looked.errors == []
    assert [looked.states[c] is not None for c in customers] == [True] * len(pushed) + [False] * 4
    again = features.fetch(customers)  # profiles now cached: the activity states alone are asked
    assert again.states == looked.states
    assert all((again.profiles[c] is None) == (c == "no-such-customer") for c in customers)
    assert all(np.array_equal(again.profiles[c], looked.profiles[c]) for c in customers[:-1])
