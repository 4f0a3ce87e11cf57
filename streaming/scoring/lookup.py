"""Batch feature lookups from Feast's online store, with retries, a last-known cache and degraded scoring.

One round trip per scoring batch fetches every customer's packed activity state
(``customer_activity``: ``ref_time``, ``active_days``, ``sums`` and the
``covered_offsets`` the overlay starts from) through a
reader of ``churn.online_reader`` (Feast's storage format read directly from
Redis by default). Profiles (``customer_profile``) change only when the nightly
job materializes them, so they are fetched on first sight of a customer and
again after ``profile_ttl_s``, in the same round trip; each is kept as its
model-input row (``churn.model.inputs.profile_vector``), computed once.

``start`` asks the store and returns at once; ``PendingLookup.finish`` reads the
answer. The scorer works in between (it admits the batch's CDRs to the overlay),
so the round trip no longer holds the worker's event loop idle for all of its
length. ``fetch`` is the two in one call.

If the store cannot be read after ``attempts`` tries (backoff doubling from
``backoff_s``), the batch is scored with the last values this worker saw for
each customer and marked degraded; the next batch tries the store again, so
the worker recovers by itself.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from churn.feature_store import ACTIVITY_ONLINE, unpack_activity
from churn.model.inputs import PROFILE_COLUMNS, profile_vector

log = logging.getLogger(__name__)


@dataclass
class Lookup:
    profiles: dict[str, np.ndarray | None]  # each customer's profile as model-input row (None: unknown)
    states: dict[str, dict | None]
    degraded: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class OnlineFeatures:
    def __init__(self, reader, attempts: int = 3, backoff_s: float = 0.05, profile_ttl_s: float = 600.0,
                 cache_size: int = 200_000, clock=time.monotonic, sleep=time.sleep):
        self.reader, self.attempts, self.backoff_s, self.profile_ttl_s = reader, attempts, backoff_s, profile_ttl_s
        self.clock, self.sleep = clock, sleep
        self._profiles: OrderedDict[str, tuple[float, dict | None]] = OrderedDict()
        self._states: OrderedDict[str, dict | None] = OrderedDict()
        self.cache_size = cache_size
        self.store_up = True

    def _with_retries(self, fn):
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                result = fn()
                self.store_up = True
                return result
            except Exception as exc:  # redis/Feast raise many kinds; all mean "not now"
                if attempt == self.attempts:
                    self.store_up = False
                    raise
                log.warning("online store read failed (attempt %d/%d): %s", attempt, self.attempts, exc)
                self.sleep(delay)
                delay *= 2

    def fetch(self, customers: list[str]) -> Lookup:
        """Profiles and activity states of ``customers`` (unique ids)."""
        return self.start(customers).finish()

    def start(self, customers: list[str]) -> "PendingLookup":
        """``fetch`` in two halves: the store asked now, in one round trip (the activity states, and the
        profiles not cached or older than ``profile_ttl_s``); the answer read by ``PendingLookup.finish``."""
        t0 = self.clock()
        stale = [c for c in customers if c not in self._profiles or t0 - self._profiles[c][0] > self.profile_ttl_s]
        reads = [("customer_activity", ACTIVITY_ONLINE, customers)]
        if stale:
            reads.append(("customer_profile", PROFILE_COLUMNS, stale))
        return PendingLookup(self, customers, stale, reads, self.reader.send(reads), t0, self.clock() - t0)

    def _finish(self, pending: "PendingLookup") -> Lookup:
        t0 = self.clock()
        customers, stale, now = pending.customers, pending.stale, pending.asked_at
        out = Lookup(profiles={}, states={})
        sent = [pending.sent]

        def read():  # the first attempt reads the answer asked for in ``start``; a retry asks again
            first = sent.pop() if sent else None
            return first.result() if first is not None else self.reader.send(pending.reads).result()

        try:
            answers = self._with_retries(read)
            for c, row in zip(customers, answers[0]):
                state = None if row is None else unpack_activity(row["ref_time"], row["active_days"], row["sums"],
                                                                 named=False)
                if state is not None:
                    state["covered_offsets"] = row.get("covered_offsets")
                out.states[c] = state
                self._remember(self._states, c, state)
            for c, row in zip(stale, answers[1] if stale else ()):
                known = row is not None and row["tenure_months"] is not None
                self._remember(self._profiles, c, (now, profile_vector(row) if known else None))
        except Exception as exc:
            out.degraded = True
            out.errors.append(f"{type(exc).__name__}: {exc}")
            log.error("online store unreachable, scoring %d customers degraded: %s", len(customers), exc)
            out.states = {c: self._states.get(c) for c in customers}
        out.profiles = {c: (self._profiles[c][1] if c in self._profiles else None) for c in customers}
        out.seconds = pending.asking_s + self.clock() - t0
        return out

    def _remember(self, cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self.cache_size:
            cache.popitem(last=False)


@dataclass
class PendingLookup:
    """A lookup asked of the store (``OnlineFeatures.start``) whose answer is not read yet."""

    features: OnlineFeatures
    customers: list[str]
    stale: list[str]  # customers whose profile is asked too
    reads: list
    sent: object  # the reader's ``send`` answer: ``result()`` reads it
    asked_at: float
    asking_s: float  # how long asking took

    def finish(self) -> Lookup:
        """The lookup's answer (read at most once). ``Lookup.seconds`` counts the time spent asking and
        reading, not the work done in between."""
        return self.features._finish(self)


def online_features(settings, feature_store=None, role: str = "scorer") -> OnlineFeatures:
    """The lookups as the settings choose (``scoring.online_reader``): Feast's Redis store read directly,
    or Feast's SDK (``feature_store``, else one opened from the settings); retries from the settings.
    Redis is read as ``role``'s user (``churn.security``)."""
    from churn.online_reader import FeastRedisReader, FeastSdkReader

    cfg = settings.scoring
    if cfg.online_reader == "redis":
        reader = FeastRedisReader.from_settings(settings, role)
    else:
        from churn.feature_store import store

        reader = FeastSdkReader(feature_store or store(settings, role))
    return OnlineFeatures(reader, attempts=cfg.lookup_attempts, backoff_s=cfg.lookup_backoff_s)
