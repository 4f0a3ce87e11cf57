"""The scoring worker's transactions on the real broker: the group metadata it builds for Faust's
consumer is librdkafka's own, and a member the group has replaced cannot commit (KIP-447 fencing)."""

from __future__ import annotations

import struct
import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from churn.transport import admin, consumer
from streaming.scoring.transactions import _lock_slot, group_metadata


def _generation(metadata: bytes) -> int:
    return struct.unpack("=i", metadata[7:11])[0]


def _joined(consumers, topic: str, timeout_s: float = 60.0) -> None:
    """Poll ``consumers`` until each holds an assignment of ``topic`` in the group's latest generation."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for c in consumers:
            c.poll(0.1)
        gens = {_generation(c.consumer_group_metadata()) for c in consumers}
        if len(gens) == 1 and min(gens) > 0 and sum(len(c.assignment()) for c in consumers) == 2:
            return
    raise TimeoutError("the group did not settle")


def test_a_member_replaced_by_a_rebalance_cannot_commit_its_transaction(live_stack):
    s = live_stack
    topic, group = f"txn-{uuid.uuid4().hex[:6]}", f"txn-group-{uuid.uuid4().hex[:6]}"
    client = admin(s)
    for fut in client.create_topics([NewTopic(topic, 2, 1)]).values():
        fut.result(30)
    first = consumer(s, group_id=group, **{"session.timeout.ms": 6000})
    first.subscribe([topic])
    deadline = time.time() + 60
    while len(first.assignment()) < 2:
        first.poll(0.2)
        assert time.time() < deadline, "no assignment"
    real = first.consumer_group_metadata()
    generation = _generation(real)
    assert generation >= 1
    assert group_metadata(group, generation, first.memberid()) == real  # librdkafka's own bytes

    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers,
                         "transactional.id": f"txn-test-{uuid.uuid4().hex[:6]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"scored", partition=0)
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], group_metadata(group, generation, first.memberid()), 10)
    producer.commit_transaction(10)
    assert first.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 5

    second = consumer(s, group_id=group, **{"session.timeout.ms": 6000})
    second.subscribe([topic])
    _joined([first, second], topic)
    newer = _generation(first.consumer_group_metadata())
    assert newer > generation

    # the old generation's commit: refused, and the transaction must be aborted
    producer.begin_transaction()
    producer.produce(topic, b"zombie", partition=0)
    with pytest.raises(KafkaException) as refused:
        producer.send_offsets_to_transaction([TopicPartition(topic, 0, 9)],
                                             group_metadata(group, generation, first.memberid()), 10)
    assert refused.value.args[0].txn_requires_abort(), refused.value
    producer.abort_transaction(10)
    assert first.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 5

    # the current generation commits
    producer.begin_transaction()
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, 7)],
                                         group_metadata(group, newer, first.memberid()), 10)
    producer.commit_transaction(10)
    assert first.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 7
    for c in (first, second):
        c.close()


def test_a_restarted_worker_gets_its_slot_back(tmp_path):
    slot0, lock0 = _lock_slot(tmp_path)
    slot1, lock1 = _lock_slot(tmp_path)
    assert (slot0, slot1) == (0, 1)  # two workers on one host: two transactional ids
    lock0.close()  # the first one dies
    again, lock = _lock_slot(tmp_path)
    assert again == 0  # its replacement takes its id, and init_transactions aborts what it left open
    lock.close()
    lock1.close()


class _StrictProducer:
    """librdkafka's transactional producer states, enforced: records and offsets only inside a transaction
    that has begun, and nothing while a commit is under way. Records each transaction's contents."""

    def __init__(self, config):
        self.open = False
        self.committed: list[dict] = []  # per transaction: {"records": [...], "offsets": {partition: offset}}
        self._current = None

    def init_transactions(self, timeout):
        pass

    def begin_transaction(self):
        assert not self.open, "begin_transaction inside a transaction"
        self.open, self._current = True, {"records": [], "offsets": {}}

    def produce(self, topic, value=None, key=None, partition=None):
        assert self.open, "produce outside a transaction (librdkafka: _STATE)"
        self._current["records"].append(value)

    def send_offsets_to_transaction(self, offsets, metadata, timeout):
        assert self.open
        self._current["offsets"].update({tp.partition: tp.offset for tp in offsets})

    def commit_transaction(self, timeout):
        assert self.open
        self.committed.append(self._current)
        self.open, self._current = False, None


def test_outputs_scored_while_a_commit_is_in_flight_go_into_the_next_transaction(tmp_path, monkeypatch):
    import streaming.scoring.transactions as transactions
    from churn.config import Settings

    class _Group:
        def __init__(self, config):
            pass

        def committed(self, tps, timeout):
            return [TopicPartition(tp.topic, tp.partition, 100) for tp in tps]

    monkeypatch.setattr(transactions, "Producer", _StrictProducer)
    monkeypatch.setattr(transactions, "Consumer", _Group)
    monkeypatch.setattr(transactions.WorkerTransactions, "_restore", lambda self, p: {})
    settings = Settings(run_dir=tmp_path)
    txn = transactions.WorkerTransactions(settings, membership=lambda: b"member")
    txn.assign({0, 1})
    scores = settings.topics.churn_scores.name

    assert txn.accept(0, 100) and txn.accept(1, 100)
    txn.produce(0, scores, b"c1", b"score-0-100")
    txn.produce(1, scores, b"c2", b"score-1-100")
    assert txn.take_due() is None  # open for less than the commit interval
    in_flight = txn.take_due(force=True)  # the event loop closes the transaction...
    assert {tp.partition: tp.offset for tp in in_flight} == {0: 101, 1: 101}

    # ...and scoring goes on before the commit thread has committed it
    assert txn.accept(0, 101) and not txn.accept(0, 100)
    txn.produce(0, scores, b"c1", b"score-0-101")
    assert txn.take_due(force=True) is None  # one commit at a time
    with pytest.raises(RuntimeError):
        txn.commit()

    txn.complete(in_flight)  # on the commit thread: the first transaction, then the held output in the next
    first = txn.producer.committed[0]
    assert first == {"records": [b"score-0-100", b"score-1-100"], "offsets": {0: 101, 1: 101}}
    assert txn.producer.open and txn.producer._current["records"] == [b"score-0-101"]

    assert txn.commit() == 1
    assert txn.producer.committed[1] == {"records": [b"score-0-101"], "offsets": {0: 102}}
    assert txn.commit() == 0 and not txn.producer.open


def test_read_committed_reads_what_is_committed_when_called_and_stops_at_its_end(live_stack):
    """``churn.transport.read_committed`` leaves aborted records and those of a transaction still open out, and
    stops once every partition's position is at its last stable offset (past the transaction markers), not
    ``idle_s`` after the last record."""
    from churn.transport import read_committed

    s = live_stack
    topic = f"read-{uuid.uuid4().hex[:6]}"
    client = admin(s)  # kept: the futures fail if the client is collected first
    for fut in client.create_topics([NewTopic(topic, 3, 1)]).values():
        fut.result(30)
    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers,
                         "transactional.id": f"read-test-{uuid.uuid4().hex[:6]}"})
    producer.init_transactions(30)
    for value, commit in ((b"kept-1", True), (b"aborted", False), (b"kept-2", True)):
        producer.begin_transaction()
        producer.produce(topic, value, partition=0)
        producer.produce(topic, value, partition=1)  # partition 2 stays empty
        if commit:
            producer.commit_transaction(10)
        else:
            producer.abort_transaction(10)
    committed = [b"kept-1", b"kept-1", b"kept-2", b"kept-2"]

    def read() -> list[bytes]:
        started = time.monotonic()
        values = sorted(m.value() for m in read_committed(s, topic, idle_s=30.0))
        took = time.monotonic() - started
        assert took < 15.0, f"read until idle ({took:.1f} s), not to the end"
        return values

    assert read() == committed
    producer.begin_transaction()
    producer.produce(topic, b"open", partition=0)
    producer.flush(10)
    assert read() == committed  # the open transaction's record is not committed yet
    producer.commit_transaction(10)
    assert read() == sorted(committed + [b"open"])
