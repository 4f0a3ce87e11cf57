"""How the scorer runs Faust's worker: without the terminal spinner that sets the root logger to DEBUG,
with each record handed to its topic's handler eagerly (no tasks unless the handler waits), and with
fetches that wait for more than the first record."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re

import faust
import mode
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from churn.config import Settings
from streaming.scoring.app import deliver_records_eagerly, faust_app, faust_worker


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.WARNING)
    root.addHandler(logging.NullHandler())  # Faust's spinner set-up adjusts the first handler
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def _app() -> faust.App:
    return faust.App("spinner-test", broker="kafka://127.0.0.1:1", web_enabled=False, store="memory://")


def test_faust_own_worker_turns_debug_on_for_its_spinner(root_logger):
    """The behaviour the scorer avoids: if Faust stops doing this, ``faust_worker`` has nothing left to do."""
    faust.Worker(_app(), loglevel="warning", quiet=True).on_setup_root_logger(root_logger, logging.WARNING)
    assert root_logger.level == logging.DEBUG
    assert logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)


def test_the_scorers_worker_keeps_the_log_level_it_was_given(root_logger):
    worker = faust_worker(_app(), "warning")
    worker.on_setup_root_logger(root_logger, logging.WARNING)
    assert worker.spinner is None
    assert root_logger.level == logging.WARNING
    assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)


def test_faust_hands_each_record_to_its_handler_through_wait_first():
    """What ``deliver_records_eagerly`` replaces: if Faust's consumer stops doing this, the patch does nothing."""
    source = re.sub(r"\s+", "", inspect.getsource(faust_consumer.Consumer._drain_messages))
    assert "awaitself.wait_first(callback(message),self.suspend_flow.wait())" in source


def test_a_handler_that_does_not_wait_runs_at_once_and_one_that_waits_goes_through_wait_first():
    deliver_records_eagerly()
    wait_first = faust_aiokafka.Consumer.wait_first
    handled: list = []

    async def handler(record, gate=None):
        if gate is not None:
            await gate.wait()
        handled.append(record)
        return record

    async def scenario():
        service = mode.Service()  # wait_first also watches the service's stopped and crashed events
        loop = asyncio.get_running_loop()
        tasks = []
        loop.set_task_factory(lambda lp, coro, **kw: tasks.append(coro) or asyncio.Task(coro, loop=lp, **kw))
        suspended = asyncio.Event()

        quick = await wait_first(service, handler("a"), suspended.wait())
        assert (quick.results, quick.stopped, tasks) == (["a"], False, [])  # no task was created

        gate = asyncio.Event()
        waiting = asyncio.ensure_future(wait_first(service, handler("b", gate), suspended.wait()))
        await asyncio.sleep(0.01)
        assert handled == ["a"] and not waiting.done() and len(tasks) >= 3  # wait_first's tasks
        gate.set()
        slow = await waiting
        assert slow.results == ["b"] and handled == ["a", "b"]

        # flow suspended while the handler waits (a rebalance): wait_first returns, the handler is dropped
        gate = asyncio.Event()
        dropped = asyncio.ensure_future(wait_first(service, handler("c", gate), suspended.wait()))
        await asyncio.sleep(0.01)
        suspended.set()
        result = await dropped
        gate.set()
        await asyncio.sleep(0.01)
        assert result.results == [True] and handled == ["a", "b"]
        loop.set_task_factory(None)

    asyncio.run(scenario())


def test_each_garbage_collection_pause_is_observed_once_by_generation():
    import gc

    from prometheus_client import REGISTRY

    from streaming.scoring import metrics

    def observed() -> tuple[float, float]:
        labels = {"generation": "2"}
        return (REGISTRY.get_sample_value("churn_score_gc_pause_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("churn_score_gc_pause_seconds_sum", labels) or 0.0)

    metrics.time_gc_pauses()
    metrics.time_gc_pauses()  # a second call adds no second callback
    count, total = observed()
    gc.collect()
    gc.collect()
    count_after, total_after = observed()
    assert count_after - count == 2  # two full collections, each observed once
    assert total_after > total


def test_faust_creates_its_consumer_to_answer_each_fetch_at_the_first_record():
    """What ``fetch_adaptively`` replaces: if Faust passes fetch sizes of its own, the patch must follow."""
    create = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    source = inspect.getsource(getattr(create, "faust_own", create))
    assert "fetch_max_wait_ms=1500" in source and "fetch_min_bytes" not in source


def test_aiokafka_builds_each_fetch_request_from_the_sizes_the_adaptive_fetch_sets():
    """What ``AdaptiveFetch.follow`` relies on: if aiokafka stops reading these per request, it does nothing."""
    from aiokafka.consumer.fetcher import Fetcher

    actions = re.sub(r"\s+", "", inspect.getsource(Fetcher._get_actions_per_node))
    assert "FetchRequest(self._fetch_max_wait_ms,self._fetch_min_bytes," in actions
    assert "self._proc_fetch_request(assignment,node_id,request)" in inspect.getsource(
        Fetcher._fetch_requests_routine).replace(" ", "").replace("\n", "")


def test_the_workers_consumer_starts_idle_and_fetches_with_the_sizes_of_its_settings(tmp_path):
    settings = Settings(run_dir=tmp_path, scoring={"fetch_min_bytes": 32_768, "fetch_max_wait_ms": 7,
                                                    "fetch_idle_max_wait_ms": 900})
    app = faust_app(settings)

    async def created():
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        fetch = consumer.adaptive_fetch
        return ((consumer._fetch_min_bytes, consumer._fetch_max_wait_ms, consumer._max_poll_records),
                fetch.flowing_sizes, fetch.idle_sizes)

    assert asyncio.run(created()) == ((1, 900, settings.scoring.batch_max), (32_768, 7), (1, 900))
    defaults = Settings(run_dir=tmp_path).scoring
    assert (defaults.fetch_min_bytes, defaults.fetch_max_wait_ms, defaults.fetch_idle_max_wait_ms) == (65_536, 10, 1500)


def test_a_fetch_after_records_waits_for_a_batch_and_one_after_an_empty_fetch_answers_at_the_first_record(live_stack):
    """A real consumer on the broker, fed in bursts with silences between: every request's sizes follow what the
    fetch before it brought, every record arrives once, and a silence costs a few long fetches, not one per 10 ms."""
    import uuid

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from churn.transport import admin, producer
    from streaming.scoring.fetch import AdaptiveFetch

    topic = f"fetch-{uuid.uuid4().hex[:8]}"
    client = admin(live_stack)
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    requests: list[tuple[int, int, bool]] = []  # the sizes each fetch was sent with, and whether it brought records

    async def scenario():
        consumer = AIOKafkaConsumer(bootstrap_servers=live_stack.kafka.bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        try:
            fetcher = consumer._fetcher
            proc = fetcher._proc_fetch_request

            async def recorded(assignment, node_id, request):
                sizes = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
                got = await proc(assignment, node_id, request)
                requests.append((*sizes, got))
                return got

            fetcher._proc_fetch_request = recorded
            AdaptiveFetch(min_bytes=65_536, max_wait_ms=10, idle_max_wait_ms=300).follow(fetcher)
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning()
            received: list[bytes] = []

            async def read_for(seconds: float) -> None:
                end = asyncio.get_running_loop().time() + seconds
                while (left := end - asyncio.get_running_loop().time()) > 0:
                    for records in (await consumer.getmany(timeout_ms=int(left * 1000) + 1)).values():
                        received.extend(r.value for r in records)

            await read_for(1.5)  # silence
            silent = len(requests)
            sent = producer(live_stack)
            for burst in range(3):
                for i in range(200):
                    sent.produce(topic, f"{burst}-{i}".encode())
                    if i % 20 == 0:
                        sent.flush()
                        await read_for(0.003)
                sent.flush()
                await read_for(1.0)  # silence after the burst
            return silent, received
        finally:
            await consumer.stop()

    silent, received = asyncio.run(scenario())
    assert sorted(received) == sorted(f"{b}-{i}".encode() for b in range(3) for i in range(200))
    assert 2 <= silent <= 8  # 1.5 s of silence: fetches of up to 300 ms, not 150 of 10 ms
    assert requests[0][:2] == (1, 300)
    for before, after in zip(requests, requests[1:]):
        assert after[:2] == ((65_536, 10) if before[2] else (1, 300)), requests
    flowing = [r for r in requests if r[:2] == (65_536, 10)]
    assert sum(r[2] for r in requests) >= 3 and len(flowing) >= 3 and not all(r[2] for r in flowing)
