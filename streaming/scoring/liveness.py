"""Whether the scoring worker is doing its job, told truthfully: ``/healthz``, a metric, and an exit.

A worker is *stalled* when it owns partitions with CDRs waiting (lag) but has neither scored
a batch nor committed a transaction for ``stall_after_s``, or when its event loop has not
ticked for as long. ``/healthz`` (on the metrics port) answers 503 with the reason then,
200 otherwise; a stopped process (SIGSTOP) does not answer at all, which a probe reads as
bad. A watchdog thread, independent of the event loop, ends the process with exit code
70 once the stall has lasted ``exit_after_s``, so that a supervisor restarts it and it
resumes from its last committed transaction: a worker never stays alive doing nothing.
Time spent stopped (SIGSTOP, a suspended VM) does not count as a stall.

>>> clock = iter([0.0, 0.0, 40.0, 45.0]).__next__
>>> live = Liveness(stall_after_s=30, exit_after_s=60, clock=clock)
>>> live.waiting(5)            # t=0: the event loop ticks and sees CDRs waiting
>>> live.waiting(5)            # t=40: still waiting, nothing scored
>>> live.check()               # t=45
(False, 'no CDR scored or committed for 45 s while 5 wait')

A commit that does not return is a stall of its own, whatever the lag (the watchdog exits on it):

>>> clock = iter([0.0, 0.0, 0.0, 10.0, 30.0, 75.0, 75.0, 75.0, 75.0, 75.0]).__next__
>>> live = Liveness(stall_after_s=30, exit_after_s=60, clock=clock, commit_deadline_s=60)
>>> live.waiting(0)            # t=0: nothing waits
>>> live.commit_started()      # t=10
>>> live.commit_hung_for()     # t=30: in time
0.0
>>> live.commit_hung_for()     # t=75: 5 s past the deadline
5.0
>>> live.waiting(0)            # the event loop still ticks
>>> live.check()               # t=75
(False, 'a transaction commit has not returned for 65 s')
>>> live.commit_ended()
>>> live.commit_hung_for()
0.0
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from streaming.scoring import metrics

log = logging.getLogger(__name__)

EXIT_STALLED = 70


def die(message: str, *args) -> None:
    """Log, dump every thread's stack, and end the process now with ``EXIT_STALLED`` (no graceful stop:
    a thread stuck in a client library would keep a graceful one alive for good). Nothing is lost: outputs
    are visible only once their transaction commits, and the next owner aborts what was open."""
    try:
        log.critical(message + "; exiting so that the worker restarts from its last commit", *args)
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)  # Faust replaces sys.stderr
    finally:
        os._exit(EXIT_STALLED)


class Liveness:
    def __init__(self, stall_after_s: float = 30.0, exit_after_s: float = 120.0, clock=time.time,
                 commit_deadline_s: float = 60.0):
        self.stall_after_s, self.exit_after_s, self.clock = stall_after_s, exit_after_s, clock
        self.commit_deadline_s = commit_deadline_s
        now = clock()
        self.progress_at = now  # last batch scored, transaction committed, or nothing to do
        self.tick_at: float | None = None  # the event loop's last tick (None: still starting)
        self.lag = 0
        self.committing_since: float | None = None  # a commit in flight on the commit thread since then

    def commit_started(self) -> None:
        self.committing_since = self.clock()

    def commit_ended(self) -> None:
        self.committing_since = None

    def commit_hung_for(self) -> float:
        """Seconds the commit in flight has exceeded ``commit_deadline_s`` by (0: none in flight, or in time).
        A transactional call can block past its own timeout while a broker fails (confluentinc/librdkafka#5456);
        batches wait for the commit with a bound of their own, but with none arriving nothing else would notice."""
        since = self.committing_since
        return 0.0 if since is None else max(self.clock() - since - self.commit_deadline_s, 0.0)

    def progressed(self) -> None:
        self.progress_at = self.clock()
        metrics.LAST_PROGRESS.set(self.progress_at)

    def waiting(self, lag: int) -> None:
        """The event loop's periodic tick: the owned partitions' total lag."""
        self.tick_at = self.clock()
        self.lag = lag
        if lag == 0:
            self.progressed()  # nothing to do is not a stall

    def resumed(self) -> None:
        """The process was stopped and runs again: the time it was stopped is not a stall."""
        self.progress_at = self.clock()
        if self.tick_at is not None:
            self.tick_at = self.progress_at

    def stalled_for(self) -> float:
        """Seconds the worker has been stalled (0 when it is not: its loop ticks, and it progresses or
        has nothing to do)."""
        now = self.clock()
        if self.tick_at is None:
            return 0.0
        loop = now - self.tick_at
        work = now - self.progress_at if self.lag > 0 else 0.0
        stalled = max(loop, work)
        return stalled if stalled > self.stall_after_s else 0.0

    def check(self) -> tuple[bool, str]:
        now = self.clock()
        if self.tick_at is None:
            return True, "starting"
        if now - self.tick_at > self.stall_after_s:
            return False, f"event loop has not ticked for {now - self.tick_at:.0f} s"
        if self.lag > 0 and now - self.progress_at > self.stall_after_s:
            return False, f"no CDR scored or committed for {now - self.progress_at:.0f} s while {self.lag} wait"
        since = self.committing_since  # read once: the commit thread clears it
        if since is not None and now - since > self.commit_deadline_s:
            return False, f"a transaction commit has not returned for {now - since:.0f} s"
        return True, "ok"

    # -- serving and watching ----------------------------------------------------------------
    def serve(self, host: str, port: int) -> None:
        """``/metrics`` (Prometheus) and ``/healthz`` on one port, on a daemon thread."""
        prometheus = make_wsgi_app()

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/healthz":
                ok, why = self.check()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [f"{'ok' if ok else 'stalled'}: {why}\n".encode()]
            return prometheus(environ, start_response)

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):  # scrapes every few seconds: not worth a log line each
                pass

        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=Quiet)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()

    def arm_frozen_process_exit(self) -> None:
        """The last resort, re-armed on every tick of the event loop: if the loop does not tick again within
        ``exit_after_s`` + 30 s, a C thread of ``faulthandler`` dumps every thread's stack and ends the process
        (exit 1, so its supervisor restarts it). It needs no Python thread to run: a client library's call
        that blocked while holding the GIL would freeze the watchdog thread below along with everything
        else."""
        faulthandler.dump_traceback_later(self.exit_after_s + 30.0, exit=True, file=sys.__stderr__)

    def watch(self, every_s: float = 2.0) -> None:
        """Start the watchdog thread (see the module doc)."""

        def run():
            last = time.monotonic()
            while True:
                time.sleep(every_s)
                now = time.monotonic()
                if now - last > every_s + 5.0:  # this process was stopped meanwhile
                    self.resumed()
                last = now
                ok, why = self.check()
                metrics.HEALTHY.set(1 if ok else 0)
                if self.stalled_for() > self.exit_after_s:
                    die("worker stalled (%s) for more than %.0f s", why, self.exit_after_s)
                if self.commit_hung_for() > 0:
                    die("a transaction commit has not returned within %.0f s", self.commit_deadline_s)

        threading.Thread(target=run, name="watchdog", daemon=True).start()
