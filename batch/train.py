"""Nightly retrain: a point-in-time training set from Feast, then train, card, promote or keep.

Labels come from the ``churn-labels`` topic (every committed label event, one
per ``event_id``). Each label becomes an entity row observed at a time up to
``lookahead_days`` before the label; Feast's ``get_historical_features`` joins
each row to the customer's activity state as it was at that moment (the
newest ``feature_history`` row at or before it) and to the profile, so no
feature from after the observation can leak in. The rows become model inputs
with the same ``churn.model.inputs`` code the scorer uses, and
``churn.model.release`` trains, writes the card and applies the promotion rule.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import pandas as pd

from churn.config import Settings
from churn.contracts import CHURN_LABEL, parse_time
from churn.model.bootstrap import TrainingSet
from churn.model.inputs import PROFILE_COLUMNS, matrix

DAY = 86400.0


class NotEnoughLabels(RuntimeError):
    """Too few labels (or one class only) to train on: the nightly run skips training."""


def labels_frame(settings: Settings) -> pd.DataFrame:
    """Every committed, valid label on the labels topic: ``customer_id``, ``label_time`` (epoch s), ``churned``."""
    from confluent_kafka import TopicPartition

    from churn.transport import consumer, end_offsets

    topic = settings.topics.churn_labels.name
    ends = end_offsets(settings, topic)
    c = consumer(settings, group_id=f"batch-labels-{uuid.uuid4().hex[:8]}", **{"isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    rows: dict[str, dict] = {}
    done: set[int] = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 300
    while len(done) < len(ends) and time.monotonic() < deadline:
        for m in c.consume(10_000, timeout=1.0):
            if m.error() is not None:
                continue
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
            label, bad = CHURN_LABEL.parse(m.value())
            if bad is None:
                rows[label["event_id"]] = {"customer_id": label["customer_id"],
                                           "label_time": parse_time(label["label_time"]), "churned": label["churned"]}
    c.close()
    return pd.DataFrame(list(rows.values()), columns=["customer_id", "label_time", "churned"])


def point_in_time_training_set(settings: Settings, labels: pd.DataFrame, fs=None, lookahead_days: float = 7.0,
                               seed: int = 0) -> TrainingSet:
    """Model inputs for each label, with features as they were at its observation time (Feast PIT join)."""
    from churn.feature_store import ACTIVITY_ONLINE, store, unpack_activity

    fs = fs or store(settings)
    rng = np.random.default_rng([seed, 12])
    observe = labels["label_time"].to_numpy(dtype=float) - rng.uniform(0.0, lookahead_days * DAY, len(labels))
    entity = pd.DataFrame({"customer_id": labels["customer_id"].to_numpy(),
                           "event_timestamp": pd.to_datetime(np.round(observe * 1e6).astype("int64"), unit="us", utc=True),
                           "row": np.arange(len(labels))})
    features = [f"customer_activity:{n}" for n in ACTIVITY_ONLINE] + [f"customer_profile:{c}" for c in PROFILE_COLUMNS]
    joined = fs.get_historical_features(entity_df=entity, features=features).to_df().sort_values("row")
    states = [unpack_activity(r.ref_time if pd.notna(r.ref_time) else None, r.active_days, r.sums)
              for r in joined.itertuples()]
    profiles = [None if pd.isna(r["tenure_months"]) else {c: r[c] for c in PROFILE_COLUMNS}
                for r in joined[PROFILE_COLUMNS].to_dict("records")]
    X = matrix(profiles, states, observe.tolist())
    return TrainingSet(X=X, y=labels["churned"].to_numpy().astype(int), at_s=observe,
                       customer_id=labels["customer_id"].to_numpy())


def run_train(settings: Settings, trials: int | None = None, source: str = "feast"):
    """The nightly training step: build the set, train, card, promote or keep. Returns the ``Release``."""
    from churn.model.release import train_and_release

    trials = settings.training.trials if trials is None else trials
    if source == "feast":
        labels = labels_frame(settings)
        if len(labels) < 200 or labels["churned"].nunique() < 2:
            raise NotEnoughLabels(f"{len(labels)} labels on {settings.topics.churn_labels.name}: too few (or one class) "
                               "to train on; `churn simulate --days 60` produces history and labels")
        ts = point_in_time_training_set(settings, labels, seed=settings.simulator.seed)
        what = f"{len(labels)} labels from {settings.topics.churn_labels.name}, features from Feast (point in time)"
    elif source == "simulated":
        from churn.model.bootstrap import simulated_training_set

        ts = simulated_training_set(settings)
        what = "simulated history of 3000 customers over 60 days + customer table"
    else:
        raise ValueError(f"unknown training source {source!r} (feast or simulated)")
    return train_and_release(settings, ts.X, ts.y, ts.at_s, kind="xgb", source=what, n_trials=trials,
                             seed=settings.simulator.seed)
