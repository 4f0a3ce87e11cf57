"""The fault suite (``churn chaos``): CDRs at a fixed rate through the streaming job and two scoring
workers while faults are injected one after another; after each, every event is accounted for.

Each fault runs as one phase: traffic starts, the fault is injected 10 s in, the fault ends (the process
restarted by its supervisor, the server started again, the worker continued), traffic goes on for 10 s
more, then stops. The phase's figures:

* **in flight**: CDRs produced while the fault lasted;
* **time to recover**: from the end of the fault until the streaming job (Silver and Bronze) and the
  scorers have committed every CDR produced up to that moment (not recovered after 10 minutes: the suite
  stops there);
* **lost** and **duplicated**: after the pipeline has drained, the whole run so far counted
  (``Accounting``): every record in Bronze once, every valid CDR in Silver once and scored once, every
  invalid one quarantined and on the dead-letter topic, no alert twice.

The jobs run as the local stack, Compose and systemd run them: under a supervisor that restarts a
process that failed. The suite uses topics, tables, a scorer group and a Feast project of its own.

>>> a = Accounting(produced=10, valid=9, invalid=1, bronze=11, bronze_distinct=10, silver=9, silver_distinct=9,
...                quarantined=1, dead_letters=1, scored=8, scored_distinct=8, alerts=2, alerts_distinct=2)
>>> a.lost, a.duplicated
(1, 1)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from churn.config import Settings, settings_with_env

#: Seconds of traffic before a fault is injected, and after it ends.
LEAD_S, TRAIL_S = 10.0, 10.0
#: A phase whose pipeline has not caught up this long after the fault ended has not recovered.
RECOVERY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Accounting:
    """The run so far, counted in the lake, on the topics and by the producer."""

    produced: int  # CDR records acknowledged by the broker
    valid: int
    invalid: int
    bronze: int
    bronze_distinct: int  # distinct (partition, offset)
    silver: int
    silver_distinct: int  # distinct event_id
    quarantined: int
    dead_letters: int  # distinct source positions on the dead-letter topic
    scored: int
    scored_distinct: int  # distinct CDRs (trigger event ids) with a score
    alerts: int
    alerts_distinct: int

    @property
    def lost(self) -> int:
        """Records missing anywhere they should be: Bronze, Silver, quarantine, dead letters, scores."""
        return (max(self.produced - self.bronze_distinct, 0) + max(self.valid - self.silver_distinct, 0)
                + max(self.invalid - self.quarantined, 0) + max(self.invalid - self.dead_letters, 0)
                + max(self.valid - self.scored_distinct, 0))

    @property
    def duplicated(self) -> int:
        """Records held more than once: Bronze, Silver, scores, alerts."""
        return ((self.bronze - self.bronze_distinct) + (self.silver - self.silver_distinct)
                + (self.scored - self.scored_distinct) + (self.alerts - self.alerts_distinct)
                + max(self.quarantined - self.invalid, 0))


@dataclass
class FaultResult:
    fault: str
    in_flight: int
    lost: int
    duplicated: int
    recover_s: float | None  # None: not recovered within RECOVERY_TIMEOUT_S
    accounting: dict = field(default_factory=dict)


@dataclass
class Fault:
    name: str
    #: Injects the fault and returns when it has ended (the process back, the server started again).
    run: Callable[["Chaos"], None]
    #: A burst of malformed events instead of a process fault.
    malformed: bool = False


class Chaos:
    """One run of the suite against the running stack of ``settings``."""

    def __init__(self, env: dict[str, str], rate: float, workdir: Path, log: Callable[[str], None] = print):
        """``env``: the environment whose ``CHURN_*`` variables configure the stack (the caller's own)."""
        from churn.stack.process import free_ports

        self.rate, self.workdir, self.log = rate, workdir, log
        tag = uuid.uuid4().hex[:6]
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3)
        self.overrides = {
            "CHURN_STREAMING__LAKE_DIR": str(workdir / "lake"),
            "CHURN_STREAMING__CHECKPOINT_DIR": str(workdir / "checkpoints"),
            "CHURN_S3__PREFIX": f"chaos-{tag}",
            "CHURN_STREAMING__TRIGGER_S": "1",
            "CHURN_STREAMING__METRICS_PORT": str(ports[0]),
            "CHURN_TOPICS__CDR__NAME": f"chaos-cdr-{tag}", "CHURN_TOPICS__CDR_DLQ__NAME": f"chaos-dlq-{tag}",
            "CHURN_TOPICS__CHURN_SCORES__NAME": f"chaos-scores-{tag}",
            "CHURN_TOPICS__CHURN_ALERTS__NAME": f"chaos-alerts-{tag}",
            "CHURN_TOPICS__CHURN_LABELS__NAME": f"chaos-labels-{tag}",
            "CHURN_TOPICS__CUSTOMER_PROFILES__NAME": f"chaos-profiles-{tag}",
            "CHURN_TOPICS__CUSTOMER_PROFILES_DLQ__NAME": f"chaos-profiles-dlq-{tag}",
            "CHURN_SCORING__APP_ID": f"chaos-{tag}",
            "CHURN_FEAST__PROJECT": f"chaos{tag}",
        }
        self.worker_ports = ports[1:]
        self.env = {**os.environ, **env, **self.overrides}
        self.s = settings_with_env(self.env)
        self.stream: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    # -- the pipeline ---------------------------------------------------------------------------------
    def start(self) -> None:
        from churn import feature_store
        from churn.transport import ensure_topics

        ensure_topics(self.s)
        feature_store.ensure_applied_in_subprocess(self.s)
        churn = str(Path(sys.executable).parent / "churn")
        self.stream = self._supervised("stream", [churn, "stream"], {})
        self.workers = [self._supervised(f"score-{i + 1}", [churn, "score"], {
            "CHURN_SCORING__METRICS_PORT": str(port)}) for i, port in enumerate(self.worker_ports)]
        _wait(lambda: _answers(self.s.streaming.metrics_port), 300, "the streaming job")
        for port in self.worker_ports:
            _wait(lambda: _answers(port), 180, "a scoring worker")

    def _supervised(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        from churn.stack.services import SUPERVISE

        log = open(self.workdir / f"{name}.log", "ab")
        return subprocess.Popen(["bash", "-c", SUPERVISE, "supervise", *command], env={**self.env, **env},
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """SIGTERM to each supervisor and its process (the supervisor ends with it; the streaming job's Spark
        JVM is left to the job, which stops its queries first), SIGKILL after 90 s. The run's figures are
        counted by then."""
        procs = [p for p in [*self.workers, self.stream] if p is not None]
        for proc in procs:
            for pid in [proc.pid, *([_child(proc).pid] if _child(proc) else [])]:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # -- a phase ----------------------------------------------------------------------------------------
    def phase(self, fault: Fault, sender, seed: int) -> FaultResult:
        from churn.simulator import Simulator
        from churn.simulator.produce import run_live
        from churn.transport import end_offsets

        now = time.time()
        sim = Simulator(seed=seed, start_s=now, end_s=now + 30 * 86400.0, customers=2000, mode="live",
                        labels_from_s=now + 365 * 86400.0, bad_ratio=0.1 if fault.malformed else 0.0)
        stop = threading.Event()
        traffic = threading.Thread(target=run_live, args=(self.s, sim, self.rate, None, stop),
                                   kwargs={"warn": lambda m: self.log(f"  producer: {m}"), "sender": sender},
                                   daemon=True)
        if fault.malformed:  # the burst is the fault: the phase's traffic is 10 % malformed
            before = sum(end_offsets(self.s, self.s.topics.cdr.name).values())
            traffic.start()
            time.sleep(LEAD_S + TRAIL_S)
            stop.set()
            traffic.join()
            sender.flush()
            ended, target = time.time(), end_offsets(self.s, self.s.topics.cdr.name)
            in_flight = sum(target.values()) - before
        else:
            traffic.start()
            time.sleep(LEAD_S)
            before = sum(end_offsets(self.s, self.s.topics.cdr.name).values())
            fault.run(self)
            ended = time.time()
            target = _end_offsets_retrying(self.s)
            in_flight = sum(target.values()) - before
            time.sleep(TRAIL_S)
            stop.set()
            traffic.join()
            sender.flush()
        try:
            recover_s: float | None = round(self._caught_up(target, RECOVERY_TIMEOUT_S) - ended, 1)
            self._caught_up(end_offsets(self.s, self.s.topics.cdr.name), RECOVERY_TIMEOUT_S)  # drain the trail
        except TimeoutError:
            recover_s = None  # not recovered: counted as it stands, and the suite stops here
        counted = self.account(sender.report)
        return FaultResult(fault.name, in_flight, counted.lost, counted.duplicated, recover_s, asdict(counted))

    def _caught_up(self, target: dict[int, int], timeout_s: float) -> float:
        """Wait until Silver, Bronze and the scorers' group have committed up to ``target``; returns when."""
        from streaming.job import cdr_checkpoints, committed_offsets

        topic = self.s.topics.cdr.name

        def done() -> bool:
            try:
                for checkpoint in cdr_checkpoints(self.s):
                    got = committed_offsets(self.s, checkpoint, topic)
                    if any(got.get(p, 0) < o for p, o in target.items()):
                        return False
                got = _group_committed(self.s, topic)
                return all(got.get(p, 0) >= o for p, o in target.items())
            except Exception:  # a server still coming back
                return False

        _wait(done, timeout_s, "the pipeline to catch up")
        return time.time()

    def account(self, report) -> Accounting:
        """The run so far, counted (``Accounting``)."""
        import orjson
        import pyarrow.compute as pc

        from churn import storage
        from churn.lake import LakePaths
        from churn.transport import read_committed

        lake = LakePaths.of(self.s)

        def table(url: str, columns: list[str]):
            try:
                return storage.open_delta(self.s, url).to_pyarrow_table(columns=columns)
            except Exception:  # no table yet
                return None

        bronze = table(lake.bronze, ["partition", "offset"])
        silver = table(lake.silver, ["event_id"])
        quarantine = table(lake.quarantine, ["kafka_partition"])
        positions = set() if bronze is None else set(zip(bronze.column("partition").to_pylist(),
                                                         bronze.column("offset").to_pylist()))
        headers = [dict(m.headers() or []) for m in read_committed(self.s, self.s.topics.cdr_dlq.name)]
        dlq = {(h.get("source_partition"), h.get("source_offset")) for h in headers}
        scores = [orjson.loads(m.value()) for m in read_committed(self.s, self.s.topics.churn_scores.name)]
        alerts = [orjson.loads(m.value()) for m in read_committed(self.s, self.s.topics.churn_alerts.name)]
        return Accounting(
            produced=report.cdr_messages - report.failed, valid=report.good, invalid=sum(report.bad.values()),
            bronze=0 if bronze is None else bronze.num_rows, bronze_distinct=len(positions),
            silver=0 if silver is None else silver.num_rows,
            silver_distinct=0 if silver is None else len(pc.unique(silver.column("event_id"))),
            quarantined=0 if quarantine is None else quarantine.num_rows, dead_letters=len(dlq),
            scored=len(scores), scored_distinct=len({r["trigger_event_id"] for r in scores}),
            alerts=len(alerts), alerts_distinct=len({a["event_id"] for a in alerts}))


# -- the faults ---------------------------------------------------------------------------------------
def _kill_child(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``sig`` to the supervised process and everything under it (its Spark JVM), not the supervisor."""
    import psutil

    child = _child(proc)
    if child is None:
        raise RuntimeError("the supervised process is not running")
    for p in [*child.children(recursive=True), child]:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _child(proc: subprocess.Popen):
    import psutil

    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return None
    return next((c for c in children if c.name() != "sleep"), None)


def _kill_and_await_restart(proc: subprocess.Popen, port: int, timeout_s: float, what: str) -> None:
    """SIGKILL the supervised process, then wait until its supervisor has started it again and it answers
    on ``port``."""
    old = _child(proc)
    _kill_child(proc)
    _wait(lambda: _child(proc) not in (None, old) and _answers(port), timeout_s, what)


def kill_stream(chaos: Chaos) -> None:
    _kill_and_await_restart(chaos.stream, chaos.s.streaming.metrics_port, 300, "the streaming job's restart")


def kill_scorer(chaos: Chaos) -> None:
    _kill_and_await_restart(chaos.workers[0], chaos.worker_ports[0], 180, "the scorer's restart")


def freeze_scorer(chaos: Chaos) -> None:
    """SIGSTOP one worker for its session timeout + 10 s (the other takes its partitions), then SIGCONT."""
    proc = chaos.workers[0]
    _kill_child(proc, signal.SIGSTOP)
    time.sleep(chaos.s.scoring.session_timeout_s + 10)
    _kill_child(proc, signal.SIGCONT)


def _down_for(service, seconds: float, kill: bool = True) -> None:
    pid = service.pid()
    if pid is None:
        raise RuntimeError(f"{service.name} is not running")
    if kill:
        os.killpg(pid, signal.SIGKILL)
    else:
        service.stop()
    time.sleep(seconds)
    service.start(120)


def kill_redis(chaos: Chaos) -> None:
    from churn.stack.services import redis_service

    _down_for(redis_service(chaos.s), 10)


def kill_broker(chaos: Chaos) -> None:
    """SIGKILL a broker for 15 s: the single one, or the second node of three."""
    from churn.stack.services import kafka_service

    _down_for(kafka_service(chaos.s, node=1 if chaos.s.kafka.brokers >= 3 else 0), 15)


def stop_s3(chaos: Chaos) -> None:
    from churn.stack.services import s3_service

    _down_for(s3_service(chaos.s), 30, kill=False)


def faults(settings: Settings) -> dict[str, Fault]:
    """The suite's faults that apply to this stack, in the order they run."""
    broker = "one broker of three SIGKILLed 15 s" if settings.kafka.brokers >= 3 else "the broker SIGKILLed 15 s"
    out = {"broker": Fault(broker, kill_broker),
           "redis": Fault("Redis SIGKILLed 10 s", kill_redis),
           "stream": Fault("streaming job SIGKILLed", kill_stream),
           "scorer": Fault("a scorer SIGKILLed", kill_scorer),
           "freeze": Fault(f"a scorer SIGSTOPped {settings.scoring.session_timeout_s + 10:g} s", freeze_scorer)}
    if settings.s3.enabled and settings.s3.endpoint_url is None:
        out["s3"] = Fault("the S3 server stopped 30 s", stop_s3)
    out["malformed"] = Fault("a burst of 10 % malformed events", lambda _: None, malformed=True)
    return out


def run(env: dict[str, str], rate: float, chosen: list[str] | None, workdir: Path,
        log: Callable[[str], None] = print) -> list[FaultResult]:
    """The suite against the running stack that ``env`` configures: ``chosen`` faults (default: all that
    apply), in order."""
    from churn.simulator.produce import ProduceReport, StepProducer

    available = faults(settings_with_env(env))
    unknown = set(chosen or []) - set(available)
    if unknown:
        raise ValueError(f"unknown or inapplicable fault(s) {sorted(unknown)}: choose from {sorted(available)}")
    chaos = Chaos(env, rate, workdir, log)
    chaos.start()
    sender = StepProducer(chaos.s, ProduceReport(run_id="chaos"))
    results = []
    try:
        for i, key in enumerate(chosen or list(available)):
            fault = available[key]
            log(f"{fault.name} ...")
            result = chaos.phase(fault, sender, seed=100 + i)
            recovered = "not recovered" if result.recover_s is None else f"recovered in {result.recover_s:.1f} s"
            log(f"  {result.in_flight:,} in flight, {result.lost} lost, {result.duplicated} duplicated, {recovered}")
            results.append(result)
            if result.recover_s is None:
                log(f"  the pipeline did not catch up within {RECOVERY_TIMEOUT_S:g} s: the suite stops here "
                    f"(logs in {workdir})")
                break
    finally:
        chaos.stop()
    return results


# -- helpers ------------------------------------------------------------------------------------------
def _answers(port: int) -> bool:
    """Whether a job's metrics endpoint on ``port`` answers."""
    from churn.stack.services import _answers as answers

    return answers(f"http://127.0.0.1:{port}/metrics")


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)


def _end_offsets_retrying(s: Settings) -> dict[int, int]:
    from churn.transport import end_offsets

    deadline = time.monotonic() + 120
    while True:
        try:
            return end_offsets(s, s.topics.cdr.name)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _group_committed(s: Settings, topic: str) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    from churn.transport import consumer

    c = consumer(s, group_id=s.scoring.app_id)
    try:
        parts = [TopicPartition(topic, p) for p in range(s.topics.cdr.partitions)]
        return {tp.partition: max(tp.offset, 0) for tp in c.committed(parts, timeout=10)}
    finally:
        c.close()
