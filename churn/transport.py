"""A thin layer over confluent-kafka: clients configured from the settings, and the topics.

Every stage gets its producer, consumer and admin client here, so client
settings (idempotence, batching, compression) are decided in one place.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from churn.config import Settings
from churn.security import librdkafka_config, principal

#: Throughput-oriented, still safe: idempotent (no duplicates on retry), acks=all.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "sticky.partitioning.linger.ms": 0,
    # Java's partitioner (murmur2), not librdkafka's default (crc32): a customer's events land on
    # the same partition whichever client produced them, as long as it uses the Java default.
    "partitioner": "murmur2_random",
}


def producer(settings: Settings, role: str = "producer", **overrides: Any) -> Producer:
    """A producer authenticated as ``role``'s principal (``churn.security``)."""
    return Producer({**librdkafka_config(settings, role), **PRODUCER_DEFAULTS, **overrides})


def consumer(settings: Settings, group_id: str, role: str = "admin", **overrides: Any) -> Consumer:
    config = {
        **librdkafka_config(settings, role),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **overrides,
    }
    return Consumer(config)


def admin(settings: Settings, role: str = "admin") -> AdminClient:
    return AdminClient(librdkafka_config(settings, role))


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[tuple[str, str]]:
    """Create every topic in the settings that is missing; grow partitions that are too few.

    Idempotent: a second call reports each topic as ``exists``. Returns (topic, action).
    """
    client = admin(settings)
    existing = client.list_topics(timeout=timeout_s).topics
    rf = settings.topics.replication_factor
    actions: list[tuple[str, str]] = []
    to_create = []
    for spec in settings.topics.all():
        if spec.name not in existing:
            to_create.append(NewTopic(spec.name, spec.partitions, rf, config=dict(spec.config)))
            continue
        have = len(existing[spec.name].partitions)
        if have < spec.partitions:
            for fut in client.create_partitions([NewPartitions(spec.name, spec.partitions)]).values():
                fut.result(timeout_s)
            actions.append((spec.name, f"grew from {have} to {spec.partitions} partitions"))
        else:
            note = "" if have == spec.partitions else f" ({have} partitions, more than the {spec.partitions} configured)"
            actions.append((spec.name, "exists" + note))
    if to_create:
        for name, fut in client.create_topics(to_create, operation_timeout=timeout_s).items():
            try:
                fut.result(timeout_s)
                actions.append((name, "created"))
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                actions.append((name, "exists"))
    order = [spec.name for spec in settings.topics.all()]
    return sorted(actions, key=lambda a: order.index(a[0]))


def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    """The broker's effective config of a topic (for checks and `churn topics`)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = admin(settings)  # keep the client alive until the future resolves
    result = client.describe_configs([resource])[resource].result(10)
    return {name: entry.value for name, entry in result.items()}


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0, role: str = "admin") -> dict[int, int]:
    """High watermark of every partition of ``topic`` (retried while a new topic elects leaders), asked as
    ``role``'s principal."""
    import time

    from confluent_kafka import TopicPartition

    c = consumer(settings, group_id=f"{principal(role)}-offsets-probe", role=role)  # a group its ACLs allow
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                parts = c.list_topics(topic, timeout=timeout_s).topics[topic].partitions
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in parts}
            except KafkaException as exc:
                retriable = exc.args[0].code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                                   KafkaError.UNKNOWN_TOPIC_OR_PART)
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


def read_committed(settings: Settings, topic: str, idle_s: float = 3.0, role: str = "admin") -> list:
    """Every committed record of ``topic`` from the start up to its last stable offsets when called
    (``read_committed``: records of aborted or open transactions left out). Reading stops once every
    partition's position has reached that offset (past the transaction markers), or, should it not, once
    nothing new came for ``idle_s``."""
    import time
    import uuid

    from confluent_kafka import TopicPartition

    c = consumer(settings, group_id=f"read-{uuid.uuid4().hex[:6]}", role=role,
                 **{"isolation.level": "read_committed"})
    ends = end_offsets(settings, topic, role=role)
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    waiting = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
    out, idle = [], time.time()
    try:
        while waiting and time.time() - idle < idle_s:
            msgs = c.consume(5000, timeout=0.1)
            out.extend(m for m in msgs if m.error() is None)
            if msgs:
                idle = time.time()
            waiting = [tp for tp in c.position(waiting) if tp.offset < ends[tp.partition]]
    finally:
        c.close()
    return out
