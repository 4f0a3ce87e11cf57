"""Exactly-once output for the scoring worker: one Kafka transaction stream per owned CDR partition.

For every ``cdr`` partition a worker owns, it holds a transactional producer
whose ``transactional.id`` is ``<app id>-<cdr topic>-<partition>``. Scores,
alerts and the consumed offsets of that partition go into the same transaction,
committed every ``commit_interval_s``: either all of a batch's outputs and its
offsets become visible, or none do and the batch is read again.

Taking a partition over (``assign``) first initialises its producer, which
fences any older producer with the same id (a killed or stalled worker) and
aborts its open transaction; then it restores the partition's state by reading
the partition of ``churn-scores`` (the state changelog, partitioned like
``cdr``) with ``read_committed``; then it reads the group's committed offset,
below which events are skipped as already scored. So a worker that is killed
and replaced, or a partition that moves between workers, neither loses nor
repeats an output.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from churn.config import Settings
from churn.contracts import parse_time
from streaming.scoring.bands import BAND_INDEX

log = logging.getLogger(__name__)

#: The longest one transactional call may take; a commit retries retriable errors for ``COMMIT_DEADLINE_S``.
CALL_TIMEOUT_S = 10.0
COMMIT_DEADLINE_S = 20.0


class TransactionsLost(RuntimeError):
    """A partition's transaction cannot be completed (fenced, fatal, or past its deadline). The worker exits;
    its replacement's ``init_transactions`` aborts what was open and resumes from the last commit."""


@dataclass
class CustomerState:
    """What the alert rule needs to remember about a customer (restored from their latest score)."""

    band: int
    alert_band: int | None = None
    alerted_at: float | None = None
    decided_at: float | None = None  # when the customer was last scored (wall clock): rescoring counts from it

    @classmethod
    def from_score(cls, record: dict) -> "CustomerState":
        alert_band = record.get("alert_band")
        alerted_at = record.get("alerted_at")
        return cls(band=BAND_INDEX[record["band"]],
                   alert_band=None if alert_band is None else BAND_INDEX[alert_band],
                   alerted_at=None if alerted_at is None else parse_time(alerted_at),
                   decided_at=parse_time(record["scored_at"]))


class PartitionTransactions:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.app_id = settings.scoring.app_id
        self.cdr_topic = settings.topics.cdr.name
        self.scores_topic = settings.topics.churn_scores.name
        self.producers: dict[int, Producer] = {}
        self.next_offset: dict[int, int] = {}  # the first offset not yet in a committed or open transaction
        self.pending: dict[int, int] = {}  # partitions with uncommitted work -> messages in the open transaction
        self.opened_at: dict[int, float] = {}
        self.commits = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.topics.cdr.partitions), thread_name_prefix="txn")
        base = {"bootstrap.servers": settings.kafka.bootstrap_servers}
        self._group = Consumer({**base, "group.id": self.app_id, "enable.auto.commit": False})
        self._group_metadata = self._group.consumer_group_metadata()

    # -- ownership -------------------------------------------------------------------------
    def assign(self, partitions: set[int]) -> dict[int, dict[str, CustomerState]]:
        """Take ``partitions`` over (those not held yet); returns each new partition's restored state."""
        new = sorted(set(partitions) - set(self.producers))
        if not new:
            return {}
        producers = dict(zip(new, self._pool.map(self._start_producer, new)))
        self.producers.update(producers)
        committed = self._group.committed([TopicPartition(self.cdr_topic, p) for p in new], timeout=30)
        for tp in committed:
            self.next_offset[tp.partition] = tp.offset if tp.offset >= 0 else -1  # -1: from wherever Faust starts
        states = dict(zip(new, self._pool.map(self._restore, new)))
        log.info("took over cdr partitions %s (next offsets %s)", new, {p: self.next_offset[p] for p in new})
        return states

    def _start_producer(self, partition: int) -> Producer:
        producer = Producer({
            "bootstrap.servers": self.settings.kafka.bootstrap_servers,
            "transactional.id": f"{self.app_id}-{self.cdr_topic}-{partition}",
            "linger.ms": 2,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": 60_000,
        })
        producer.init_transactions(30)  # fences an older producer of this partition, aborts its transaction
        producer.begin_transaction()
        self.opened_at[partition] = time.monotonic()
        return producer

    def _restore(self, partition: int) -> dict[str, CustomerState]:
        """The partition's customer states from the committed records of its ``churn-scores`` partition."""
        consumer = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                             "group.id": f"{self.app_id}-restore-{uuid.uuid4().hex[:8]}",
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "fetch.max.bytes": 52_428_800})
        try:
            tp = TopicPartition(self.scores_topic, partition, OFFSET_BEGINNING)
            low, end = consumer.get_watermark_offsets(tp, timeout=30, cached=False)
            states: dict[str, CustomerState] = {}
            if end <= low:
                return states
            consumer.assign([tp])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for msg in consumer.consume(10_000, timeout=0.5):
                    if msg.error() is None and msg.value() is not None:
                        states[msg.key().decode()] = CustomerState.from_score(orjson.loads(msg.value()))
                position = consumer.position([TopicPartition(self.scores_topic, partition)])[0].offset
                if position >= end:  # in order of the last decision, as the worker keeps them
                    return dict(sorted(states.items(), key=lambda item: item[1].decided_at or 0.0))
            raise TimeoutError(f"restoring {self.scores_topic}[{partition}] did not reach offset {end}")
        finally:
            consumer.close()

    def read_cdrs(self, partition: int, start: int, end: int, batch: int = 5000):
        """The records of ``cdr[partition]`` at offsets ``start`` to ``end`` (exclusive), in lists of
        ``(offset, produce time s, key, value)``."""
        if end <= start:
            return
        consumer = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                             "group.id": f"{self.app_id}-reload-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                             "fetch.max.bytes": 52_428_800})
        try:
            consumer.assign([TopicPartition(self.cdr_topic, partition, start)])
            deadline, last = time.monotonic() + 300, start - 1
            while last < end - 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {self.cdr_topic}[{partition}] did not reach offset {end}")
                # a short wait per call: consume() waits its whole timeout unless ``batch`` records arrive
                rows = [(m.offset(), m.timestamp()[1] / 1000, m.key(), m.value())
                        for m in consumer.consume(batch, timeout=0.05) if m.error() is None]
                rows = [r for r in rows if r[0] < end]
                if rows:
                    last = rows[-1][0]
                    yield rows
                elif consumer.position([TopicPartition(self.cdr_topic, partition)])[0].offset >= end:
                    return  # the rest were transaction markers
        finally:
            consumer.close()

    def revoke(self, partitions: set[int]) -> None:
        """Give partitions up: commit what was scored for them, then drop their producers."""
        mine = sorted(set(partitions) & set(self.producers))
        if not mine:
            return
        self.commit(mine)
        for p in mine:
            self.producers.pop(p).flush(10)
            self.next_offset.pop(p, None)
            self.opened_at.pop(p, None)
        log.info("gave up cdr partitions %s", mine)

    def owns(self, partition: int) -> bool:
        return partition in self.producers

    # -- output ----------------------------------------------------------------------------
    def accept(self, partition: int, offset: int) -> bool:
        """Whether the event at ``offset`` is new for this partition's transaction stream (and mark it taken)."""
        expected = self.next_offset.get(partition)
        if expected is None or (expected >= 0 and offset < expected):
            return False  # not ours, or already scored in a committed/open transaction
        if expected >= 0 and offset > expected:
            log.warning("cdr[%d]: offsets %d..%d were never seen (deleted by retention?)", partition, expected, offset - 1)
        self.next_offset[partition] = offset + 1
        self.pending[partition] = self.pending.get(partition, 0)
        return True

    def produce(self, partition: int, topic: str, key: bytes, value: bytes, to_partition: int | None = None) -> None:
        producer = self.producers[partition]
        if to_partition is None:
            producer.produce(topic, value=value, key=key)
        else:
            producer.produce(topic, value=value, key=key, partition=to_partition)
        self.pending[partition] = self.pending.get(partition, 0) + 1

    def maybe_commit(self) -> int:
        """Commit the partitions whose transaction has been open for ``commit_interval_s``; returns how many."""
        now = time.monotonic()
        due = [p for p in self.pending if now - self.opened_at.get(p, now) >= self.settings.scoring.commit_interval_s]
        return self.commit(due) if due else 0

    def commit(self, partitions=None) -> int:
        due = [p for p in (self.pending if partitions is None else partitions) if p in self.pending]
        for p in due:
            self.producers[p].poll(0)
        list(self._pool.map(self._commit_one, due))
        for p in due:
            del self.pending[p]
        self.commits += len(due)
        return len(due)

    def _commit_one(self, partition: int) -> None:
        producer = self.producers[partition]
        offsets = [TopicPartition(self.cdr_topic, partition, self.next_offset[partition])]
        deadline = time.monotonic() + COMMIT_DEADLINE_S
        self._call(partition, lambda: producer.send_offsets_to_transaction(offsets, self._group_metadata,
                                                                            CALL_TIMEOUT_S), deadline)
        self._call(partition, lambda: producer.commit_transaction(CALL_TIMEOUT_S), deadline)
        producer.begin_transaction()
        self.opened_at[partition] = time.monotonic()

    def _call(self, partition: int, call, deadline: float):
        """One transactional call, retried while its error is retriable and the deadline allows (a timed-out
        commit resumes where it was when called again, e.g. while the broker restarts). An abortable error
        aborts the transaction (its outputs are never visible; the batch is read again by the next owner);
        that or anything else raises ``TransactionsLost``."""
        while True:
            try:
                return call()
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and err.retriable() and not err.txn_requires_abort() \
                        and time.monotonic() < deadline:
                    log.warning("cdr[%d]: transaction call failed, retrying: %s", partition, err)
                    time.sleep(0.5)
                    continue
                if err is not None and err.txn_requires_abort():
                    try:
                        self.producers[partition].abort_transaction(CALL_TIMEOUT_S)
                    except KafkaException:
                        log.exception("cdr[%d]: aborting the transaction failed", partition)
                raise TransactionsLost(f"cdr[{partition}]: {err or exc}") from exc

    def close(self) -> None:
        """Commit everything scored and release the producers (graceful stop)."""
        try:
            self.revoke(set(self.producers))
        finally:
            self._group.close()
            self._pool.shutdown(wait=True)
