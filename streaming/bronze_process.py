"""The Bronze query in a process of its own, at a lower OS scheduling priority than the silver query.

Both queries read every CDR on the same cores. In one JVM, Bronze's batches (large, every
``streaming.bronze_trigger_s``) hold every core for seconds at a time, and the silver batches queued
behind them make the tail of feature freshness: Spark's fair scheduler gives Silver's tasks the next free
core, but cannot take one back from a running Bronze task. In a Spark application of its own, started
with a higher niceness (``streaming.bronze_nice``), Bronze's threads get the cores whenever the silver
query's do not want them, and a share of them when both do: the kernel interleaves the two continuously,
in slices of milliseconds, instead of Silver waiting out Bronze's tasks.

Only with a local master (``local[N]``): on a cluster both queries' tasks run on the executors, where the
driver's niceness does not reach, and a second application would wait for the cores the first one holds.

``BronzeProcess`` stands for a ``StreamingQuery`` where the job uses one (``name``, ``isActive``,
``exception()``, ``status``, ``lastProgress``, ``recentProgress``, ``stop()``), so the job starts, watches
and stops it as it does its other queries; the progress of each Bronze batch comes back to the job's
Prometheus metrics. The process stops with the job: ``stop()`` ends its query between two batches, and if
the job's process dies, the kernel ends Bronze's (``PR_SET_PDEATHSIG``), whose Spark JVM follows it.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import signal
import threading

from pyspark.sql.streaming import StreamingQueryListener

from churn.config import Settings
from churn.stop_request import StopRequest
from streaming import metrics

#: How many progress reports ``recentProgress`` keeps, as Spark's ``spark.sql.streaming.numRecentProgressUpdates``.
RECENT_PROGRESS = 100


def runs_apart(settings: Settings, available_now: bool) -> bool:
    """Whether the job runs Bronze in a process of its own: live (not ``--available-now``, where nothing
    waits for fresh features), on a local master, with ``streaming.bronze_nice`` set."""
    return (not available_now and settings.streaming.bronze_nice is not None
            and settings.spark.master.startswith("local"))


class BronzeProcess:
    """The Bronze query running in a child process (see the module's docstring)."""

    name = "bronze"

    def __init__(self, settings: Settings):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no Spark state inherited
        self._events = context.Queue()
        self._process = context.Process(target=_run, args=(settings, self._events, os.getpid()),
                                        name="churn-stream-bronze", daemon=True)
        self._stop_requested = False
        self._error: str | None = None
        self._ended = threading.Event()
        self.lastProgress: dict | None = None
        self._recent: collections.deque = collections.deque(maxlen=RECENT_PROGRESS)
        self._process.start()
        self._reader = threading.Thread(target=self._read_events, name="bronze-events", daemon=True)
        self._reader.start()

    # -- what the job reads of a query ---------------------------------------------------------
    @property
    def isActive(self) -> bool:  # noqa: N802 (StreamingQuery's name)
        return not self._ended.is_set() and self._process.is_alive()

    def exception(self) -> str | None:
        """Why the query ended, if it failed; ``None`` while it runs or after a clean stop."""
        if self._error is None and not self._process.is_alive() and not self._stop_requested:
            code = self._process.exitcode
            if code not in (None, 0):
                return f"the Bronze process ended with exit code {code}"
        return self._error

    @property
    def status(self) -> dict:
        """The process stops its query between two batches itself, so ``stop()`` never interrupts a batch."""
        return {"isTriggerActive": False}

    @property
    def recentProgress(self) -> list[dict]:  # noqa: N802
        return list(self._recent)

    def request_stop(self) -> None:
        """Ask the process to end its query between two batches, without waiting (``stop`` waits): a
        SIGTERM, which its handler turns into a ``StopRequest``. Nothing shared is locked, so a child
        stuck or gone cannot hold the job's stop up."""
        self._stop_requested = True
        if self._process.is_alive():
            self._process.terminate()

    def stop(self, within_s: float = 60.0) -> None:
        """End the query between two of its batches and the process with it; killed after ``within_s``
        (its checkpoint makes either resumable)."""
        self.request_stop()
        self._process.join(within_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        self._ended.set()

    def awaitTermination(self, timeout: float | None = None) -> bool:  # noqa: N802
        self._process.join(timeout)
        return not self._process.is_alive()

    # -- events from the process ---------------------------------------------------------------
    def _read_events(self) -> None:
        while True:
            try:
                kind, body = self._events.get(timeout=1.0)
            except Exception:  # queue.Empty, or the queue gone with the process
                if not self._process.is_alive():
                    break
                continue
            if kind == "started":
                metrics.QUERY_UP.labels(self.name).set(1)
            elif kind == "progress":
                progress = json.loads(body)
                self.lastProgress = progress
                self._recent.append(progress)
                metrics.record_progress(progress)
            elif kind == "idle":
                metrics.record_idle(self.name)
            elif kind == "ended":
                self._error = body
                break
        metrics.QUERY_UP.labels(self.name).set(0)
        self._ended.set()


def _run(settings: Settings, events, parent: int) -> None:
    """The child process: Bronze alone in a Spark application of its own, at ``streaming.bronze_nice``,
    until SIGTERM or SIGINT arrive (the job's ``request_stop``, or a signal to the job's process group),
    its query fails, or the parent dies."""
    stop = StopRequest.on_signals(signal.SIGTERM, signal.SIGINT)
    _end_with_parent(parent)
    os.nice(settings.streaming.bronze_nice)
    error = None
    try:
        from churn.spark import spark_session
        from streaming.job import StreamingJob

        job = StreamingJob(settings, spark=spark_session(settings, "churn-stream-bronze"))
        forward = _Forward(events)
        job.spark.streams.addListener(forward)
        query = job.start_bronze()
        while query.isActive and not stop.wait(0.2):
            pass
        job.stop()
        failure = query.exception()
        error = str(failure) if failure is not None else None
        # no more calls from the JVM into this process, which is about to end
        job.spark.streams.removeListener(forward)
    except BaseException as e:  # Spark could not start, the lake is unreachable, ...
        error = f"{type(e).__name__}: {e}"
    events.put(("ended", error))
    events.close()
    events.join_thread()
    os._exit(1 if error else 0)  # py4j's finalizers can hang an ordinary exit (see churn.cli)


def _end_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent (the job) dies, however it dies (Linux; the
    Spark JVM of this process then ends too, as it does whenever its Python driver goes)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class _Forward(StreamingQueryListener):
    """In the child: each of Bronze's query events to the parent, over ``events``."""

    def __init__(self, events):
        super().__init__()
        self._events = events

    def onQueryStarted(self, event) -> None:
        self._events.put(("started", None))

    def onQueryProgress(self, event) -> None:
        self._events.put(("progress", event.progress.json))

    def onQueryIdle(self, event) -> None:
        self._events.put(("idle", None))

    def onQueryTerminated(self, event) -> None:
        pass  # the process reports its end itself, with the query's exception
