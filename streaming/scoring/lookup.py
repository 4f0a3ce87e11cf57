"""Batch feature lookups from Feast's online store, with retries, a last-known cache and degraded scoring.

One call per scoring batch fetches every customer's packed activity state
(``customer_activity``: ``ref_time``, ``active_days``, ``sums``). Profiles
(``customer_profile``) change only when the nightly job materializes them, so
they are fetched on first sight of a customer and again after ``profile_ttl_s``.

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

from churn.feature_store import ACTIVITY_ONLINE, unpack_activity
from churn.model.inputs import PROFILE_COLUMNS

log = logging.getLogger(__name__)


@dataclass
class Lookup:
    profiles: dict[str, dict | None]
    states: dict[str, dict | None]
    degraded: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class OnlineFeatures:
    def __init__(self, fs, attempts: int = 3, backoff_s: float = 0.05, profile_ttl_s: float = 600.0,
                 cache_size: int = 200_000, clock=time.monotonic, sleep=time.sleep):
        self.fs, self.attempts, self.backoff_s, self.profile_ttl_s = fs, attempts, backoff_s, profile_ttl_s
        self.clock, self.sleep = clock, sleep
        self._profiles: OrderedDict[str, tuple[float, dict | None]] = OrderedDict()
        self._states: OrderedDict[str, dict | None] = OrderedDict()
        self.cache_size = cache_size
        self.store_up = True

    def _read(self, view: str, names: list[str], customers: list[str]) -> dict[str, list]:
        return self.fs.get_online_features(
            features=[f"{view}:{n}" for n in names],
            entity_rows=[{"customer_id": c} for c in customers],
        ).to_dict()

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
        t0 = self.clock()
        out = Lookup(profiles={}, states={})
        now = self.clock()
        stale = [c for c in customers if c not in self._profiles or now - self._profiles[c][0] > self.profile_ttl_s]
        try:
            data = self._with_retries(lambda: self._read("customer_activity", ACTIVITY_ONLINE, customers))
            for i, c in enumerate(data["customer_id"]):
                state = unpack_activity(data["ref_time"][i], data["active_days"][i], data["sums"][i])
                out.states[c] = state
                self._remember(self._states, c, state)
            if stale:
                data = self._with_retries(lambda: self._read("customer_profile", PROFILE_COLUMNS, stale))
                for i, c in enumerate(data["customer_id"]):
                    profile = {n: data[n][i] for n in PROFILE_COLUMNS}
                    self._remember(self._profiles, c, (now, profile if profile["tenure_months"] is not None else None))
        except Exception as exc:
            out.degraded = True
            out.errors.append(f"{type(exc).__name__}: {exc}")
            log.error("online store unreachable, scoring %d customers degraded: %s", len(customers), exc)
            out.states = {c: self._states.get(c) for c in customers}
        out.profiles = {c: (self._profiles[c][1] if c in self._profiles else None) for c in customers}
        out.seconds = self.clock() - t0
        return out

    def _remember(self, cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
