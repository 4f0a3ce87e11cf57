"""A stop request that a signal handler may set: what the long-running commands wait on.

A signal handler runs in the main thread between two bytecodes, wherever that thread is. If it calls
``set()`` on a ``threading.Event`` or a ``multiprocessing.Event`` while the main thread is inside that
event's ``wait()`` holding its lock, the handler waits for a lock its own thread holds, forever. (This
happened: the Bronze process, in ``stop.wait(0.2)`` when SIGTERM came, hung holding a lock shared with
the job, and the job hung on it too.) ``StopRequest.set()`` only assigns an attribute; ``wait`` polls it.

>>> import os, signal
>>> stop = StopRequest.on_signals(signal.SIGUSR1)
>>> stop.is_set(), stop.wait(0.01)
(False, False)
>>> os.kill(os.getpid(), signal.SIGUSR1)
>>> stop.wait(1.0), stop.is_set()
(True, True)
>>> _ = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
"""

from __future__ import annotations

import signal
import time

#: How often ``wait`` looks at the request.
POLL_S = 0.05


class StopRequest:
    """``set`` / ``is_set`` / ``wait(timeout)`` as ``threading.Event`` has them, safe to set from a signal
    handler (and from any thread)."""

    def __init__(self) -> None:
        self._requested = False

    @classmethod
    def on_signals(cls, *signums: int) -> "StopRequest":
        """A request set by any of ``signums`` (installed as their handlers; main thread only)."""
        stop = cls()
        for signum in signums:
            signal.signal(signum, lambda *_: stop.set())
        return stop

    def set(self) -> None:
        self._requested = True

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout: float | None = None) -> bool:
        """Until the request is set or ``timeout`` seconds pass; whether it is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._requested:
            left = POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(POLL_S, left))
        return self._requested
