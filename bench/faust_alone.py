"""Faust alone: how fast one Faust worker, built as the scoring worker builds it, takes CDRs from ``cdr``.

The agent takes the same batches as the scoring agent (``batch_max``, ``batch_within_s``) and does
nothing with them, so the rate it reaches is a ceiling for ``churn score`` on this machine: whatever
the scoring costs, a worker cannot consume faster than Faust hands it events.

    python bench/faust_alone.py EVENTS OUT_JSON [stock]   # with the CHURN_* environment of the worker

``stock``: Faust's own record delivery (a ``wait_first`` per record) instead of the worker's eager one.

It writes ``{"events": n, "seconds": s}`` (events after the first batch, and the time from the first
batch until at least ``EVENTS`` of them) to ``OUT_JSON``, then keeps running until stopped
(``bench_faust_alone`` in ``bench/scoring.py`` stops it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from churn.config import get_settings
from streaming.scoring.app import faust_app, raw_topic, run_faust_worker


def main(events: int, out: Path, eager: bool = True) -> None:
    settings = get_settings()
    cfg = settings.scoring
    app = faust_app(settings, eager=eager)
    counted = {"events": 0, "first_batch_at": None}

    @app.agent(raw_topic(app, settings.topics.cdr.name), name="discard")
    async def discard(stream):
        async for batch in stream.take_events(cfg.batch_max, within=cfg.batch_within_s):
            now = time.perf_counter()
            if counted["first_batch_at"] is None:  # the clock starts here: this batch's events are not counted
                counted["first_batch_at"] = now
                continue
            counted["events"] += len(batch)
            if counted["events"] >= events and not out.exists():
                partial = out.with_suffix(".partial")  # renamed once written: the reader never sees half of it
                partial.write_text(json.dumps({"events": counted["events"], "seconds": now - counted["first_batch_at"]}))
                partial.replace(out)

    run_faust_worker(app, "warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), eager=sys.argv[3:] != ["stock"])
