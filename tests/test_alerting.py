"""Alert volume, precision/recall by band and lift on the latest labelled window: exact figures on fixed
arrays, the model card's ``alerting``, the nightly's summary line and its Pushgateway metrics. No stack."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from churn.config import Settings
from churn.model.alerting import alert_report, alert_summary
from churn.model.bootstrap import simulated_training_set
from churn.model.registry import ModelRegistry
from churn.model.release import train_and_release

DAY = 86400.0
T = (0.3, 0.5, 0.7)


def fixed_window():
    """200 rows over 4 days: 40 churners; risks 0.0 .. 0.995 in steps of 0.005, churners where marked."""
    risk = np.arange(200) / 200.0
    y = np.zeros(200, dtype=int)
    y[[199, 198, 197, 195, 190]] = 1  # 5 of the top 10 (risks 0.95 .. 0.995)
    y[150:160] = 1  # 10 with risks 0.75 .. 0.795 (critical)
    y[110:120] = 1  # 10 with risks 0.55 .. 0.595 (high)
    y[70:80] = 1  # 10 with risks 0.35 .. 0.395 (medium)
    y[0:5] = 1  # 5 with risks 0.0 .. 0.02 (low: missed by every band)
    times = np.linspace(0.0, 4 * DAY, 200)
    return risk, y, times


def test_precision_recall_and_volume_by_band_are_exact():
    risk, y, times = fixed_window()
    r = alert_report(risk, y, times, T, min_band="high")
    assert r["window"] == {"rows": 200, "churners": 40, "days": 4.0, "base_churn_rate": 0.2}
    assert r["alert_min_band"] == "high"
    # critical: risk >= 0.7 is rows 140..199 (60 rows) holding 5 + 10 churners
    assert r["bands"]["critical"] == {"from_risk": 0.7, "alerts": 60, "churners": 15, "precision": 0.25,
                                      "recall": 0.375, "per_1000_customers_per_day": 75.0}
    # high: rows 100..199 (100 rows), 25 churners; 500 per 1,000 over 4 days
    assert r["bands"]["high"] == {"from_risk": 0.5, "alerts": 100, "churners": 25, "precision": 0.25,
                                  "recall": 0.625, "per_1000_customers_per_day": 125.0}
    assert r["bands"]["medium"] == {"from_risk": 0.3, "alerts": 140, "churners": 35, "precision": 0.25,
                                    "recall": 0.875, "per_1000_customers_per_day": 175.0}
    assert r["alerts_per_1000_customers_per_day"] == 125.0
    assert alert_report(risk, y, times, T, min_band="critical")["alerts_per_1000_customers_per_day"] == 75.0


def test_lift_of_the_top_1_and_5_percent():
    risk, y, times = fixed_window()
    lift = alert_report(risk, y, times, T)["lift"]
    # top 1 %: the 2 riskiest rows (0.995, 0.99), both churners: rate 1.0 against a base of 0.2
    assert lift["1%"] == {"rows": 2, "churners": 2, "churn_rate": 1.0, "lift": 5.0}
    # top 5 %: 10 rows (0.95 .. 0.995), 5 churners
    assert lift["5%"] == {"rows": 10, "churners": 5, "churn_rate": 0.5, "lift": 2.5}
    assert alert_summary(alert_report(risk, y, times, T)) == (
        "high+ 125.0 alerts/1k customers/day, precision 0.25, recall 0.62; lift top 1% 5.00x, top 5% 2.50x")


def test_figures_that_would_divide_by_zero_are_none():
    # nobody reaches critical, nobody churned, every row at the same time
    r = alert_report([0.1, 0.4, 0.6], [0, 0, 0], [5.0, 5.0, 5.0], T, min_band="high")
    assert r["window"] == {"rows": 3, "churners": 0, "days": 0.0, "base_churn_rate": 0.0}
    assert r["bands"]["critical"] == {"from_risk": 0.7, "alerts": 0, "churners": 0, "precision": None,
                                      "recall": None, "per_1000_customers_per_day": None}
    assert r["bands"]["high"]["precision"] == 0.0 and r["bands"]["high"]["recall"] is None
    assert r["alerts_per_1000_customers_per_day"] is None
    assert r["lift"]["1%"] == {"rows": 1, "churners": 0, "churn_rate": 0.0, "lift": None}
    assert alert_summary(r) == ("high+ - alerts/1k customers/day, precision 0.00, recall -; "
                                "lift top 1% -x, top 5% -x")
    empty = alert_report([], [], [], T)
    assert empty["window"] == {"rows": 0, "churners": 0, "days": 0.0, "base_churn_rate": None}
    assert empty["lift"]["5%"] == {"rows": 0, "churners": 0, "churn_rate": None, "lift": None}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        alert_report([0.1, 0.2], [0], [0.0, 1.0], T)
    with pytest.raises(ValueError, match="min_band must be one of medium, high, critical"):
        alert_report([0.1], [0], [0.0], T, min_band="low")


def test_the_gauges_carry_the_report():
    from batch.nightly import alerting_gauges

    risk, y, times = fixed_window()
    registry = CollectorRegistry()
    alerting_gauges(alert_report(risk, y, times, T), registry)
    text = generate_latest(registry).decode()
    for line in ("churn_model_alerts_per_1000_customers_per_day 125.0",
                 "churn_model_base_churn_rate 0.2",
                 'churn_model_alert_precision{band="medium"} 0.25',
                 'churn_model_alert_precision{band="critical"} 0.25',
                 'churn_model_alert_recall{band="medium"} 0.875',
                 'churn_model_alert_recall{band="high"} 0.625',
                 'churn_model_alert_recall{band="critical"} 0.375',
                 'churn_model_lift{top="1%"} 5.0',
                 'churn_model_lift{top="5%"} 2.5'):
        assert line in text.splitlines(), (line, text)
    # a figure that is None is left out, not exported as 0
    registry = CollectorRegistry()
    alerting_gauges(alert_report([0.1, 0.4, 0.6], [0, 0, 0], [5.0, 5.0, 5.0], T), registry)
    text = generate_latest(registry).decode()
    assert 'churn_model_alert_precision{band="high"} 0.0' in text
    assert 'band="critical"' not in text and "churn_model_lift{" not in text
    assert "churn_model_alerts_per_1000_customers_per_day " not in text


def test_the_nightly_reports_the_serving_models_alerting_and_pushes_it(tmp_path, monkeypatch):
    """The train step's summary line gives the new model's figures; the metrics file gets the figures of
    the champion after the promotion step (here the new model, promoted)."""
    from datetime import date

    import batch.gold
    import batch.nightly
    import batch.train
    from batch.nightly import run_nightly
    from churn.model.release import Release

    risk, y, times = fixed_window()
    report = alert_report(risk, y, times, T)
    release = Release(version="xgb-1", promoted=True, reason="no champion yet", metrics={"roc_auc": 0.91},
                      champion_metrics=None, source="labels", alerting=report)
    gold = SimpleNamespace(silver_rows=10, customer_day_rows=5, snapshot_rows=3, date_from=date(2026, 10, 1),
                           date_to=date(2026, 10, 2))
    monkeypatch.setattr(batch.gold, "stage_gold", lambda *a: gold)
    monkeypatch.setattr(batch.gold, "check_gold", lambda *a: SimpleNamespace(text=lambda: "quality gate passed"))
    monkeypatch.setattr(batch.gold, "publish_gold", lambda *a: gold)
    s = Settings(run_dir=tmp_path, prometheus={"pushgateway_port": 1},  # nobody there: not pushed
                 scoring={"registry_dir": tmp_path / "models"})
    ModelRegistry(s.scoring.registry_dir).register(b"model", {"validation": {"roc_auc": 0.91}, "alerting": report,
                                                              "trained_on": "labels"}, version="xgb-1")
    monkeypatch.setattr(batch.train, "train_challenger", lambda *a, **k: "xgb-1")
    monkeypatch.setattr(batch.train, "promote_challengers", lambda *a: [release])
    monkeypatch.setattr(batch.nightly, "materialize_profiles", lambda s: "materialized")
    got = run_nightly(s, date(2026, 10, 1), date(2026, 10, 2))
    assert [(st.name, st.ok) for st in got.steps] == [(name, True) for name in batch.nightly.STEPS]
    assert got.alerting == report
    assert ("alerts on the latest labelled window: high+ 125.0 alerts/1k customers/day, precision 0.25, "
            "recall 0.62; lift top 1% 5.00x, top 5% 2.50x") in got.steps[3].detail
    assert "xgb-1 ROC AUC 0.91: promoted (no champion yet)" == got.steps[4].detail
    metrics = (tmp_path / "metrics" / "batch.prom").read_text().splitlines()
    assert 'churn_model_lift{top="1%"} 5.0' in metrics and 'churn_model_alert_precision{band="high"} 0.25' in metrics
    assert "churn_batch_quality_gate_passed 1.0" in metrics

    # kept as challenger: the champion's figures on the same window are the ones in service
    champion = alert_report(risk[::-1], y, times, T)
    kept = Release(version="xgb-2", promoted=False, reason="does not beat", metrics={"roc_auc": 0.9},
                   champion_metrics={"roc_auc": 0.95}, source="labels", alerting=report, champion_alerting=champion)
    monkeypatch.setattr(batch.train, "promote_challengers", lambda *a: [kept])
    assert run_nightly(s, date(2026, 10, 1), date(2026, 10, 2)).alerting == champion


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    s = Settings(scoring={"registry_dir": tmp_path_factory.mktemp("models")})
    ts = simulated_training_set(s, customers=1000, days=45, end_s=1.79e9, seed=7)
    release = train_and_release(s, ts.X, ts.y, ts.at_s, kind="t", source="simulated", n_trials=0)
    return release, ModelRegistry(s.scoring.registry_dir).card(release.version), ts


def test_a_trained_models_card_has_sane_alerting(small_release):
    release, card, ts = small_release
    a = card["alerting"]
    print("alerting on the validation window:", a)
    assert a == release.alerting
    assert a["window"]["rows"] == card["windows"]["validate"]["rows"]
    days = (card["windows"]["validate"]["to"] - card["windows"]["validate"]["from"]) / DAY
    assert a["window"]["days"] == pytest.approx(days, abs=1e-4) and a["window"]["days"] > 0
    assert a["window"]["churners"] == card["validation"]["positives"]
    assert a["alert_min_band"] == "high"
    for band in ("medium", "high", "critical"):
        b = a["bands"][band]
        assert 0.0 <= b["precision"] <= 1.0 and 0.0 <= b["recall"] <= 1.0, (band, b)
    # bands are nested: a higher band alerts on fewer rows, catches fewer churners
    assert a["bands"]["medium"]["alerts"] >= a["bands"]["high"]["alerts"] >= a["bands"]["critical"]["alerts"] > 0
    assert a["bands"]["medium"]["recall"] >= a["bands"]["high"]["recall"] >= a["bands"]["critical"]["recall"]
    # the riskiest customers churn more often than the average one
    assert a["lift"]["1%"]["lift"] >= 1.0 and a["lift"]["5%"]["lift"] >= 1.0
    assert a["lift"]["1%"]["rows"] == max(1, round(0.01 * a["window"]["rows"]))
    assert a["alerts_per_1000_customers_per_day"] == a["bands"]["high"]["per_1000_customers_per_day"] > 0
