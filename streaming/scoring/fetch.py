"""How the worker's consumer fetches: in batches while records flow, at the first record while idle.

Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and aiokafka's ``fetch_min_bytes=1``: the
broker answers a fetch as soon as any record is there. Fed live, that is a fetch round trip, encoded and
decoded in Python on Faust's consumer thread, for every few records. A fixed batched fetch (wait up to
10 ms for 64 KiB) fixes that, but then an idle worker asks the broker every 10 ms.

``AdaptiveFetch`` keeps both: after a fetch that brought records the next one waits for a batch
(``min_bytes``, ``max_wait_ms``); after one that came back empty the next one is answered at the first
record, or after ``idle_max_wait_ms``. A CDR after a silence is fetched at once, one in a flow waits at
most ``max_wait_ms``, and an idle worker asks the broker once per ``idle_max_wait_ms``.

>>> fetch = AdaptiveFetch(min_bytes=65_536, max_wait_ms=10, idle_max_wait_ms=1500)
>>> fetch.sizes  # a new consumer starts idle
(1, 1500)
>>> fetch.fetched(records=True)
>>> fetch.sizes
(65536, 10)
>>> fetch.fetched(records=False)
>>> fetch.sizes
(1, 1500)
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka


class AdaptiveFetch:
    """The fetch sizes for the next request, from whether the last fetch brought records."""

    def __init__(self, min_bytes: int, max_wait_ms: int, idle_max_wait_ms: int) -> None:
        self.flowing_sizes = (min_bytes, max_wait_ms)
        self.idle_sizes = (1, idle_max_wait_ms)
        self.sizes = self.idle_sizes

    def fetched(self, records: bool) -> None:
        self.sizes = self.flowing_sizes if records else self.idle_sizes

    def follow(self, fetcher) -> None:
        """Set the sizes of aiokafka's ``fetcher`` after each of its fetches. Its fetch loop builds every request
        from ``_fetch_min_bytes`` and ``_fetch_max_wait_ms`` and calls ``_proc_fetch_request`` for each, which
        returns whether records (or an error for the reader) were added."""
        proc = fetcher._proc_fetch_request

        async def _proc_fetch_request(assignment, node_id, request):
            records = await proc(assignment, node_id, request)
            self.fetched(records)
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = self.sizes
            return records

        fetcher._proc_fetch_request = _proc_fetch_request
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = self.sizes


def fetch_adaptively(min_bytes: int, max_wait_ms: int, idle_max_wait_ms: int) -> None:
    """Faust's worker consumer fetches by ``AdaptiveFetch`` with these sizes (``scoring.fetch_*``)."""
    thread = faust_aiokafka.AIOKafkaConsumerThread
    create = getattr(thread._create_worker_consumer, "faust_own", thread._create_worker_consumer)

    def _create_worker_consumer(self, transport):
        consumer = create(self, transport)
        fetch = AdaptiveFetch(min_bytes, max_wait_ms, idle_max_wait_ms)
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = fetch.sizes  # what its start() builds the fetcher with
        start = consumer.start

        async def start_following():
            await start()
            fetch.follow(consumer._fetcher)

        consumer.start = start_following
        consumer.adaptive_fetch = fetch
        return consumer

    _create_worker_consumer.faust_own = create
    thread._create_worker_consumer = _create_worker_consumer
