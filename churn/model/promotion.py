"""Whether a newly trained model replaces the champion.

The candidate and the current champion are scored on the *same* validation
window. The candidate is promoted only if it passes the sanity checks and its
ROC AUC beats the champion's by at least ``margin``; otherwise it is kept as a
challenger, with the reason recorded in the registry's history.

One exception: a champion trained on synthetic data (the bootstrap's simulated
world) is replaced by the first candidate trained on real labels that passes the
sanity checks, whatever the two scores: the synthetic champion's score on the
validation window says nothing about how it ranks real customers. A synthetic
candidate never gets this privilege.

>>> decide({"roc_auc": 0.90, "calibration_error": 0.02, "spread": 0.3}, {"roc_auc": 0.88}, margin=0.005)
(True, 'ROC AUC 0.9000 beats the champion 0.8800 by 0.0200 (margin 0.005)')
>>> decide({"roc_auc": 0.881, "calibration_error": 0.02, "spread": 0.3}, {"roc_auc": 0.88}, margin=0.005)[0]
False
>>> decide({"roc_auc": 0.95, "calibration_error": 0.3, "spread": 0.3}, None, margin=0.005)
(False, 'sanity: calibration error 0.300 > 0.1')

A model trained on real labels replaces a synthetic champion without beating it; a synthetic one does not:

>>> real = {"roc_auc": 0.72, "calibration_error": 0.04, "spread": 0.2}
>>> decide(real, {"roc_auc": 0.81}, margin=0.005, champion_synthetic=True)
(True, 'replaces the synthetic champion: trained on real labels, ROC AUC 0.7200 against the synthetic champion 0.8100 on the same window (the synthetic score says nothing about real customers)')
>>> decide(real, {"roc_auc": 0.81}, margin=0.005, champion_synthetic=True, candidate_synthetic=True)[0]
False
>>> decide({**real, "spread": 0.01}, {"roc_auc": 0.81}, margin=0.005, champion_synthetic=True)
(False, 'sanity: risks barely vary (std 0.010 < 0.05)')
"""

from __future__ import annotations

import numpy as np

from churn.model.training import evaluate

MIN_AUC = 0.6
MAX_CALIBRATION_ERROR = 0.1
MIN_SPREAD = 0.05  # a model whose risks barely vary ranks nobody


def compare(candidate, champion, X_val, y_val, threshold: float = 0.5) -> tuple[dict, dict | None]:
    """Both models' metrics on the same rows (the champion's is None if there is none)."""
    cand = evaluate(candidate, X_val, y_val, threshold)
    cand["spread"] = round(float(np.std(candidate.predict(X_val))), 4)
    champ = None if champion is None else evaluate(champion, X_val, y_val, threshold)
    return cand, champ


def decide(candidate: dict, champion: dict | None, margin: float, *, champion_synthetic: bool = False,
           candidate_synthetic: bool = False) -> tuple[bool, str]:
    """(promote?, why). ``champion_synthetic``/``candidate_synthetic``: whether each was trained on
    synthetic data (a model card's ``training_source``); a candidate trained on real labels that passes
    the sanity checks replaces a synthetic champion without the margin."""
    if candidate["roc_auc"] < MIN_AUC:
        return False, f"sanity: ROC AUC {candidate['roc_auc']:.3f} < {MIN_AUC}"
    if candidate["calibration_error"] > MAX_CALIBRATION_ERROR:
        return False, f"sanity: calibration error {candidate['calibration_error']:.3f} > {MAX_CALIBRATION_ERROR}"
    if candidate["spread"] < MIN_SPREAD:
        return False, f"sanity: risks barely vary (std {candidate['spread']:.3f} < {MIN_SPREAD})"
    if champion is None:
        return True, "no champion yet"
    if champion_synthetic and not candidate_synthetic:
        return True, (f"replaces the synthetic champion: trained on real labels, ROC AUC {candidate['roc_auc']:.4f} "
                      f"against the synthetic champion {champion['roc_auc']:.4f} on the same window "
                      f"(the synthetic score says nothing about real customers)")
    gain = candidate["roc_auc"] - champion["roc_auc"]
    if gain >= margin:
        return True, (f"ROC AUC {candidate['roc_auc']:.4f} beats the champion {champion['roc_auc']:.4f} "
                      f"by {gain:.4f} (margin {margin:g})")
    return False, (f"ROC AUC {candidate['roc_auc']:.4f} does not beat the champion {champion['roc_auc']:.4f} "
                   f"by the margin {margin:g} (gain {gain:+.4f})")
