"""A streaming query started later, once something else is ready, that the job watches and stops meanwhile
as one of its queries.

The streaming job starts its ``profiles`` query once the silver query has run its first batch: started
together, the two queries' first batches (planning, Kafka's offsets, a cold JVM) took the same two cores,
and the silver query's first batch, which makes the first features fresh, waited for both.

``DeferredQuery`` stands for the query until it starts (active, no exception, no progress), then for the
query itself. A failure to start it is its exception, as a failed query's is.

>>> import time
>>> class Query:
...     name, isActive, lastProgress, recentProgress, status = "late", True, None, [], {}
...     def stop(self): self.isActive = False
...     def exception(self): return None
...     def awaitTermination(self, timeout=None): return not self.isActive
>>> ready = []
>>> q = DeferredQuery("late", start=Query, ready=lambda: bool(ready), poll_s=0.01)
>>> q.isActive, q.started
(True, False)
>>> ready.append(1); time.sleep(0.2)
>>> q.started, q.isActive
(True, True)
>>> q.stop(); q.isActive
False
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class DeferredQuery:
    """``start()`` (which returns a started ``StreamingQuery``) called on a thread of its own once ``ready()`` holds
    or ``within_s`` has passed; never if ``stop()`` comes first."""

    def __init__(self, name: str, start: Callable, ready: Callable[[], bool], within_s: float = 60.0,
                 poll_s: float = 0.1):
        self.name = name
        self._start, self._ready, self._poll_s = start, ready, poll_s
        self._deadline = time.monotonic() + within_s
        self._lock = threading.Lock()
        self._query = None
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"start-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped and time.monotonic() < self._deadline:
            try:
                if self._ready():
                    break
            except Exception:  # what it waits for is failing: start anyway, its own failure will tell
                break
            time.sleep(self._poll_s)
        with self._lock:
            if self._stopped:
                return
            try:
                self._query = self._start()
            except Exception as exc:
                log.exception("query %s could not start", self.name)
                self._error = exc

    @property
    def started(self) -> bool:
        return self._query is not None

    @property
    def isActive(self) -> bool:
        if self._query is not None:
            return self._query.isActive
        return not self._stopped and self._error is None

    def exception(self):
        return self._query.exception() if self._query is not None else self._error

    @property
    def status(self) -> dict:
        return self._query.status if self._query is not None else {}

    @property
    def lastProgress(self):
        return self._query.lastProgress if self._query is not None else None

    @property
    def recentProgress(self) -> list:
        return self._query.recentProgress if self._query is not None else []

    def awaitTermination(self, timeout: float | None = None):
        """As ``StreamingQuery.awaitTermination``, waiting first for the query to start; ``timeout`` covers both."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(timeout)
        if self._query is None:
            return not self._thread.is_alive()
        if deadline is None:
            return self._query.awaitTermination()
        return self._query.awaitTermination(max(deadline - time.monotonic(), 0.001))  # Spark: a positive timeout

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            query = self._query
        if query is not None:
            query.stop()
