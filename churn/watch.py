"""A live view of what flows through the topics: messages, rates, and the newest event of each.

Rates come from the topics' end offsets (so the view sees every producer, ours
or a user's kcat); the newest message of each topic is read by a consumer that
is assigned to the tail of every partition and never commits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, TopicPartition
from rich.table import Table

from churn.config import Settings
from churn.transport import consumer


@dataclass
class TopicFlow:
    topic: str
    partitions: int
    messages: int  # end offsets summed (retention aside: the topic's total)
    rate: float  # messages/s since the previous sample
    latest: str  # newest value seen, shortened


class FlowWatcher:
    def __init__(self, settings: Settings, topics: list[str] | None = None):
        self.topics = topics or [t.name for t in settings.topics.all()]
        self._consumer = consumer(settings, group_id="churn-watch", **{"enable.partition.eof": False})
        md = self._consumer.list_topics(timeout=10)
        self._parts = {t: sorted(md.topics[t].partitions) for t in self.topics if t in md.topics}
        self._consumer.assign(
            [TopicPartition(t, p, OFFSET_END) for t, ps in self._parts.items() for p in ps]
        )
        self._last: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, str] = {}

    def end_offsets(self) -> dict[str, int]:
        totals = {}
        for topic, parts in self._parts.items():
            totals[topic] = sum(
                self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts
            )
        return totals

    def sample(self) -> list[TopicFlow]:
        for msg in self._consumer.consume(num_messages=10_000, timeout=0.05):
            if msg.error() is None and msg.value() is not None:
                self._latest[msg.topic()] = msg.value()[:110].decode(errors="replace")
        now = time.monotonic()
        flows = []
        for topic, total in self.end_offsets().items():
            t_prev, n_prev = self._last.get(topic, (now, total))
            rate = (total - n_prev) / (now - t_prev) if now > t_prev else 0.0
            self._last[topic] = (now, total)
            flows.append(TopicFlow(topic, len(self._parts[topic]), total, rate, self._latest.get(topic, "")))
        return flows

    def close(self) -> None:
        self._consumer.close()


def render(flows: list[TopicFlow], title: str = "What flows") -> Table:
    table = Table(title=title, expand=True)
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("messages", justify="right")
    table.add_column("rate /s", justify="right")
    table.add_column("newest message", overflow="ellipsis", no_wrap=True)
    for f in flows:
        table.add_row(f.topic, str(f.partitions), f"{f.messages:,}", f"{f.rate:,.0f}", f.latest)
    return table


def render_line(flows: list[TopicFlow]) -> str:
    """One line per sample, for logs and non-interactive terminals."""
    return "  ".join(f"{f.topic}={f.messages:,} (+{f.rate:,.0f}/s)" for f in flows)
