"""The Spark streaming job against the real broker and real Delta tables, killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pytest
from conftest import CHURN_BIN, free_ports, recent_evening, run_cli, settings_from

from churn.config import Settings
from churn.contracts import format_time
from churn.simulator import Simulator
from churn.simulator.bad_events import BAD_KINDS
from churn.simulator.produce import ProduceReport, StepProducer, run_backfill
from churn.transport import consumer, ensure_topics
from churn.lake import table_rows

DAY = 86400.0


@pytest.fixture
def stream_env(live_stack, live_env, tmp_path):
    tag = uuid.uuid4().hex[:6]
    env = {**live_env,
           "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake"),
           "CHURN_STREAMING__CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           "CHURN_STREAMING__TRIGGER_S": "1",
           "CHURN_STREAMING__MAX_OFFSETS_PER_TRIGGER": "20000",
           "CHURN_TOPICS__CDR__NAME": f"cdr-{tag}",
           "CHURN_TOPICS__CDR_DLQ__NAME": f"dlq-{tag}",
           "CHURN_TOPICS__CHURN_LABELS__NAME": f"labels-{tag}",
           "CHURN_STREAMING__METRICS_PORT": str(free_ports(1)[0]),
           # a Feast project of its own: Feast keeps the newest value per key, so values pushed by
           # other tests' streams (with other event times) must not share keys with this one
           "CHURN_FEAST__PROJECT": f"t{tag}"}
    s = settings_from(env)
    ensure_topics(s)
    return env, s


def start_stream(env: dict, *args: str, log=None) -> subprocess.Popen:
    return subprocess.Popen([CHURN_BIN, "stream", *args], env={**os.environ, **env}, start_new_session=True,
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


rows = table_rows  # cheap enough to poll


def stream_metrics(env: dict) -> dict[str, float]:
    """The streaming job's Prometheus metrics (at ``CHURN_STREAMING__METRICS_PORT``), by series."""
    import urllib.request

    text = urllib.request.urlopen(
        f"http://127.0.0.1:{env['CHURN_STREAMING__METRICS_PORT']}/metrics", timeout=5).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
             log_path: Path | None = None) -> None:
    """Polls ``predicate`` until it holds; fails at ``timeout_s``, or at once if ``proc`` has exited (with the
    tail of its log at ``log_path``)."""
    deadline = time.time() + timeout_s
    while not predicate():
        tail = log_path.read_text()[-5000:] if log_path and log_path.exists() else ""
        assert proc is None or proc.poll() is None, f"the job exited ({proc.returncode}) before {what}\n{tail}"
        assert time.time() < deadline, f"timed out waiting for {what}\n{tail}"
        time.sleep(1)


def assert_each_record_once(lake: Path, report: ProduceReport) -> None:
    """Every record the producer delivered in Bronze once, every valid event in Silver once."""
    assert report.failed == 0
    bronze = table(lake / "bronze", ["partition", "offset"])
    positions = set(zip(bronze.column("partition").to_pylist(), bronze.column("offset").to_pylist()))
    assert bronze.num_rows == len(positions) == report.cdr_messages
    silver_ids = table(lake / "silver", ["event_id"]).column("event_id").to_pylist()
    assert len(silver_ids) == len(set(silver_ids)) == report.good


def table(path, columns=None, settings=None):
    """A Delta table's rows (Arrow), local or on the stack's S3 server (``settings`` say how to reach it)."""
    from churn import storage

    return storage.open_delta(settings or Settings(), str(path)).to_pyarrow_table(columns=columns)


def test_exactly_once_across_a_sigkill_and_a_sigterm_with_bad_and_duplicate_events(stream_env, tmp_path):
    env, s = stream_env
    exactly_once_across_kills(env, s, tmp_path)


def test_a_failed_query_stops_the_job_with_an_error_and_its_restart_loses_and_repeats_nothing(stream_env, tmp_path):
    """The lake refusing Bronze's commits fails the query that writes it (the silver query, whose batches write
    Bronze): `churn stream` exits with code 1, for its supervisor to restart it, instead of running on with the
    other queries (which would leave the failed one's tables behind for good). Restarted once the lake is back,
    Bronze and Silver hold each record once."""
    env, s = stream_env
    lake = tmp_path / "lake"
    end = recent_evening() - 2 * DAY
    report = ProduceReport(run_id="test")
    sender = StepProducer(s, report)
    sim = Simulator(seed=5, start_s=end - DAY, end_s=end, customers=100)
    run_backfill(s, sim, until_s=end - 0.5 * DAY, sender=sender)
    log = open(tmp_path / "stream.log", "ab")
    proc = start_stream(env, log=log)
    wait_for(lambda: rows(str(lake / "bronze"), s) > 0 and rows(str(lake / "batches"), s) > 0, 240,
             "the first Bronze and Silver batches", proc, tmp_path / "stream.log")
    delta_log = lake / "bronze" / "_delta_log"
    delta_log.rename(tmp_path / "bronze-delta-log")
    delta_log.write_text("")  # a file where Bronze's log directory was: its next commit cannot be written
    run_backfill(s, sim, until_s=end, sender=sender)
    try:
        assert proc.wait(timeout=180) == 1, (tmp_path / "stream.log").read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "query silver failed" in (tmp_path / "stream.log").read_text()

    delta_log.unlink()
    (tmp_path / "bronze-delta-log").rename(delta_log)
    final = start_stream(env, "--available-now", log=log)
    assert final.wait(timeout=400) == 0, (tmp_path / "stream.log").read_text()[-5000:]
    assert_each_record_once(lake, report)


@pytest.fixture(scope="module")
def s3_and_spark_cluster(live_stack, live_env):
    """The session's stack with the lake on its S3 server (S3Proxy) and a Spark standalone cluster (a master,
    two workers of one core each), as ``CHURN_S3__ENABLED=true CHURN_SPARK__STANDALONE_WORKERS=2 churn stack
    up`` starts them; stopped after the module."""
    from churn import stack
    from churn.stack.process import port_is_free
    from churn.stack.services import s3_services, spark_services

    while True:
        s3_port, master_port = free_ports(2)
        if port_is_free("127.0.0.1", master_port + 1):  # the master's web UI
            break
    env = {**live_env, "CHURN_S3__ENABLED": "true", "CHURN_S3__PORT": str(s3_port),
           "CHURN_SPARK__STANDALONE_WORKERS": "2", "CHURN_SPARK__MASTER_PORT": str(master_port)}
    s = settings_from(env)
    started = dict(stack.up(s))
    assert {"s3", "spark-master", "spark-worker-1", "spark-worker-2"} <= {k for k, v in started.items()
                                                                         if v.startswith("started")}
    yield env
    for service in reversed(s3_services(s) + spark_services(s)):
        service.stop()


def test_on_a_spark_cluster_with_the_lake_on_s3_exactly_once_across_kills(s3_and_spark_cluster, stream_env, tmp_path):
    """The same job, unchanged, with ``--master spark://…`` (executors in their own JVMs on the workers) and
    Bronze, Silver, quarantine, history and the checkpoints in an S3 bucket through Hadoop's S3A."""
    from churn import storage

    env = {**stream_env[0], **s3_and_spark_cluster, "CHURN_S3__PREFIX": f"t{uuid.uuid4().hex[:6]}"}
    s = settings_from(env)
    assert s.spark.master.startswith("spark://") and storage.lake_url(s).startswith("s3a://")
    exactly_once_across_kills(env, s, tmp_path, sigterm=False)  # the SIGTERM is the local test's
    # nothing of it on the local disk: the tables and checkpoints are objects in the bucket
    assert not (tmp_path / "lake").exists() and not (tmp_path / "checkpoints").exists()
    bucket = s.run_dir / "s3" / "data" / s.s3.bucket / s.s3.prefix
    assert {p.name for p in (bucket / "lake").iterdir()} >= {"bronze", "silver", "quarantine", "feature_history"}
    checkpoints = {p.name for p in (bucket / "checkpoints").iterdir()}
    assert "silver" in checkpoints and "bronze" not in checkpoints  # the silver query's batches write Bronze
    # and the work ran on the cluster: the master lists the job's two runs, each given the workers' cores
    from churn.stack.services import spark_master_status

    runs = [a for a in spark_master_status(s)["completedapps"] if a["name"] == "churn-stream"]
    assert len(runs) >= 2 and all(a["cores"] == 2 for a in runs), runs

    # the nightly's Gold on the same cluster and bucket: one row per customer and day of Silver, published
    # behind the quality gate, in the bucket
    silver = table(storage.join(storage.lake_url(s), "silver"), ["customer_id", "event_date"], s).to_pandas()
    first, last = silver["event_date"].min(), silver["event_date"].max()
    gold = run_cli(["batch", "gold", "--from", str(first), "--to", str(last)], env, timeout=600)
    assert gold.returncode == 0, gold.stdout[-3000:] + gold.stderr[-3000:]
    customer_day = table(storage.join(storage.lake_url(s), "gold", "customer_day"), ["customer_id", "event_date"], s)
    assert customer_day.num_rows == len(silver.drop_duplicates()) > 0
    assert any(a["name"] == "churn-gold" and a["cores"] == 2 for a in spark_master_status(s)["completedapps"])


def exactly_once_across_kills(env: dict, s, tmp_path, sigterm: bool = True) -> None:
    """The streaming job SIGKILLed, then (``sigterm``) SIGTERMed, while events (3 % invalid, 3 % duplicated)
    arrive, then drained: Bronze holds each record once, Silver each valid event once, the quarantine and the
    dead-letter topic every invalid one with its reason, and Feast the features of exactly Silver's events."""
    from churn import storage

    lake = storage.lake_url(s)
    at = lambda name: storage.join(lake, name)  # noqa: E731
    end = recent_evening() - 2 * DAY
    report = ProduceReport(run_id="test")
    sender = StepProducer(s, report)
    sim = Simulator(seed=21, start_s=end - 1.5 * DAY, end_s=end, customers=300, bad_ratio=0.03,
                    duplicate_ratio=0.03)
    kills = 2 if sigterm else 1
    step = DAY / (2 * kills)
    log_path = tmp_path / "stream.log"
    log = open(log_path, "ab")

    run_backfill(s, sim, until_s=end - DAY, sender=sender)  # a backlog for the first start
    for kill in range(kills):
        proc = start_stream(env, log=log)
        before = rows(at("batches"), s)
        # events arriving after each start (so every run has a batch to commit, even one whose predecessor
        # had caught up before it was killed); let it commit one, then kill it while more data arrives
        run_backfill(s, sim, until_s=end - DAY + (2 * kill + 1) * step, sender=sender)
        wait_for(lambda: rows(at("batches"), s) > before, 240, "a silver batch", proc, log_path)
        run_backfill(s, sim, until_s=end - DAY + (2 * kill + 2) * step, sender=sender)
        time.sleep(2)
        if kill == 0:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:  # SIGTERM while batches run: a clean stop (between two batches), exit 0, resumable below
            os.kill(proc.pid, signal.SIGTERM)  # the process, as a supervisor does (its Spark JVM is a child)
            assert proc.wait(timeout=90) == 0, (tmp_path / "stream.log").read_text()[-5000:]
            assert "StackOverflowError" not in (tmp_path / "stream.log").read_text()
    # restart and drain everything that is in Kafka
    final = start_stream(env, "--available-now", log=log)
    assert final.wait(timeout=400) == 0, (tmp_path / "stream.log").read_text()[-5000:]
    assert report.failed == 0

    produced = report.cdr_messages
    bronze = table(at("bronze"), ["partition", "offset"], s)
    assert bronze.num_rows == produced  # every record exactly once
    assert len(set(zip(bronze.column("partition").to_pylist(), bronze.column("offset").to_pylist()))) == produced

    silver_ids = table(at("silver"), ["event_id"], s).column("event_id").to_pylist()
    assert len(silver_ids) == len(set(silver_ids)) == report.good  # each valid event exactly once
    quarantine = table(at("quarantine"), ["reason", "kafka_partition", "kafka_offset"], s)
    reasons = Counter(quarantine.column("reason").to_pylist())
    assert reasons == Counter({BAD_KINDS[k]: n for k, n in report.bad.items()})
    # the accounting invariant: Bronze = Silver + quarantined + duplicates dropped
    assert bronze.num_rows == len(silver_ids) + quarantine.num_rows + report.duplicates

    # every quarantined record is on the dead-letter topic with its reason (at least once)
    c = consumer(s, group_id=f"dlq-{uuid.uuid4().hex[:6]}")
    c.subscribe([s.topics.cdr_dlq.name])
    seen = {}
    deadline = time.time() + 60
    while len(seen) < quarantine.num_rows and time.time() < deadline:
        for m in c.consume(1000, timeout=0.5):
            h = dict(m.headers())
            seen[(int(h["source_partition"]), int(h["source_offset"]))] = h["reason"].decode()
    c.close()
    expected = dict(zip(zip(quarantine.column("kafka_partition").to_pylist(),
                            quarantine.column("kafka_offset").to_pylist()), quarantine.column("reason").to_pylist()))
    assert seen == expected

    # the features survived the kills exactly once too: what Feast serves per customer equals
    # the batch computation over Silver (a batch merged twice or lost would show here)
    assert_online_features_equal_batch(s, lake, at_least=250)


def assert_online_features_equal_batch(s, lake, at_least: int) -> None:
    from churn import feature_store, storage
    from churn.features import SUM_FEATURES, partial_sums_numpy

    silver = table(storage.join(str(lake), "silver"), settings=s).to_pandas()
    cols = {name: silver[name].to_numpy() for name in silver.columns}
    cols["event_time"] = silver["event_time"].astype("int64").to_numpy() / 1e6  # microseconds -> epoch s
    batch = partial_sums_numpy(cols)
    assert len(batch) >= at_least
    online = feature_store.online_activity(feature_store.store(s), list(batch))
    for customer, expected in batch.items():
        got = online[customer]
        assert got["ref_time"] == pytest.approx(expected["ref_time"], abs=1e-6)
        assert got["active_days"] == expected["active_days"]
        for name in SUM_FEATURES:
            assert got[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), (customer, name)


def test_pending_batches_are_kept_whole_on_s3_too(s3_and_spark_cluster):
    """The rows of a batch whose driver work may still run (``streaming.pending_batches``), beside a checkpoint
    in the S3 bucket: written, listed, read back equal, and removed, on the stack's S3 server."""
    import pyarrow as pa

    from churn import storage
    from streaming.pending_batches import PendingBatches, pending_url

    s = settings_from({**s3_and_spark_cluster, "CHURN_S3__PREFIX": f"t{uuid.uuid4().hex[:6]}"})
    url = pending_url(storage.join(storage.checkpoints_url(s), "silver"))
    assert storage.is_s3(url)
    pending = PendingBatches(s, url)
    assert pending.ids() == []
    rows = pa.table({"kafka_offset": pa.array(range(5000), pa.int64()), "value": [b"x" * 200] * 5000,
                     "reason": pa.array([None] * 4999 + ["malformed_json"], pa.string())})
    pending.write(12, rows)
    pending.write(3, rows.slice(0, 10))
    assert pending.ids() == [3, 12]
    assert pending.read(12).equals(rows) and pending.read(3).num_rows == 10
    pending.remove(3)
    pending.remove_leftovers()
    assert pending.ids() == [12]
    pending.remove(12)
    assert pending.ids() == []


def test_out_of_order_within_the_watermark_is_kept_and_later_is_quarantined_as_late(stream_env, tmp_path):
    env, s = stream_env
    lake = tmp_path / "lake"
    base = recent_evening() - DAY
    sim = Simulator(seed=22, start_s=base - 0.25 * DAY, end_s=base, customers=100)
    report = run_backfill(s, sim)
    assert start_stream(env, "--available-now").wait(timeout=300) == 0
    newest = max(t.timestamp() for t in table(lake / "silver", ["event_time"]).column("event_time").to_pylist())

    from confluent_kafka import Producer

    template = {"customer_id": "7590-VHVEG", "record_type": "sms", "direction": "outgoing",
                "counterparty": "on_net", "cell_id": "C0001", "roaming": False, "charge": 0.0}
    on_time = {**template, "event_id": "ooo-within", "event_time": format_time(newest - 1800)}  # 30 min out of order
    late = {**template, "event_id": "ooo-late", "event_time": format_time(newest - 2 * DAY)}  # beyond 1 h lateness
    p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
    for e in (on_time, late):
        p.produce(s.topics.cdr.name, orjson.dumps(e), e["customer_id"].encode())
    p.flush(10)
    env2 = {**env, "CHURN_STREAMING__ALLOWED_LATENESS_S": "3600"}
    assert start_stream(env2, "--available-now").wait(timeout=300) == 0

    silver_ids = set(table(lake / "silver", ["event_id"]).column("event_id").to_pylist())
    assert "ooo-within" in silver_ids and "ooo-late" not in silver_ids
    q = table(lake / "quarantine", ["event_id", "reason"]).to_pylist()
    assert {"event_id": "ooo-late", "reason": "late_event:event_time"} in q
    assert len(silver_ids) == report.good + 1


def test_features_reach_feast_within_seconds_and_equal_the_batch_computation(stream_env, tmp_path):
    from confluent_kafka import Producer

    from churn import feature_store
    from churn.features import SUM_FEATURES, partial_sums
    from churn.spark import spark_session

    env, s = stream_env
    env = {**env, "CHURN_STREAMING__MAX_OFFSETS_PER_TRIGGER": "3000"}  # several batches: merges are exercised
    lake = tmp_path / "lake"
    end = recent_evening()
    sim = Simulator(seed=23, start_s=end - 0.5 * DAY, end_s=end, customers=200)
    report = ProduceReport(run_id="t")
    sender = StepProducer(s, report)
    run_backfill(s, sim, until_s=end - 0.25 * DAY, sender=sender)
    log = open(tmp_path / "stream.log", "ab")
    proc = start_stream(env, log=log)
    try:
        wait_for(lambda: rows(lake / "batches") >= 1, 300, "the first batch", proc, tmp_path / "stream.log")
        run_backfill(s, sim, sender=sender)
        t0 = time.time()
        wait_for(lambda: rows(lake / "silver") == report.good, 300, "all events in Silver", proc,
                 tmp_path / "stream.log")
        print(f"caught up with {report.good} events in {time.time() - t0:.1f} s")

        # a fresh event for one customer: how long until Feast serves the new value?
        fs = feature_store.store(s)
        customer = sim.pop.customer_id[0]
        before = feature_store.online_activity(fs, [customer])[customer]
        event_time = round(end + 60.0, 3)
        event = {"event_id": f"fresh-{uuid.uuid4().hex[:6]}", "customer_id": customer, "record_type": "sms",
                 "event_time": format_time(event_time), "direction": "outgoing", "counterparty": "on_net",
                 "cell_id": "C0001", "roaming": False, "charge": 0.0}
        p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
        p.produce(s.topics.cdr.name, orjson.dumps(event), customer.encode())
        p.flush(10)
        sent = time.time()
        wait_for(lambda: abs((feature_store.online_activity(fs, [customer])[customer]["ref_time"] or 0)
                             - event_time) < 0.002, 60, "the fresh value in Feast")
        freshness = time.time() - sent
        print(f"fresh event served by Feast after {freshness:.1f} s")
        after = feature_store.online_activity(fs, [customer])[customer]
        assert after["sms_1d"] > before["sms_1d"] * 0.9  # the new SMS counts, older ones decayed by 60 s
        assert freshness < 10, f"feature took {freshness:.1f} s to reach Feast"

        # the job's Prometheus endpoint reports what it did (once the batch's accounting is written)
        def metrics() -> dict[str, float]:
            return stream_metrics(env)

        wait_for(lambda: metrics().get("churn_stream_silver_rows_total") == report.good + 1, 60, "the metrics")
        m = metrics()
        assert m['churn_stream_batch_duration_seconds_count{query="silver"}'] >= 2
        assert 0 <= m["churn_stream_feature_freshness_seconds"] < time.time() - end  # the fresh event is newest

        # Bronze is written by the silver query's batches (Kafka read once): no query or process of its own, and
        # every record in it as it arrived, the fresh event included
        import psutil

        assert 'churn_stream_query_active{query="bronze"}' not in metrics()
        assert not [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        bronze = table(lake / "bronze")
        assert bronze.num_rows == report.cdr_messages + 1
        fresh = bronze.filter(pc.equal(bronze.column("value"), orjson.dumps(event))).to_pylist()
        assert len(fresh) == 1
        assert (fresh[0]["key"], fresh[0]["topic"], fresh[0]["headers"], fresh[0]["kafka_timestamp_type"]) == (
            customer.encode(), s.topics.cdr.name, None, 0)  # Spark's Kafka source: no headers, null
        assert abs(fresh[0]["kafka_timestamp"].timestamp() - sent) < 10
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful stop
        assert proc.wait(timeout=120) == 0, (tmp_path / "stream.log").read_text()[-3000:]

    # the nightly path's computation over Silver equals what the stream pushed, customer by customer
    spark = spark_session(s, "test-batch-features")
    try:
        batch = {r.customer_id: r.asDict() for r in partial_sums(
            spark.read.format("delta").load(str(lake / "silver"))).collect()}
    finally:
        spark.stop()
    online = feature_store.online_activity(fs, list(batch))
    assert len(batch) >= 150
    for customer, expected in batch.items():
        got = online[customer]
        assert got["ref_time"] == pytest.approx(expected["ref_time"], abs=1e-6)
        assert got["active_days"] == list(expected["active_days"])
        for name in SUM_FEATURES:
            assert got[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), (customer, name)
    history = table(lake / "feature_history", ["customer_id", "batch_id"])
    assert history.num_rows >= len(batch)  # every push is also in the offline history

    # offline, by name (customer_activity_named): each customer's newest recorded row is what Feast serves
    import pandas as pd

    some = sorted(batch)[:25]
    named = fs.get_historical_features(
        entity_df=pd.DataFrame({"customer_id": some, "event_timestamp": pd.Timestamp.now(tz="UTC")}),
        features=[f"customer_activity_named:{n}" for n in ("ref_time", *SUM_FEATURES)],
    ).to_df().set_index("customer_id")
    for customer in some:
        assert named.loc[customer, "ref_time"] == pytest.approx(online[customer]["ref_time"], abs=1e-6)
        for name in SUM_FEATURES:
            assert named.loc[customer, name] == pytest.approx(online[customer][name], rel=1e-9, abs=1e-9)


def test_a_lake_started_with_bronze_as_a_query_of_its_own_keeps_it_in_a_process_of_its_own(stream_env, tmp_path):
    """``streaming.bronze_writer`` = ``query``: Bronze is a query of its own, in a process of its own at
    ``streaming.bronze_nice`` with its Spark JVM under it, and its batches reach the job's metrics. Restarted
    with the default settings (the silver query's batches write Bronze), the lake keeps its Bronze query:
    every record in Bronze once, every valid event in Silver once."""
    import psutil

    env, s = stream_env
    lake, log_path = tmp_path / "lake", tmp_path / "stream.log"
    end = recent_evening() - 2 * DAY
    report = ProduceReport(run_id="t")
    sender = StepProducer(s, report)
    sim = Simulator(seed=9, start_s=end - DAY, end_s=end, customers=100, bad_ratio=0.02, duplicate_ratio=0.03)
    run_backfill(s, sim, until_s=end - 0.5 * DAY, sender=sender)
    log = open(log_path, "ab")
    proc = start_stream({**env, "CHURN_STREAMING__BRONZE_WRITER": "query", "CHURN_STREAMING__BRONZE_TRIGGER_S": "5"},
                        log=log)
    try:
        wait_for(lambda: rows(lake / "bronze") >= report.cdr_messages and rows(lake / "batches") > 0, 240,
                 "Bronze's and Silver's first batches", proc, log_path)
        wait_for(lambda: stream_metrics(env).get('churn_stream_input_rows_total{query="bronze"}', 0)
                 >= report.cdr_messages, 60, "Bronze's batches in the metrics", proc, log_path)
        assert stream_metrics(env)['churn_stream_query_active{query="bronze"}'] == 1
        job = psutil.Process(proc.pid)
        bronze = [c for c in job.children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(bronze) == 1, [c.cmdline() for c in job.children()]
        assert bronze[0].nice() == s.streaming.bronze_nice == 19
        assert job.nice() == 0
        jvm = [c for c in bronze[0].children() if "java" in " ".join(c.cmdline())]
        assert len(jvm) == 1 and jvm[0].nice() == 19
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log_path.read_text()[-3000:]

    run_backfill(s, sim, sender=sender)
    final = start_stream(env, "--available-now", log=log)  # the default: Bronze written by the silver batches
    assert final.wait(timeout=400) == 0, log_path.read_text()[-5000:]
    assert "were started with Bronze written by a query of its own; they keep it" in log_path.read_text()
    assert_each_record_once(lake, report)


def test_a_lake_keeps_the_bronze_writer_its_checkpoints_were_started_with(tmp_path):
    from streaming.job import bronze_writer

    def writer(checkpoints: str, setting: str, dedup: str = "timers") -> str:
        return bronze_writer(Settings(streaming={"bronze_writer": setting}), str(tmp_path / checkpoints), dedup)

    assert writer("a", "silver_batch") == "silver_batch"  # new checkpoints: the settings' way, recorded
    assert writer("a", "query") == "silver_batch"
    assert writer("b", "query") == "query" and writer("b", "silver_batch") == "query"
    assert writer("c", "silver_batch", dedup="spark") == "query"  # Spark's de-duplication drops the duplicates
    assert writer("c", "silver_batch") == "query"
    (tmp_path / "d" / "silver" / "offsets").mkdir(parents=True)  # an earlier version's: Bronze had its own query
    assert writer("d", "silver_batch") == "query"

    # what the CDR tables' offsets are read from: Bronze's own checkpoint only where the lake has that query
    from streaming.job import cdr_checkpoints

    def checkpoints(name: str) -> list[str]:
        return cdr_checkpoints(Settings(streaming={"checkpoint_dir": str(tmp_path / name)}))

    assert checkpoints("a") == [str(tmp_path / "a" / "silver")]
    assert checkpoints("b") == [str(tmp_path / "b" / "silver"), str(tmp_path / "b" / "bronze")]
    assert checkpoints("d") == [str(tmp_path / "d" / "silver"), str(tmp_path / "d" / "bronze")]


def test_a_batch_replayed_after_a_restart_is_written_once_and_new_batches_always(tmp_path):
    """The Delta writes' idempotence (``StreamingJob._append``) on real Delta tables: a batch that may
    have run before the restart (its offsets are logged) and was committed is skipped; one that was not
    committed, a new batch, and another checkpoint's (writer's) batch of the same id are written."""
    import pyarrow as pa

    from churn.config import Settings
    from churn.spark import spark_session
    from streaming.job import StreamingJob

    lake, checkpoints = tmp_path / "lake", tmp_path / "checkpoints"
    s = Settings(streaming={"lake_dir": str(lake), "checkpoint_dir": str(checkpoints)})
    (checkpoints / "silver" / "offsets").mkdir(parents=True)
    for batch_id in range(4):  # Spark logged the offsets of batches 0..3 before the "crash"
        (checkpoints / "silver" / "offsets" / str(batch_id)).write_text("v1\n")
    spark = spark_session(s, "test-idempotent-writes")
    path = str(lake / "silver")

    def rows(batch_id: int, n: int = 3):
        return pa.table({"batch_id": [batch_id] * n, "i": list(range(n))})

    def written() -> Counter:
        return Counter(table(path, ["batch_id"]).column("batch_id").to_pylist())

    first = StreamingJob(s, spark=spark)
    assert first._may_replay_upto == 3
    first._append(rows(2), path, "silver", 2)
    first._append(rows(3), path, "silver", 3)
    assert written() == {2: 3, 3: 3}

    restarted = StreamingJob(s, spark=spark)  # same checkpoint, so the same writer
    assert restarted.silver_writer == first.silver_writer
    restarted._append(rows(3), path, "silver", 3)  # the replayed batch: already committed, skipped
    restarted._append(rows(1, 2), path, "silver", 1)  # logged but never committed: written
    restarted._append(rows(4), path, "silver", 4)  # new
    assert written() == {1: 2, 2: 3, 3: 3, 4: 3}

    other = StreamingJob(s.model_copy(update={"streaming": s.streaming.model_copy(
        update={"checkpoint_dir": tmp_path / "fresh-checkpoints"})}), spark=spark)
    assert other.silver_writer != first.silver_writer and other._may_replay_upto == -1
    other._append(rows(3), path, "silver", 3)  # a fresh start's batch 3 is not the old writer's
    assert written() == {1: 2, 2: 3, 3: 6, 4: 3}


def test_dead_letters_the_broker_never_takes_fail_the_batch_instead_of_being_lost(tmp_path, monkeypatch):
    """``cdr.dlq`` is at least once: a dead letter not delivered within its timeout (here: no broker at all)
    raises, so its batch fails and is replayed on restart, rather than the letter being dropped."""
    from streaming import job as job_module
    from streaming.job import StreamingJob

    (port,) = free_ports(1)  # nothing listens there
    s = settings_from({"CHURN_KAFKA__PORT": str(port), "CHURN_STREAMING__LAKE_DIR": str(tmp_path / "lake"),
                       "CHURN_STREAMING__CHECKPOINT_DIR": str(tmp_path / "checkpoints")})
    monkeypatch.setattr(job_module, "DLQ_DELIVERY_TIMEOUT_S", 1.0)
    job = StreamingJob(s, spark=object())  # the dead letters need no Spark
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"dead letters to cdr\.dlq not delivered: 2 failed, 0 still queued"):
        job._send_dead_letters("cdr.dlq", "cdr", [("c1", b"{", "malformed_json", "not JSON", 0, 7),
                                                  (None, b"", "malformed_json", None, 1, 9)])
    assert time.monotonic() - started < 15


def test_a_batch_spark_committed_whose_work_on_the_driver_failed_is_ended_on_restart(stream_env, tmp_path):
    """With ``overlap_batches`` Spark commits a silver batch before the driver has ended it (its Delta writes,
    features and push): the batch's rows are kept beside the checkpoint until then. Its push failing leaves
    it committed in Spark, unended and kept, not counted as committed by ``committed_offsets``, and the
    query fails at its next batch. The restarted job ends it before resuming: Bronze holds each record
    once, Silver each valid event once, and Feast serves the batch computation over Silver."""
    from pyspark.errors import StreamingQueryException

    from churn import storage
    from churn.spark import spark_session
    from churn.transport import end_offsets
    from streaming.job import StreamingJob, batch_offsets, committed_offsets
    from streaming.pending_batches import PendingBatches, pending_url

    env, s = stream_env
    s = s.model_copy(update={"streaming": s.streaming.model_copy(update={"max_offsets_per_trigger": 600})})
    assert s.streaming.overlap_batches
    lake, silver = tmp_path / "lake", storage.join(storage.checkpoints_url(s), "silver")
    end = recent_evening() - 2 * DAY
    report = ProduceReport(run_id="test")
    sim = Simulator(seed=31, start_s=end - DAY, end_s=end, customers=150, bad_ratio=0.03, duplicate_ratio=0.03)
    run_backfill(s, sim, sender=StepProducer(s, report))
    assert report.cdr_messages > 4 * 600  # four batches at least

    spark = spark_session(s, "test-pending-batches")
    try:
        job = StreamingJob(s, spark=spark, available_now=True)
        job.prepare()
        pushes, push = [], job._push_features

        def push_failing_the_second_time(*args):
            pushes.append(1)
            if len(pushes) == 2:
                raise ConnectionError("Redis gone")
            push(*args)

        job._push_features = push_failing_the_second_time
        with pytest.raises(StreamingQueryException, match="Redis gone"):
            job.start_silver().awaitTermination()
        assert isinstance(job.failure(), ConnectionError)
        commits = sorted(int(n) for n in os.listdir(Path(silver) / "commits") if n.isdigit())
        assert commits == [0, 1]  # batch 1 committed in Spark, batch 2 failed on batch 1's failure
        assert PendingBatches(s, pending_url(silver)).ids() == [1]
        assert committed_offsets(s, silver, s.topics.cdr.name) == batch_offsets(s, silver, 0, s.topics.cdr.name)
        assert sorted(table(lake / "batches", ["batch_id"]).column("batch_id").to_pylist()) == [0, 1]

        restarted = StreamingJob(s, spark=spark, available_now=True)
        restarted.prepare()
        restarted.start_silver().awaitTermination()
        restarted.wait_for_batches()
    finally:
        spark.stop()
    assert PendingBatches(s, pending_url(silver)).ids() == []
    assert_each_record_once(lake, report)
    batch_ids = table(lake / "batches", ["batch_id"]).column("batch_id").to_pylist()
    assert len(batch_ids) == len(set(batch_ids)) >= 4
    assert committed_offsets(s, silver, s.topics.cdr.name) == end_offsets(s, s.topics.cdr.name)
    assert_online_features_equal_batch(s, str(lake), at_least=140)


def test_only_a_batch_that_read_its_fill_is_ended_beside_the_next():
    """``_behind``: a batch that read ``max_offsets_per_trigger`` records (Spark shares the limit out among the
    partitions rounding down, so up to one fewer per partition) has more waiting and is overlapped; a smaller
    one, the query caught up, ends before the next batch starts."""
    import pyarrow as pa

    from streaming.job import StreamingJob

    job = StreamingJob.__new__(StreamingJob)  # the rule needs only the settings
    job.settings = Settings(streaming={"max_offsets_per_trigger": 1000}, topics={"cdr": {"partitions": 12}})
    rows = lambda n: pa.table({"kafka_offset": list(range(n))})  # noqa: E731
    assert job._behind(rows(1000)) and job._behind(rows(989))
    assert not job._behind(rows(988)) and not job._behind(rows(0))
