"""The scoring worker with its scoring taken out: the latency floor of the parts it is built from.

Everything of ``churn score`` runs as it does there (Faust's consumer and the agent's batches, the
worker's transactions committed every ``commit_interval_s`` with the CDRs' offsets, rebalance hooks,
timers, garbage-collector settings) except ``score_batch``: for each CDR it accepts, it writes one small
record to ``churn-scores`` (the CDR's partition and offset, as a score names its trigger) instead of
parsing, looking up features, calling the model and applying the alert rule. A ``read_committed``
consumer of ``churn-scores`` then sees how soon Faust and exactly-once output alone make a record
visible at a given rate on this machine: the floor under the scoring worker's visible latency.

    python bench/echo_worker.py   # with the CHURN_* environment of the worker; stops on SIGTERM
"""

from __future__ import annotations

import orjson

from churn.config import get_settings
from streaming.scoring import metrics
from streaming.scoring.app import ScoringWorker, run


class EchoWorker(ScoringWorker):
    """``ScoringWorker`` whose batches are echoed, one small record per accepted CDR, not scored."""

    def score_batch(self, events) -> None:
        txn, topic = self.txn, self.settings.topics.churn_scores.name
        n = 0
        for ev in events:
            msg = ev.message
            if txn is None or not txn.owns(msg.partition) or not txn.accept(msg.partition, msg.offset):
                continue
            record = orjson.dumps({"trigger": "cdr", "source_partition": msg.partition, "source_offset": msg.offset})
            txn.produce(msg.partition, topic, msg.key, record, to_partition=msg.partition)
            n += 1
        metrics.EVENTS.inc(n)
        self.liveness.progressed()


if __name__ == "__main__":
    run(get_settings(), "warning", worker_class=EchoWorker)
