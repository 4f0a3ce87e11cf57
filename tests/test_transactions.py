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
