"""Running a coroutine eagerly: up to its first real wait, without a task, on the caller's stack.

Faust's consumer hands each record to the topic's handler through ``Service.wait_first(handler(record),
suspend_flow.wait())``, which wraps the handler, the flow signal and the service's stopped and crashed
events in four tasks and an ``asyncio.wait`` for every record. The handler nearly always finishes
without waiting (the record is decoded and put on a stream queue with room), so the worker starts it
eagerly and pays for the tasks only when it does wait (asyncio's ``eager_task_factory`` does the same
from Python 3.12 on).

>>> async def quick(x):
...     return 2 * x
>>> run_eagerly(quick(21))
(True, 42)
>>> async def waits(event):
...     await event.wait()
...     return "after the wait"
>>> async def demo():
...     event = asyncio.Event()
...     done, rest = run_eagerly(waits(event))  # started, now waiting for the event
...     task = asyncio.ensure_future(rest)
...     event.set()
...     return done, await task
>>> asyncio.run(demo())
(False, 'after the wait')
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class _Continue:
    """Awaiting it drives ``coro`` on from ``first``, what the coroutine yielded when it was started eagerly:
    the task awaiting this sees what the coroutine yields, and throws into it what it is thrown (e.g. its
    cancellation), as if it had awaited the coroutine from the start."""

    def __init__(self, coro: Coroutine, first: Any):
        self.coro, self.first = coro, first

    def __await__(self):
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def run_eagerly(coro: Coroutine) -> tuple[bool, Any]:
    """Run ``coro`` until it first waits: ``(True, its result)`` if it finished without waiting (an exception
    it raised propagates), else ``(False, an awaitable that finishes it)``."""
    try:
        first = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _Continue(coro, first)
