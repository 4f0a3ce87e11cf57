"""Drift detection: a simulator whose customers' data usage grows is seen in the data features' PSI,
and only there (the alert rule's threshold is ``PSI_ALERT``; tests/test_monitoring.py sees the
alert in the real Prometheus)."""

from __future__ import annotations

import numpy as np
import pytest

from churn.config import Settings
from churn.features import DAY
from churn.model.bootstrap import simulated_training_set
from churn.model.drift import PSI_ALERT, RISK, DriftBaseline, DriftMonitor
from churn.model.inputs import MODEL_FEATURES
from churn.model.release import train_and_release

END = 1.79e9


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    s = Settings(run_dir=tmp_path_factory.mktemp("drift"))
    ts = simulated_training_set(s, customers=1500, days=60, end_s=END, seed=1, without_activity=0.0)
    release = train_and_release(s, ts.X, ts.y, ts.at_s, kind="drift-test", source="simulated", n_trials=0,
                                observed=ts.observed_days)
    from churn.model.registry import ModelRegistry

    model = ModelRegistry(s.scoring.registry_dir).load_champion()
    assert model.meta["version"] == release.version
    return s, model


def live_psi(s, model, mature_only: bool = True, **simulator) -> dict[str, float]:
    live = simulated_training_set(s, customers=1500, days=60, end_s=END + 10 * DAY, seed=2, without_activity=0.0,
                                  **simulator)
    monitor = DriftMonitor(model.meta["drift_baseline"], window=5000)
    risk = model.predict(live.X)
    observed = live.observed_days if mature_only else None
    monitor.observe(live.customer_id, live.X, risk * 0.0, observed)
    monitor.observe(live.customer_id, live.X, risk, observed)  # the window keeps each customer's latest input
    assert monitor.observed == 1500
    return monitor.psi()


def test_the_release_keeps_a_baseline_of_every_model_input_and_the_risk(champion):
    _, model = champion
    baseline: DriftBaseline = model.meta["drift_baseline"]
    assert baseline.features == [*MODEL_FEATURES, RISK]
    assert DriftBaseline.from_json(baseline.to_json()).counts[0].tolist() == baseline.counts[0].tolist()
    assert sum(baseline.counts[MODEL_FEATURES.index("calls_7d")]) == 1500


def test_a_shift_in_data_usage_crosses_the_threshold_in_the_data_features_only(champion):
    s, model = champion
    same = live_psi(s, model)
    shifted = live_psi(s, model, data_scale=5.0)
    data = ["data_mb_1d", "data_mb_7d", "data_mb_30d"]  # (their 7d/30d trend is a ratio: unmoved)
    usage = ["calls_7d", "call_minutes_7d", "sms_7d", "care_calls_30d", "offnet_share_7d"]
    print({f: round(same[f], 3) for f in data + usage}, {f: round(shifted[f], 3) for f in data + usage})
    for f in data:
        assert same[f] < 0.1 < PSI_ALERT < shifted[f], f  # no drift without the shift; significant with it
    for f in usage:
        assert same[f] < 0.1 and shifted[f] < 0.1, f  # the rest of the behaviour did not move
    assert max(v for k, v in same.items()) < PSI_ALERT  # a fresh sample of the same population: no alert


def test_a_young_pipeline_of_the_same_population_raises_no_drift(champion):
    """A pipeline that has seen two days of the customers' history (a fresh install): the 7- and 30-day values are small because the
    history is short. They are left out until mature; what is compared does not drift."""
    s, model = champion
    young = live_psi(s, model, seen_from_s=END - 5 * DAY)
    assert max(young.values()) < 0.1, {k: round(v, 3) for k, v in young.items() if v >= 0.1}
    assert "data_mb_1d" in young and "tenure_months" in young  # mature after 3 days / the profile: compared
    assert "data_mb_7d" not in young and "calls_30d" not in young and "risk" not in young  # not yet
    # the same inputs compared whatever their maturity: the short history looks like drift
    unmatured = live_psi(s, model, seen_from_s=END - 5 * DAY, mature_only=False)
    assert min(unmatured[f] for f in ("calls_30d", "call_minutes_30d", "events_trend_7d_30d")) > PSI_ALERT, unmatured


def test_batches_queued_then_binned_together_give_what_binning_each_at_once_gives():
    """The worker's many small batches are binned together when the PSI is read: the same bins, a
    customer's later row winning, whether its batches were queued or binned one by one."""
    rng = np.random.default_rng(3)
    baseline = DriftBaseline.fit(rng.normal(0.0, 1.0, (3000, 2)), ["a", "b"], risk=rng.random(3000),
                                 observed=rng.uniform(0, 60, 3000))
    queued, each = DriftMonitor(baseline, window=500), DriftMonitor(baseline, window=500, queue_rows=1)
    for b in range(40):  # 40 batches over 800 customers: the window of 500 turns over, customers repeat
        n = int(rng.integers(1, 60))
        customers = [f"c{i}" for i in rng.integers(0, 800, n)]
        X, risk, observed = rng.normal(0.5, 1.2, (n, 2)), rng.random(n), rng.uniform(0, 60, n)
        observed = None if b % 5 == 0 else observed  # some batches given as all mature
        queued.observe(customers, X, risk, observed)
        each.observe(customers, X, risk, observed)
    assert queued._queued_rows > 0 and each._queued_rows == 0  # nothing binned yet on one side
    assert queued.observed == each.observed == 500
    assert queued.psi() == each.psi() and set(each.psi()) == {"a", "b", RISK}
    assert np.array_equal(queued._bins, each._bins) and queued._slot == each._slot
