"""Send the simulator's steps to Kafka: as fast as possible (backfill) or at a held rate (live).

CDRs go to the ``cdr`` topic and labels to ``churn-labels``, keyed by customer
id. The Kafka record timestamp is set by the client at produce time
(CreateTime): that is the produce time end-to-end latency is measured from.
Every message is accounted for: the report counts what was sent by kind and
what the broker failed to take.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from confluent_kafka import KafkaError, Producer
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from churn.config import Settings
from churn.simulator.simulator import Simulator, Step
from churn.stop_request import StopRequest
from churn.transport import producer as make_producer

EVENTS = PromCounter(
    "churn_simulator_events", "Messages produced by the simulator", ["topic", "kind"]
)
TARGET_RATE = Gauge("churn_simulator_target_rate", "Live mode: events/s asked for")
ACHIEVED_RATE = Gauge("churn_simulator_achieved_rate", "Events/s produced over the last few seconds")
BEHIND = Gauge("churn_simulator_behind_seconds", "Live mode: how far production lags its schedule")


@dataclass
class ProduceReport:
    run_id: str
    good: int = 0
    duplicates: int = 0
    bad: Counter = field(default_factory=Counter)
    labels: int = 0
    churned_labels: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    target_rate: float | None = None
    fell_behind: bool = False
    first_error: str | None = None
    phases: list[dict] = field(default_factory=list)  # one entry per backfill or live phase

    @property
    def cdr_messages(self) -> int:
        return self.good + self.duplicates + sum(self.bad.values())

    @property
    def rate(self) -> float:
        return self.cdr_messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "cdr_messages": self.cdr_messages,
            "good": self.good,
            "duplicates": self.duplicates,
            "bad": dict(self.bad),
            "labels": self.labels,
            "churned_labels": self.churned_labels,
            "failed_deliveries": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.rate, 1),
            "target_rate_per_s": self.target_rate,
            "fell_behind": self.fell_behind,
            "phases": self.phases,
        }

    def _phase(self, mode: str, messages_before: int, elapsed_s: float) -> None:
        n = self.cdr_messages - messages_before
        self.elapsed_s += elapsed_s
        self.phases.append({"mode": mode, "cdr_messages": n, "elapsed_s": round(elapsed_s, 3),
                            "rate_per_s": round(n / elapsed_s, 1) if elapsed_s > 0 else 0.0})


class StepProducer:
    """Produces steps; counts delivery failures (librdkafka reports only errors)."""

    def __init__(self, settings: Settings, report: ProduceReport, producer: Producer | None = None,
                 **producer_config):
        """``producer_config``: librdkafka settings that replace the defaults of ``churn.transport``,
        e.g. ``**{"linger.ms": 5}`` for a real-time feed."""
        self.report = report
        self.cdr_topic = settings.topics.cdr.name
        self.label_topic = settings.topics.churn_labels.name
        self.producer = producer or make_producer(
            settings, **{"delivery.report.only.error": True, "on_delivery": self._on_delivery, **producer_config}
        )

    def _on_delivery(self, err: KafkaError | None, msg) -> None:
        if err is not None:
            self.report.failed += 1
            self.report.first_error = self.report.first_error or str(err)

    def send(self, step: Step) -> None:
        produce, topic = self.producer.produce, self.cdr_topic
        for value, key in zip(step.values, step.keys):
            try:
                produce(topic, value, key)
            except BufferError:  # local queue full: let librdkafka drain it, then retry once
                self.producer.poll(0.5)
                produce(topic, value, key)
        for key, value in step.labels:
            self.producer.produce(self.label_topic, value, key)
        self.producer.poll(0)
        r = self.report
        r.good += len(step.good)
        r.duplicates += step.duplicates
        r.bad.update(step.bad)
        r.labels += len(step.labels)
        r.churned_labels += step.churned_labels
        EVENTS.labels(topic, "good").inc(len(step.good))
        EVENTS.labels(topic, "duplicate").inc(step.duplicates)
        for kind, n in step.bad.items():
            EVENTS.labels(topic, f"bad_{kind}").inc(n)
        EVENTS.labels(self.label_topic, "label").inc(len(step.labels))

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining:
            self.report.failed += remaining
            self.report.first_error = self.report.first_error or f"{remaining} messages undelivered after flush"


def run_backfill(
    settings: Settings, sim: Simulator, until_s: float | None = None,
    on_step: Callable[[Step, ProduceReport], None] | None = None, sender: StepProducer | None = None,
) -> ProduceReport:
    """Produce simulated history up to ``until_s`` (default: the simulator's end) as fast as possible."""
    report = sender.report if sender else ProduceReport(run_id=sim.run_id.decode())
    sender = sender or StepProducer(settings, report)
    started, before = time.perf_counter(), report.cdr_messages
    for step in sim.backfill_steps(until_s=until_s):
        sender.send(step)
        if on_step:
            on_step(step, report)
    sender.flush()
    report._phase("backfill", before, time.perf_counter() - started)
    return report


def run_live(
    settings: Settings, sim: Simulator, rate: float, duration_s: float | None = None,
    stop: threading.Event | StopRequest | None = None, tick_s: float = 0.1,
    on_tick: Callable[[ProduceReport], None] | None = None,
    warn: Callable[[str], None] = print, sender: StepProducer | None = None,
) -> ProduceReport:
    """Produce ``rate`` events/s stamped with wall time until ``duration_s``, ``stop`` or the end.

    Holds the rate on schedule; if it falls more than a second behind it says so
    (``warn``), reports ``fell_behind`` and keeps going as fast as it can.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    report = sender.report if sender else ProduceReport(run_id=sim.run_id.decode())
    report.target_rate = rate
    sender = sender or StepProducer(settings, report)
    stop = stop or threading.Event()
    TARGET_RATE.set(rate)
    start = time.time()
    produced_before = report.cdr_messages
    last_warn = float("-inf")
    window_t = start
    window_n = report.cdr_messages
    i = 0
    while not stop.is_set() and not sim.finished:
        t0, t1 = start + i * tick_s, start + (i + 1) * tick_s
        if duration_s is not None and (t1 > start + duration_s + 1e-9 or time.time() >= start + duration_s):
            break
        n = int(rate * tick_s * (i + 1)) - int(rate * tick_s * i)
        now = time.time()
        if now < t1:
            stop.wait(t1 - now)
            if stop.is_set():
                break
        sender.send(sim.live_step(i, n, t0, t1))
        i += 1
        now = time.time()
        behind = now - t1
        BEHIND.set(max(behind, 0.0))
        if now - window_t >= 2.0:
            ACHIEVED_RATE.set((report.cdr_messages - window_n) / (now - window_t))
            window_t, window_n = now, report.cdr_messages
        if behind > 1.0:
            report.fell_behind = True
            if now - last_warn > 5.0:
                achieved = (report.cdr_messages - produced_before) / (now - start)
                warn(f"cannot hold {rate:g} events/s: producing {achieved:,.0f}/s, {behind:.1f} s behind schedule")
                last_warn = now
        if on_tick:
            on_tick(report)
    if sim.finished:
        warn("the simulation reached its horizon: every customer has a label and churners are gone")
    sender.flush()
    report._phase("live", produced_before, time.time() - start)
    return report
