"""Scoring one batch of CDRs: one feature lookup, one model call, then the alert rule per event.

``BatchScorer.score`` is plain logic over already-consumed messages: it parses
and validates each CDR (invalid ones are counted and skipped; the streaming
path dead-letters them), fetches all of the batch's customers from the online
store at once, scores every event with the champion (and the challenger in
shadow), and walks the events in order through each customer's band,
hysteresis and cooldown. It returns the score record of every valid event and
the alerts, as contract-conforming JSON bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from churn.contracts import CDR, format_time, parse_time
from churn.model.drift import DriftMonitor
from churn.model.inputs import MODEL_FEATURES, matrix
from streaming.scoring.bands import BANDS, AlertRule, with_hysteresis
from streaming.scoring.transactions import CustomerState


@dataclass
class Incoming:
    """One consumed CDR message."""

    partition: int
    offset: int
    produced_s: float  # the Kafka record timestamp (produce time)
    key: bytes | None
    value: bytes


@dataclass
class Scored:
    partition: int
    customer_id: str
    score: bytes  # churn-score record
    alert: bytes | None  # churn-risk record, if this event raised one
    band: str
    latency_s: float  # produce time of the CDR -> this record


@dataclass
class BatchResult:
    scored: list[Scored] = field(default_factory=list)
    invalid: Counter = field(default_factory=Counter)  # reason -> count
    degraded: bool = False
    lookup_s: float = 0.0
    model_s: float = 0.0
    model_version: str | None = None


class BatchScorer:
    def __init__(self, settings, models, features, challenger=None, clock=time.time):
        self.cfg = settings.scoring
        self.models, self.features, self.challenger, self.clock = models, features, challenger, clock
        self.rule = AlertRule(min_band=BANDS.index(settings.scoring.alert_min_band), cooldown_s=settings.scoring.cooldown_s)
        self.drift: DriftMonitor | None = None  # inputs and risks of the last events vs the champion's training data
        self._drift_version: str | None = None

    def _observe_drift(self, model, X, risk) -> None:
        version = model.meta["version"]
        if version != self._drift_version:  # a new champion: compare with its own training data
            baseline = model.meta.get("drift_baseline")
            usable = baseline is not None and baseline.features[:-1] == MODEL_FEATURES
            self.drift = DriftMonitor(baseline, self.cfg.drift_window) if usable else None
            self._drift_version = version
        if self.drift is not None:
            self.drift.observe(X, risk)

    def score(self, events: list[Incoming], state: dict[int, dict[str, CustomerState]]) -> BatchResult:
        result = BatchResult()
        valid: list[tuple[Incoming, dict, float]] = []
        for ev in events:
            cdr, bad = CDR.parse(ev.value, now=ev.produced_s)
            if bad is not None:
                result.invalid[bad.reason] += 1
                continue
            valid.append((ev, cdr, parse_time(cdr["event_time"])))
        if not valid:
            return result
        model = self.models.current()
        result.model_version = model.meta["version"]
        customers = list(dict.fromkeys(cdr["customer_id"] for _, cdr, _ in valid))
        looked = self.features.fetch(customers)
        result.degraded, result.lookup_s = looked.degraded, looked.seconds
        t0 = time.perf_counter()
        X = matrix([looked.profiles.get(c["customer_id"]) for _, c, _ in valid],
                   [looked.states.get(c["customer_id"]) for _, c, _ in valid],
                   [t for _, _, t in valid])
        risk = model.predict(X)
        self._observe_drift(model, X, risk)
        shadow = self.challenger.predict_many(X) if self.challenger is not None else [None] * len(valid)
        result.model_s = time.perf_counter() - t0

        alerts: list[int] = []
        rows = []
        for i, (ev, cdr, t) in enumerate(valid):
            customer = cdr["customer_id"]
            states = state.setdefault(ev.partition, {})
            before = states.get(customer)
            band = with_hysteresis(float(risk[i]), before.band if before else None, self.cfg.band_thresholds,
                                   self.cfg.hysteresis)
            after = CustomerState(band=band, alert_band=before.alert_band if before else None,
                                  alerted_at=before.alerted_at if before else None)
            raised = self.rule.should_alert(band, before.band if before else None, after.alert_band, after.alerted_at, t)
            if raised:
                after.alert_band, after.alerted_at = band, t
                alerts.append(i)
            states[customer] = after
            rows.append((ev, cdr, t, customer, before, after, raised))

        reasons = dict(zip(alerts, model.reasons(X[alerts], top=self.cfg.reasons))) if alerts else {}
        now = self.clock()
        emitted = format_time(now)
        for i, (ev, cdr, t, customer, before, after, raised) in enumerate(rows):
            st = looked.states.get(customer)
            freshness = None if not st else round(max(now - float(st["ref_time"]), 0.0), 3)
            record = {
                "customer_id": customer,
                "risk": round(float(risk[i]), 6),
                "band": BANDS[after.band],
                "model_version": result.model_version,
                "challenger_risk": None if shadow[i] is None else round(shadow[i], 6),
                "challenger_version": None if self.challenger is None else self.challenger.name,
                "trigger_event_id": cdr["event_id"],
                "trigger_event_time": cdr["event_time"],
                "scored_at": emitted,
                "feature_freshness_s": freshness,
                "degraded": looked.degraded,
                "alert_band": None if after.alert_band is None else BANDS[after.alert_band],
                "alerted_at": None if after.alerted_at is None else format_time(after.alerted_at),
                "source_partition": ev.partition,
                "source_offset": ev.offset,
            }
            alert = None
            if raised:
                alert = orjson.dumps({
                    "event_id": f"alert-{ev.partition}-{ev.offset}",
                    "customer_id": customer,
                    "risk": record["risk"],
                    "band": record["band"],
                    "previous_band": None if before is None else BANDS[before.band],
                    "model_version": result.model_version,
                    "trigger_event_id": cdr["event_id"],
                    "trigger_event_time": cdr["event_time"],
                    "feature_freshness_s": freshness,
                    "degraded": looked.degraded,
                    "emitted_at": emitted,
                    "reasons": reasons.get(i, []),
                })
            result.scored.append(Scored(partition=ev.partition, customer_id=customer, score=orjson.dumps(record),
                                        alert=alert, band=record["band"], latency_s=now - ev.produced_s))
        return result

