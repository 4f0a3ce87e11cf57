"""Scoring one batch of CDRs: one feature lookup, one model call, then the alert rule per event.

``BatchScorer.score`` is plain logic over already-consumed messages: it parses
and validates each CDR (invalid ones are counted and skipped; the streaming
path dead-letters them), asks the online store for all of the batch's customers
at once, hands the valid CDRs to the overlay (``streaming.scoring.overlay``)
while the store answers, and builds each CDR's model input from the pushed state
plus the CDRs the store does not cover yet, up to and including this one. It
scores every event with the champion (and the challenger in shadow) and walks
the events in order through each customer's band, hysteresis and cooldown.

``BatchScorer.rescore`` does the same for customers who went quiet: their
state read at the current time, through the same rule, triggered by time.

Both return the score record of every decision and the alerts, as
contract-conforming JSON bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

import numpy as np

from churn.contracts import CDR, format_time, parse_time
from churn.features import INPUT_COLUMNS, event_weights
from churn.model.drift import DriftMonitor, observed_days
from churn.model.inputs import MODEL_FEATURES, matrix
from streaming.scoring.bands import BANDS, AlertRule, with_hysteresis
from streaming.scoring.lookup import Lookup
from streaming.scoring.overlay import EXACT, ActivityOverlay, Input
from streaming.scoring.transactions import CustomerState

#: CDR fields the measures weigh (``churn.features``), in the order ``event_weights`` reads them.
_WEIGHED = [c for c in INPUT_COLUMNS if c not in ("customer_id", "event_time")]
TRIGGER_CDR, TRIGGER_TIME = "cdr", "time"


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
    latency_s: float | None  # produce time of the CDR -> this record (None: triggered by time)
    inputs: Input | None = None


@dataclass
class BatchResult:
    scored: list[Scored] = field(default_factory=list)
    invalid: Counter = field(default_factory=Counter)  # reason -> count
    degraded: bool = False  # the online store could not be read
    lookup_s: float = 0.0
    model_s: float = 0.0
    model_version: str | None = None


class BatchScorer:
    def __init__(self, settings, models, features, challenger=None, clock=time.time, overlay=None):
        self.cfg = settings.scoring
        self.models, self.features, self.challenger, self.clock = models, features, challenger, clock
        self.rule = AlertRule(min_band=BANDS.index(settings.scoring.alert_min_band), cooldown_s=settings.scoring.cooldown_s)
        self.overlay = overlay if overlay is not None else ActivityOverlay(
            max_events=self.cfg.overlay_max_events, own_states=self.cfg.overlay_own_states,
            dedup_window_s=settings.streaming.dedup_window_s, allowed_lateness_s=settings.streaming.allowed_lateness_s)
        self.drift: DriftMonitor | None = None  # customers' latest inputs and risks vs the champion's training data
        self._drift_version: str | None = None

    def _observe_drift(self, model, customers, X, risk, states, at) -> None:
        version = model.meta["version"]
        if version != self._drift_version:  # a new champion: compare with its own training data
            baseline = model.meta.get("drift_baseline")
            usable = baseline is not None and baseline.features[:-1] == MODEL_FEATURES
            self.drift = DriftMonitor(baseline, self.cfg.drift_customers) if usable else None
            self._drift_version = version
        if self.drift is not None:
            self.drift.observe(customers, X, risk, observed_days(states, at))

    def score(self, events: list[Incoming], state: dict[int, dict[str, CustomerState]]) -> BatchResult:
        """Every valid CDR of ``events`` scored, its input including itself."""
        result = BatchResult()
        valid = self._valid(events, result.invalid)
        if not valid:
            return result
        decisions = [(ev.partition, cdr["customer_id"], ev.offset) for ev, cdr, _ in valid]
        lookup = self.features.start(list(dict.fromkeys(c for _, c, _ in decisions)))
        if self.cfg.overlay:  # while the online store answers
            self._admit(valid)
        triggers = [(ev, cdr["event_id"], cdr["event_time"], t) for ev, cdr, t in valid]
        return self._decide(result, decisions, triggers, state, lookup.finish())

    def rescore(self, due: list[tuple[int, str]], state: dict[int, dict[str, CustomerState]]) -> BatchResult:
        """Customers ``(partition, customer)`` that went quiet, scored at the current time."""
        result = BatchResult()
        if not due:
            return result
        now = self.clock()
        decisions = [(p, c, None) for p, c in due]
        looked = self.features.fetch(list(dict.fromkeys(c for _, c, _ in decisions)))
        return self._decide(result, decisions, [(None, None, None, now)] * len(due), state, looked)

    def admit(self, events: list[Incoming]) -> int:
        """CDRs already scored, to the overlay only (a worker taking a partition over reloads those the
        stream's pushed state does not cover yet). Returns how many were valid."""
        valid = self._valid(events, Counter())
        if valid and self.cfg.overlay:
            self._admit(valid)
        return len(valid)

    @staticmethod
    def _valid(events: list[Incoming], invalid: Counter) -> list[tuple[Incoming, dict, float]]:
        valid = []
        for ev in events:
            cdr, bad = CDR.parse(ev.value, now=ev.produced_s)
            if bad is not None:
                invalid[bad.reason] += 1
                continue
            valid.append((ev, cdr, parse_time(cdr["event_time"])))
        return valid

    def _admit(self, valid) -> None:
        """The batch's valid CDRs to the overlay, partition by partition (it applies the stream's rules)."""
        weights = event_weights({c: np.asarray([cdr.get(c) for _, cdr, _ in valid],
                                               dtype=float if c in ("duration_s", "data_bytes", "charge") else object)
                                 for c in _WEIGHED})
        by_partition: dict[int, list[int]] = {}
        for i, (ev, _, _) in enumerate(valid):
            by_partition.setdefault(ev.partition, []).append(i)
        for partition, rows in by_partition.items():
            self.overlay.admit(partition, [valid[i][0].offset for i in rows], [valid[i][1]["customer_id"] for i in rows],
                               [valid[i][1]["event_id"] for i in rows], [valid[i][2] for i in rows], weights[rows])

    def _decide(self, result: BatchResult, decisions, triggers, state, looked: Lookup) -> BatchResult:
        """Score ``decisions`` ``(partition, customer, offset or None)``, each with its trigger
        ``(incoming or None, event id, event time text, time)``, on the online features ``looked`` up for
        their customers, and walk them through the alert rule."""
        model = self.models.current()
        result.model_version = model.meta["version"]
        result.degraded, result.lookup_s = looked.degraded, looked.seconds
        inputs = (self.overlay.inputs(decisions, looked.states) if self.cfg.overlay
                  else [Input(looked.states.get(c)) for _, c, _ in decisions])
        t0 = time.perf_counter()
        at = [t for *_, t in triggers]
        states = [inp.state for inp in inputs]
        X = matrix([looked.profiles.get(c) for _, c, _ in decisions], states, at)
        risk = model.predict(X)
        self._observe_drift(model, [c for _, c, _ in decisions], X, risk, states, at)
        shadow = self.challenger.predict_many(X) if self.challenger is not None else [None] * len(decisions)
        result.model_s = time.perf_counter() - t0

        alerts: list[int] = []
        rows = []
        now = self.clock()
        for i, ((partition, customer, _), (_, _, _, t)) in enumerate(zip(decisions, triggers)):
            states = state.setdefault(partition, {})
            before = states.pop(customer, None)  # re-inserted last: each partition's dict is in order of decision
            band = with_hysteresis(float(risk[i]), before.band if before else None, self.cfg.band_thresholds,
                                   self.cfg.hysteresis)
            after = CustomerState(band=band, alert_band=before.alert_band if before else None,
                                  alerted_at=before.alerted_at if before else None, decided_at=now)
            raised = self.rule.should_alert(band, before.band if before else None, after.alert_band, after.alerted_at, t)
            if raised:
                after.alert_band, after.alerted_at = band, t
                alerts.append(i)
            states[customer] = after
            rows.append((before, after, raised))

        reasons = dict(zip(alerts, model.reasons(X[alerts], top=self.cfg.reasons))) if alerts else {}
        emitted = format_time(now)
        for i, ((partition, customer, _), (ev, event_id, event_time, t), inp, (before, after, raised)) in enumerate(
                zip(decisions, triggers, inputs, rows)):
            st = inp.state
            age = None if st is None else round(max(t - st["ref_time"], 0.0), 3)
            degraded = looked.degraded or inp.basis != EXACT
            degraded_reason = "online_store_unreachable" if looked.degraded else (None if inp.basis == EXACT
                                                                                   else inp.basis)
            trigger = TRIGGER_TIME if ev is None else TRIGGER_CDR
            record = {
                "customer_id": customer,
                "risk": round(float(risk[i]), 6),
                "band": BANDS[after.band],
                "model_version": result.model_version,
                "challenger_risk": None if shadow[i] is None else round(shadow[i], 6),
                "challenger_version": None if self.challenger is None else self.challenger.name,
                "trigger": trigger,
                "trigger_event_id": event_id,
                "trigger_event_time": event_time,
                "scored_at": emitted,
                "newest_event_age_s": age,
                "events_not_included": inp.not_included,
                "degraded": degraded,
                "degraded_reason": degraded_reason,
                "alert_band": None if after.alert_band is None else BANDS[after.alert_band],
                "alerted_at": None if after.alerted_at is None else format_time(after.alerted_at),
                "source_partition": partition,
                "source_offset": None if ev is None else ev.offset,
            }
            if self.cfg.record_inputs:
                record["activity_state"] = st
            alert = None
            if raised:
                alert_id = (f"alert-{partition}-{ev.offset}" if ev is not None else
                            f"alert-{partition}-t{int(t * 1000)}-{hashlib.sha1(customer.encode()).hexdigest()[:12]}")
                alert = orjson.dumps({
                    "event_id": alert_id,
                    "customer_id": customer,
                    "risk": record["risk"],
                    "band": record["band"],
                    "previous_band": None if before is None else BANDS[before.band],
                    "model_version": result.model_version,
                    "trigger": trigger,
                    "trigger_event_id": event_id,
                    "trigger_event_time": event_time,
                    "newest_event_age_s": age,
                    "events_not_included": inp.not_included,
                    "degraded": degraded,
                    "emitted_at": emitted,
                    "reasons": reasons.get(i, []),
                })
            result.scored.append(Scored(partition=partition, customer_id=customer, score=orjson.dumps(record),
                                        alert=alert, band=record["band"],
                                        latency_s=None if ev is None else now - ev.produced_s, inputs=inp))
        return result
