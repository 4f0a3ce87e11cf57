"""Exactly-once output for the scoring worker: one Kafka transaction per commit interval, fenced by the
consumer group's generation (KIP-447, as Kafka Streams' exactly-once v2).

A worker holds one transactional producer. Scores, alerts and the consumed ``cdr`` offsets of every
partition it owns go into the same transaction, committed every ``commit_interval_s``: either all of an
interval's outputs and its offsets become visible, or none do and those CDRs are read again.

Scoring need not wait for a commit. ``take_due`` closes the open transaction on the event loop (its offsets
are those of the CDRs accepted so far) and ``complete`` commits it on the commit thread; CDRs accepted
meanwhile belong to the next transaction, and their outputs are held (the producer takes no records
while it commits) until ``complete`` begins the next transaction and hands them over.

Zombie fencing comes from the group, not from the transactional id: the offsets are sent with the
consumer group's metadata (generation and member id of the Faust consumer that owns the partitions),
so the broker refuses the commit of a worker that the group has already replaced, and its transaction
is aborted. A worker that takes partitions over reads the group's committed offsets with
``require_stable`` (librdkafka's ``committed`` under ``read_committed``): it waits for a transaction
still open on them to end. Its state is restored from the partition of ``churn-scores`` (the state
changelog, partitioned like ``cdr``) read with ``read_committed``.

The transactional id is ``<app id>-<host>-<slot>``; the slot is the lowest number whose lock file
(``<run dir>/faust/<app id>/txn-slot-<n>.lock``) this process could lock. A worker restarted on the same
host after a crash gets its slot back, and ``init_transactions`` aborts what its previous life left open
at once instead of after ``transaction.timeout.ms``.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from churn.config import Settings
from churn.contracts import parse_time
from churn.security import librdkafka_config
from streaming.scoring.bands import BAND_INDEX

log = logging.getLogger(__name__)

#: The longest one transactional call may take; a commit retries retriable errors for ``COMMIT_DEADLINE_S``.
CALL_TIMEOUT_S = 10.0
COMMIT_DEADLINE_S = 20.0


class TransactionsLost(RuntimeError):
    """The open transaction cannot be completed (fenced, fatal, past its deadline, or the worker is no
    longer a member of the group). The worker exits; its replacement resumes from the last commit."""


def group_metadata(group_id: str, generation: int, member_id: str, group_instance_id: str | None = None) -> bytes:
    """The consumer group metadata that ``send_offsets_to_transaction`` takes, for a member of a group
    that librdkafka does not manage (Faust's consumer is aiokafka's): librdkafka's serialised form.

    >>> group_metadata("g1", -1, "")  # what an unjoined confluent_kafka Consumer returns
    b'CGMDv2:\\xff\\xff\\xff\\xffg1\\x00\\x00\\x01'
    """
    out = b"CGMDv2:" + struct.pack("=i", generation) + group_id.encode() + b"\0" + member_id.encode() + b"\0"
    if group_instance_id is None:
        return out + b"\x01"
    return out + b"\x00" + group_instance_id.encode() + b"\0"


def _lock_slot(directory: Path) -> tuple[int, object]:
    """The lowest slot number whose lock file this process could lock, and the open file holding it."""
    directory.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        handle = open(directory / f"txn-slot-{slot}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, handle
        except OSError:
            handle.close()
            slot += 1


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


class WorkerTransactions:
    """The worker's transaction stream. ``membership`` returns the group's current metadata (see
    ``group_metadata``), read when offsets are committed."""

    def __init__(self, settings: Settings, membership: Callable[[], bytes]):
        self.settings = settings
        self.app_id = settings.scoring.app_id
        self.cdr_topic = settings.topics.cdr.name
        self.scores_topic = settings.topics.churn_scores.name
        self.membership = membership
        self.owned: set[int] = set()
        self.next_offset: dict[int, int] = {}  # the first offset not yet in a committed or open transaction
        self.pending: dict[int, int] = {}  # partitions with work in the open transaction -> messages in it
        self.opened_at: float | None = None  # None: no transaction open
        self.commits = 0
        # The offsets of the transaction being committed (None: no commit in flight), and the outputs of the
        # open transaction held until it ends; shared with the commit thread under ``_lock``.
        self._in_flight: list[TopicPartition] | None = None
        self._held: list[tuple] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.topics.cdr.partitions), thread_name_prefix="restore")
        base = librdkafka_config(settings, "scorer")
        self._group = Consumer({**base, "group.id": self.app_id, "enable.auto.commit": False})
        slot, self._slot_lock = _lock_slot(settings.run_dir / "faust" / self.app_id)
        self.transactional_id = f"{self.app_id}-{socket.gethostname()}-{slot}"
        self.producer = Producer({
            **base,
            "transactional.id": self.transactional_id,
            "linger.ms": 2,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": int(settings.scoring.transaction_timeout_s * 1000),
        })
        self.producer.init_transactions(30)  # aborts what an earlier life of this slot left open
        log.info("transactional id %s", self.transactional_id)

    # -- ownership -------------------------------------------------------------------------
    def assign(self, partitions: set[int]) -> dict[int, dict[str, CustomerState]]:
        """Take ``partitions`` over (those not held yet); returns each new partition's restored state."""
        new = sorted(set(partitions) - self.owned)
        if not new:
            return {}
        committed = self._group.committed([TopicPartition(self.cdr_topic, p) for p in new], timeout=90)
        for tp in committed:
            self.next_offset[tp.partition] = tp.offset if tp.offset >= 0 else -1  # -1: from wherever Faust starts
        states = dict(zip(new, self._pool.map(self._restore, new)))
        self.owned.update(new)
        log.info("took over cdr partitions %s (next offsets %s)", new, {p: self.next_offset[p] for p in new})
        return states

    def end_offsets(self, timeout_s: float = 2.0) -> dict[int, int]:
        """The broker's end offset of each owned ``cdr`` partition, asked now (not the consumer's last view)."""
        return {p: self._group.get_watermark_offsets(TopicPartition(self.cdr_topic, p), timeout=timeout_s,
                                                     cached=False)[1] for p in sorted(self.owned)}

    def _restore(self, partition: int) -> dict[str, CustomerState]:
        """The partition's customer states from the committed records of its ``churn-scores`` partition."""
        consumer = Consumer({**librdkafka_config(self.settings, "scorer"),
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
        consumer = Consumer({**librdkafka_config(self.settings, "scorer"),
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
        """Give partitions up: commit what was scored (for every partition: there is one transaction),
        then forget them."""
        mine = sorted(set(partitions) & self.owned)
        if not mine:
            return
        self.commit()
        for p in mine:
            self.owned.discard(p)
            self.next_offset.pop(p, None)
        log.info("gave up cdr partitions %s", mine)

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    # -- output ----------------------------------------------------------------------------
    def _open(self) -> None:
        """Open a transaction if none is (``_lock`` held). While a commit is in flight the producer's own
        transaction begins when that commit ends (``complete``)."""
        if self.opened_at is None:
            self.opened_at = time.monotonic()
            if self._in_flight is None:
                self.producer.begin_transaction()  # local to the producer: no broker round trip

    def accept(self, partition: int, offset: int) -> bool:
        """Whether the event at ``offset`` is new for this partition (and mark it taken in the open transaction)."""
        expected = self.next_offset.get(partition)
        if expected is None or (expected >= 0 and offset < expected):
            return False  # not ours, or already scored in a committed/open transaction
        if expected >= 0 and offset > expected:
            log.warning("cdr[%d]: offsets %d..%d were never seen (deleted by retention?)", partition, expected, offset - 1)
        with self._lock:
            self._open()
            self.next_offset[partition] = offset + 1
            self.pending[partition] = self.pending.get(partition, 0)
        return True

    def produce(self, partition: int, topic: str, key: bytes, value: bytes, to_partition: int | None = None) -> None:
        """One output of a decision on ``partition``'s CDRs, into the open transaction."""
        with self._lock:
            self._open()
            self.pending[partition] = self.pending.get(partition, 0) + 1
            if self._in_flight is not None:
                self._held.append((topic, key, value, to_partition))
            else:
                self._send(topic, key, value, to_partition)

    def _send(self, topic: str, key: bytes, value: bytes, to_partition: int | None) -> None:
        if to_partition is None:
            self.producer.produce(topic, value=value, key=key)
        else:
            self.producer.produce(topic, value=value, key=key, partition=to_partition)

    def take_due(self, force: bool = False) -> list[TopicPartition] | None:
        """Close the open transaction if it has been open for ``commit_interval_s`` (or at all, with
        ``force``) and no commit is in flight: the offsets to commit with it, for ``complete``; None if
        there is nothing to commit yet. Call it from the thread that accepts and produces."""
        with self._lock:
            if self._in_flight is not None or self.opened_at is None:
                return None
            if not force and time.monotonic() - self.opened_at < self.settings.scoring.commit_interval_s:
                return None
            offsets = [TopicPartition(self.cdr_topic, p, self.next_offset[p]) for p in sorted(self.pending)
                       if self.next_offset.get(p, -1) >= 0]
            self._in_flight = offsets
            self.pending = {}
            self.opened_at = None
            return offsets

    def complete(self, offsets: list[TopicPartition]) -> None:
        """Commit the transaction ``take_due`` closed, with ``offsets``; then begin the next one if work
        came meanwhile, and hand it the outputs held. Raises ``TransactionsLost`` if it cannot commit."""
        deadline = time.monotonic() + COMMIT_DEADLINE_S
        if offsets:
            try:
                membership = self.membership()
            except TransactionsLost:  # replaced: abort now, so that the new owner does not wait for it
                self._abort()
                raise
            self._call(lambda: self.producer.send_offsets_to_transaction(offsets, membership, CALL_TIMEOUT_S),
                       deadline)
        self._call(lambda: self.producer.commit_transaction(CALL_TIMEOUT_S), deadline)
        with self._lock:
            self._in_flight = None
            self.commits += 1
            if self.opened_at is not None:
                self.producer.begin_transaction()
                for output in self._held:
                    self._send(*output)
            self._held = []

    def commit(self) -> int:
        """Commit the open transaction now (outputs and the offsets of every partition with work in it);
        returns 1 if one was open, else 0. No commit may be in flight."""
        if self._in_flight is not None:
            raise RuntimeError("a commit is in flight: wait for it before committing")
        offsets = self.take_due(force=True)
        if offsets is None:
            return 0
        self.complete(offsets)
        return 1

    def _call(self, call, deadline: float):
        """One transactional call, retried while its error is retriable and the deadline allows (a timed-out
        commit resumes where it was when called again, e.g. while the broker restarts). An abortable error
        (the group has a newer generation: this worker was replaced) aborts the transaction: its outputs are
        never visible, and its CDRs are read again by the partitions' owner. That or anything else raises
        ``TransactionsLost``."""
        while True:
            try:
                return call()
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and err.retriable() and not err.txn_requires_abort() \
                        and time.monotonic() < deadline:
                    log.warning("transaction call failed, retrying: %s", err)
                    time.sleep(0.5)
                    continue
                if err is not None and err.txn_requires_abort():
                    self._abort()
                raise TransactionsLost(str(err or exc)) from exc

    def _abort(self) -> None:
        """Abort the open transaction (best effort: if this fails, the broker aborts it after
        ``transaction.timeout.ms``, or at once when this slot's next worker initialises)."""
        try:
            self.producer.abort_transaction(CALL_TIMEOUT_S)
        except KafkaException:
            log.exception("aborting the transaction failed")

    def close(self) -> None:
        """Commit everything scored and release the producer (graceful stop)."""
        try:
            self.revoke(set(self.owned))
            self.commit()
            self.producer.flush(10)
        finally:
            self._group.close()
            self._pool.shutdown(wait=True)
            self._slot_lock.close()
