"""From a training set to a registered model: train and select, write the card and plots, promote or keep.

Two steps: ``train_challenger`` trains and registers a challenger awaiting a decision
(its validation window stored with it), ``decide_challenger`` applies the promotion
rule to it against the champion of the moment; ``train_and_release`` runs both. The
nightly runs them as two steps (``batch.nightly``: train, promotion), the bootstrap
and ``churn batch train`` at once, so every model in the registry has the same kind
of card and went through the same promotion rule. The
card says where the model comes from: ``trained_on`` in words, and
``training_source``, ``synthetic`` (the simulator's world) or ``labels`` (real
churn labels, with ``labels``: how many and the first and last label time).
"""

from __future__ import annotations

from dataclasses import dataclass

from churn.config import Settings
from churn.model.alerting import alert_report
from churn.model.card import importance, write_plots
from churn.model.drift import DriftBaseline
from churn.model.inputs import MODEL_FEATURES
from churn.model.promotion import compare, decide
from churn.model.registry import LABELS, SYNTHETIC, ModelRegistry
from churn.model.training import evaluate, train


@dataclass
class Release:
    version: str
    promoted: bool
    reason: str
    metrics: dict
    champion_metrics: dict | None
    source: str = ""  # what it was trained on (the card's ``trained_on``)
    training_source: str = SYNTHETIC  # the card's ``training_source``
    #: ``churn.model.alerting.alert_report`` of the new model and of the champion on the validation window.
    alerting: dict | None = None
    champion_alerting: dict | None = None

    @property
    def serving_alerting(self) -> dict | None:
        """The alerting figures of the model that is champion after the decision (None: there is none)."""
        return self.alerting if self.promoted else self.champion_alerting


#: A registered model's card ``decision`` until the promotion step has decided on it.
PENDING = {"promoted": None, "reason": "awaiting the promotion step"}


def train_challenger(settings: Settings, X, y, times, *, kind: str, source: str, n_trials: int, seed: int = 0,
                     observed=None, training_source: str = SYNTHETIC, labels: dict | None = None) -> str:
    """Train on (X, y, times) and register the model as a challenger awaiting the promotion step: its card
    (metrics and alerting on the validation window, no decision yet), drift baseline, plots and validation
    window (written last: a version becomes ``ModelRegistry.pending`` only once all of it is there).
    ``observed``: each row's ``churn.model.drift.observed_days``, for the drift baseline (None: all mature).
    ``training_source``: ``synthetic`` or ``labels``; ``labels``: for the card, e.g. ``{"count": ..,
    "first_label_time": .., "last_label_time": ..}``. Returns the version."""
    if training_source not in (SYNTHETIC, LABELS):
        raise ValueError(f"training_source must be {SYNTHETIC!r} or {LABELS!r}, not {training_source!r}")
    cfg = settings.training
    result = train(X, y, times, MODEL_FEATURES, n_trials=n_trials, seed=seed, threshold=cfg.operating_threshold)
    registry = ModelRegistry(settings.scoring.registry_dir)
    X_va, y_va = result.validation
    cand, _ = compare(result.model, None, X_va, y_va, cfg.operating_threshold)
    card = {
        "kind": kind,
        "trained_on": source,
        "training_source": training_source,
        "labels": labels if training_source == LABELS else None,
        "features": MODEL_FEATURES,
        "params": result.params,
        "family": result.family,
        "selection": {
            "rule": "each family searched with the same Optuna budget on the same windows; the family whose best "
                    "trial has the highest ROC AUC on the calibration window wins (the validation window stays "
                    "unseen by the choice)",
            "chosen": result.family,
            "families": {name: {"search_auc_on_calibration_window": f["search_auc"],
                                "validation": f["validation"], "params": f["params"], "trials": len(f["trials"])}
                         for name, f in result.families.items()},
        },
        "search": {"trials": len(result.trials), "space": f"churn.model.families.FAMILIES[{result.family!r}]",
                   "best_auc_on_calibration_window": result.families[result.family]["search_auc"]},
        "windows": {k: {"from": v[0], "to": v[1], "rows": v[2]} for k, v in result.windows.items()},
        "validation": cand,
        "alerting": _alerting(settings, result.model, X_va, y_va, result.validation_times),
        "champion_on_same_window": None,
        "calibration": {"method": "Platt on the calibration window", "a": result.model.a, "b": result.model.b},
        "importance": importance(result.model, X_va),
        "decision": PENDING,
        "plots": ["roc.png", "calibration.png", "importance.png"],
    }
    version = registry.register(result.model.to_bytes(), card, version=registry.new_version(kind))
    # what the model was trained on, for the live drift check (churn.model.drift)
    registry.save_drift_baseline(version, DriftBaseline.fit(X, MODEL_FEATURES, result.model.predict(X), observed))
    write_plots(result.model, X_va, y_va, registry.root / version)
    registry.save_validation(version, X_va, y_va, result.validation_times)
    return version


def _alerting(settings: Settings, model, X_va, y_va, times) -> dict:
    sc = settings.scoring
    return alert_report(model.predict(X_va), y_va, times, sc.band_thresholds, sc.alert_min_band)


def decide_challenger(settings: Settings, version: str, margin: float | None = None) -> Release:
    """The promotion step for one registered challenger: it and the champion of now scored on its validation
    window; promoted if it beats the champion by ``margin`` (default ``training.promotion_margin``) or, trained
    on real labels, if the champion is synthetic (``churn.model.promotion.decide``); otherwise kept as a
    challenger. The card gets the champion's figures and the decision, the registry's history the event. A
    version decided before is not decided again: its recorded decision is returned."""
    cfg = settings.training
    registry = ModelRegistry(settings.scoring.registry_dir)
    card = registry.card(version)
    decided = card["decision"]["promoted"] is not None
    champ = champion_alerts = None
    if decided:
        before = card.get("champion_on_same_window") or None
        if before is not None:
            champion_alerts = before.get("alerting")
            champ = {k: v for k, v in before.items() if k not in ("version", "training_source", "alerting")}
        promote, reason = card["decision"]["promoted"], card["decision"]["reason"]
    elif registry.champion_version() == version:  # made champion by hand meanwhile (`churn model promote`)
        promote, reason = True, "already the champion when the promotion step came (promoted by hand)"
        registry.update_card(version, decision={"promoted": promote, "reason": reason})
    else:
        X_va, y_va, times = registry.validation(version)
        champion = registry.load_champion()
        if champion is not None:
            champ = evaluate(champion, X_va, y_va, cfg.operating_threshold)
            champion_alerts = _alerting(settings, champion, X_va, y_va, times)
        promote, reason = decide(card["validation"], champ, cfg.promotion_margin if margin is None else margin,
                                 champion_synthetic=champion is not None
                                 and champion.meta["training_source"] == SYNTHETIC,
                                 candidate_synthetic=card["training_source"] == SYNTHETIC)
        registry.update_card(version, decision={"promoted": promote, "reason": reason},
                             champion_on_same_window=None if champ is None else {
                                 "version": champion.meta["version"],
                                 "training_source": champion.meta["training_source"], **champ,
                                 "alerting": champion_alerts})
        (registry.promote if promote else registry.reject)(version, reason=reason)
    return Release(version=version, promoted=promote, reason=reason, metrics=card["validation"],
                   champion_metrics=champ, source=card["trained_on"], training_source=card["training_source"],
                   alerting=card["alerting"], champion_alerting=champion_alerts)


def train_and_release(settings: Settings, X, y, times, *, kind: str, source: str, n_trials: int,
                      margin: float | None = None, seed: int = 0, observed=None, training_source: str = SYNTHETIC,
                      labels: dict | None = None) -> Release:
    """Train, register and decide at once: ``train_challenger`` then ``decide_challenger`` (the bootstrap,
    ``churn batch train``)."""
    version = train_challenger(settings, X, y, times, kind=kind, source=source, n_trials=n_trials, seed=seed,
                               observed=observed, training_source=training_source, labels=labels)
    return decide_challenger(settings, version, margin=margin)
