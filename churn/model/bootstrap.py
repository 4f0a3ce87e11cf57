"""The first champion, trained at setup so the system scores from minute one.

It learns from the customer table (profiles) and a simulated behaviour history
of the same customers: the simulator's CDRs before each churn label, turned
into activity features with the very functions the stream uses
(``churn.features`` numpy rendering, ``churn.model.inputs``), read at an
observation time up to a week before the label. Training rows come from earlier
labels, calibration and validation from later ones. The nightly retrain
(``churn batch train``) replaces this model with one trained on the real Silver
history through Feast.

Its card says ``training_source: synthetic``: its validation scores measure how
well it ranks simulated customers, nothing about real ones, so the first retrain
on real labels that passes the sanity checks replaces it without having to beat
it (``churn.model.promotion``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from churn.config import Settings
from churn.features import DAY, partial_sums_numpy
from churn.model.drift import observed_days
from churn.model.inputs import matrix


@dataclass
class TrainingSet:
    X: np.ndarray
    y: np.ndarray
    at_s: np.ndarray  # observation time of each row
    customer_id: np.ndarray
    #: How long the pipeline had seen each row's customer (``churn.model.drift.observed_days``).
    observed_days: np.ndarray | None = None


def simulated_training_set(settings: Settings, customers: int = 3000, days: float = 60.0, end_s: float | None = None,
                           lookahead_days: float = 7.0, seed: int | None = None,
                           without_activity: float = 0.15, data_scale: float = 1.0,
                           seen_from_s: float | None = None) -> TrainingSet:
    """Rows (profile + activity at an observation time, churned within ``lookahead_days``) from a simulation.

    A share ``without_activity`` of the rows have no activity features, as for a customer the stream
    has not pushed yet: the model learns to fall back on the profile instead of guessing. With
    ``seen_from_s``, the events before it are not seen, as by a pipeline started then.
    """
    from churn.feature_store import profile_frame
    from churn.profiles import telco_table
    from churn.simulator.simulator import Simulator

    seed = settings.simulator.seed if seed is None else seed
    end_s = float(end_s if end_s is not None else (np.floor(time.time() / DAY) * DAY))
    sim = Simulator(seed=seed, start_s=end_s - days * DAY, end_s=end_s, customers=customers,
                    precursor_days=settings.simulator.precursor_days, csv_path=telco_table(settings),
                    data_scale=data_scale, signal_strength=settings.simulator.signal_strength)
    ids = np.asarray(sim.pop.customer_id, dtype=object)
    cols = sim.silver_columns(slice_s=6 * 3600.0)
    if seen_from_s is not None:
        seen = np.asarray(cols["event_time"], dtype=float) >= seen_from_s
        cols = {k: np.asarray(v)[seen] for k, v in cols.items()}
    rng = np.random.default_rng([seed, 11])
    observe = sim.label_s - rng.uniform(0.0, lookahead_days * DAY, len(ids))
    at = dict(zip(ids.tolist(), observe.tolist()))
    states = partial_sums_numpy(cols, at_s=at)
    profiles = profile_frame(telco_table(settings)).set_index("customer_id").to_dict("index")
    blank = rng.random(len(ids)) < without_activity
    row_states = [None if b else states.get(c) for c, b in zip(ids, blank)]
    X = matrix([profiles.get(c) for c in ids], row_states, observe.tolist())
    return TrainingSet(X=X, y=sim.pop.churner.astype(int), at_s=observe, customer_id=ids,
                       observed_days=observed_days(row_states, observe))


def simulated_auc(settings: Settings, customers: int = 3000, days: float = 60.0, end_s: float = 1.79e9,
                  seed: int | None = None) -> dict:
    """How hard the simulated world is: the bootstrap's ROC AUC on the later validation window of a simulated
    history (``simulated_training_set`` and ``train`` as ``train_bootstrap`` runs them, no registry), and the same
    trainer's on the profile alone. The history ends at ``end_s`` (fixed by default: the figure is reproducible)."""
    from churn.model.inputs import ACTIVITY_FEATURES, MODEL_FEATURES
    from churn.model.training import train

    ts = simulated_training_set(settings, customers=customers, days=days, end_s=end_s, seed=seed)
    full = train(ts.X, ts.y, ts.at_s, MODEL_FEATURES, n_trials=0)
    profile_only = ts.X.copy()
    profile_only[:, [MODEL_FEATURES.index(f) for f in ACTIVITY_FEATURES]] = np.nan
    without = train(profile_only, ts.y, ts.at_s, MODEL_FEATURES, n_trials=0)
    return {"signal_strength": settings.simulator.signal_strength, "customers": customers, "days": days,
            "roc_auc": full.metrics["roc_auc"], "profile_only_roc_auc": without.metrics["roc_auc"],
            "validation_rows": full.metrics["rows"], "validation_churners": full.metrics["positives"]}


def train_bootstrap(settings: Settings, customers: int = 3000, days: float = 60.0, promote: bool = True) -> str:
    """Train and register the first champion; it replaces the current one only if ``promote`` or there is none."""
    from churn.model.registry import ModelRegistry
    from churn.model.release import train_and_release

    ts = simulated_training_set(settings, customers=customers, days=days)
    registry = ModelRegistry(settings.scoring.registry_dir)
    release = train_and_release(
        settings, ts.X, ts.y, ts.at_s, observed=ts.observed_days, kind="bootstrap", n_trials=0, seed=settings.simulator.seed,
        source=f"simulated history of {customers} customers over {days:g} days + customer table",
        training_source="synthetic")
    if not release.promoted and (promote or registry.champion_version() is None):
        registry.promote(release.version, reason=f"bootstrap promoted on request (rule said: {release.reason})")
    return release.version
