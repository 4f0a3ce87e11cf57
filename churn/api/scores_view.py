"""The API's read model: every customer's latest committed score and alert, kept by reading the topics.

The scoring worker writes one record per decision to the compacted ``churn-scores``
topic, and each alert (with its reasons) to ``churn-alerts``, inside its
transactions. ``ScoresView`` reads both from the start with ``read_committed`` (so
it never shows a decision that was rolled back) in a background thread and keeps,
per customer, the latest score, a short risk history and the latest alert. The API
answers from it without rescoring, so what it serves is what the worker decided.

Compaction keeps the newest record of each customer (the topic's key), so a
restarted API rebuilds the latest scores in full; the history holds what the
topic still has.

>>> view = ScoresView.__new__(ScoresView)
>>> view._reset(history=2)
>>> for risk, band, at in [(0.2, "low", "2026-01-01T00:00:00Z"), (0.8, "high", "2026-01-01T01:00:00Z"),
...                        (0.9, "critical", "2026-01-01T02:00:00Z")]:
...     view.apply({"customer_id": "C1", "risk": risk, "band": band, "scored_at": at})
>>> view.apply({"customer_id": "C2", "risk": 0.6, "band": "high", "scored_at": "2026-01-01T00:00:00Z"})
>>> view.latest("C1")["risk"], [h["risk"] for h in view.history("C1")]
(0.9, [0.8, 0.9])
>>> view.apply_alert({"customer_id": "C1", "band": "critical", "reasons": [{"feature": "care_calls_7d"}]})
>>> view.alert("C1")["reasons"][0]["feature"], view.alert("C2")
('care_calls_7d', None)
>>> total, rows = view.at_risk("high", limit=10, offset=0)
>>> total, [r["customer_id"] for r in rows]
(2, ['C1', 'C2'])
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from collections import deque

import orjson

from streaming.scoring.bands import BAND_INDEX

log = logging.getLogger(__name__)


def riskiest_first(records: list[dict], limit: int, offset: int) -> tuple[int, list[dict]]:
    """How many ``records`` there are, and rows ``offset`` to ``offset + limit`` of them, riskiest first
    (ties by customer id)."""
    page = heapq.nsmallest(offset + limit, records, key=lambda r: (-r["risk"], r["customer_id"]))[offset:]
    return len(records), page


class ScoresView:
    def __init__(self, settings, history: int | None = None):
        self.settings = settings
        self.topic = settings.topics.churn_scores.name
        self.alerts_topic = settings.topics.churn_alerts.name
        self._reset(settings.api.history if history is None else history)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = None
        self.caught_up = threading.Event()  # set once the topic's end at start-up has been read
        self.records = 0
        self.last_read_at: float | None = None
        self.error: str | None = None

    def _reset(self, history: int) -> None:
        self._history_len = max(history, 1)
        self._latest: dict[str, dict] = {}
        self._history: dict[str, deque] = {}
        self._alerts: dict[str, dict] = {}
        self._lock = threading.Lock()

    # -- the model ------------------------------------------------------------------------
    def apply(self, record: dict) -> None:
        """One committed score record (records of a customer arrive in decision order)."""
        customer = record["customer_id"]
        point = {"scored_at": record.get("scored_at"), "risk": record["risk"], "band": record["band"],
                 "trigger": record.get("trigger"), "trigger_event_time": record.get("trigger_event_time")}
        with self._lock:
            self._latest[customer] = record
            kept = self._history.get(customer)
            if kept is None:
                kept = self._history[customer] = deque(maxlen=self._history_len)
            kept.append(point)

    def apply_alert(self, alert: dict) -> None:
        """One committed alert (a customer's alerts arrive in order)."""
        with self._lock:
            self._alerts[alert["customer_id"]] = alert

    def alert(self, customer: str) -> dict | None:
        """The customer's latest alert, with its reasons (None: never alerted, as far as the topic keeps)."""
        with self._lock:
            return self._alerts.get(customer)

    def latest(self, customer: str) -> dict | None:
        with self._lock:
            return self._latest.get(customer)

    def history(self, customer: str) -> list[dict]:
        with self._lock:
            return list(self._history.get(customer, ()))

    def customers(self) -> int:
        with self._lock:
            return len(self._latest)

    def at_or_above(self, min_band: str) -> list[dict]:
        """The latest record of every customer whose band is ``min_band`` or above, in no order."""
        floor = BAND_INDEX[min_band]
        with self._lock:
            return [r for r in self._latest.values() if BAND_INDEX.get(r["band"], -1) >= floor]

    def at_risk(self, min_band: str, limit: int, offset: int) -> tuple[int, list[dict]]:
        """Customers whose latest band is ``min_band`` or above, riskiest first (``riskiest_first``)."""
        return riskiest_first(self.at_or_above(min_band), limit, offset)

    def bands(self) -> dict[str, int]:
        """How many customers are in each band now."""
        counts = dict.fromkeys(BAND_INDEX, 0)
        with self._lock:
            for r in self._latest.values():
                counts[r["band"]] = counts.get(r["band"], 0) + 1
        return counts

    # -- the reader -----------------------------------------------------------------------
    def start(self) -> "ScoresView":
        self._thread = threading.Thread(target=self._run, name="scores-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from churn.transport import consumer, end_offsets

        while not self._stop.is_set():
            try:
                ends = {(t, p): end for t in (self.topic, self.alerts_topic)
                        for p, end in end_offsets(self.settings, t, role="api").items()}
                break
            except Exception as exc:  # the broker not up yet: keep trying, /readyz says so
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(2.0)
        else:
            return
        c = consumer(self.settings, group_id=f"churn-api-{uuid.uuid4().hex[:8]}", role="api",
                     **{"isolation.level": "read_committed", "enable.partition.eof": True})
        self._consumer = c
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        pending = {tp for tp, end in ends.items() if end > 0}
        if not pending:
            self.caught_up.set()
        try:
            while not self._stop.is_set():
                for m in c.consume(5000, timeout=0.5):
                    err, where = m.error(), (m.topic(), m.partition())
                    if err is not None:
                        if err.code() == err._PARTITION_EOF:
                            pending.discard(where)
                        else:
                            self.error = str(err)
                        continue
                    if m.value() is not None:
                        try:
                            record = orjson.loads(m.value())
                            self.apply(record) if m.topic() == self.topic else self.apply_alert(record)
                        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                            log.warning("skipping unreadable record at %s/%d/%d: %s", *where, m.offset(), exc)
                        self.records += 1
                    if m.offset() + 1 >= ends.get(where, 0):
                        pending.discard(where)
                    self.last_read_at = time.time()
                    self.error = None
                if not pending:
                    self.caught_up.set()
        finally:
            c.close()
