"""Nightly retrain: a point-in-time training set (activity from Silver, profiles from Feast), then train,
card, promote or keep.

Labels come from the ``churn-labels`` topic (every committed label event, one
per ``event_id``). Each label becomes a row observed at a time up to
``lookahead_days`` before the label. Its activity features are the customer's
state exactly at that time, as the scorer would have served it: the decayed
sums of Silver's events up to that time (``churn.point_in_time``), not the
stream's newest recorded state before it, which lags by up to a micro-batch and
so depended on how the stream batched the history. Its profile is Feast's
point-in-time join (``get_historical_features``). No event or profile from
after the observation can leak in. The rows become model inputs with the same
``churn.model.inputs`` code the scorer uses, and ``churn.model.release``
trains and writes the card (``train_challenger``: the nightly's train step);
the promotion rule is a step of its own (``promote_challengers``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from churn.config import Settings
from churn.contracts import CHURN_LABEL, parse_time
from churn.model.bootstrap import TrainingSet
from churn.model.drift import observed_days
from churn.model.inputs import PROFILE_COLUMNS, matrix

DAY = 86400.0


class NotEnoughLabels(RuntimeError):
    """Too few labels (or one class only) to train on: the nightly run skips training."""


def labels_frame(settings: Settings) -> pd.DataFrame:
    """Every committed, valid label on the labels topic: ``customer_id``, ``label_time`` (epoch s), ``churned``."""
    from confluent_kafka import TopicPartition

    from churn.transport import consumer, end_offsets

    topic = settings.topics.churn_labels.name
    ends = end_offsets(settings, topic, role="batch")
    c = consumer(settings, group_id=f"churn-batch-labels-{uuid.uuid4().hex[:8]}", role="batch",
                 **{"isolation.level": "read_committed"})
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


#: Fewer usable labels than this (or one class only) and the nightly run skips training.
MIN_LABELS = 200


@dataclass
class PointInTimeSet(TrainingSet):
    """A training set from labels, with how many labels it could use and what their rows lack."""

    labels: int = 0  # labels given
    unknown: int = 0  # left out: neither a profile nor any activity at the observation time
    without_profile: int = 0  # rows with NaN profile features
    without_activity: int = 0  # rows with NaN activity features

    def summary(self) -> str:
        return (f"{self.labels} labels, {self.unknown} of unknown customers (no profile, no activity when "
                f"observed) left out; of the {len(self.y)} used, {self.without_profile} without a profile, "
                f"{self.without_activity} without activity")


def _source_customers(fs, view: str) -> set:
    """Customers with any row in the offline source of ``view`` (every Parquet file under its path, as
    Feast's file store reads it)."""
    import pyarrow.dataset as ds
    from feast import FileSource

    source = fs.get_feature_view(view).batch_source
    path = FileSource.get_uri_for_file_path(fs.config.repo_path, source.path)
    dataset = ds.dataset(path, format="parquet")
    if "customer_id" not in dataset.schema.names:  # no file yet: an empty profile history, nobody has a row
        return set()
    return set(dataset.to_table(columns=["customer_id"]).column(0).unique().to_pylist())


def _view_at(fs, entity: pd.DataFrame, view: str, fields: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """``fields`` of ``view`` as of each entity row (Feast's point-in-time join), aligned with ``entity``,
    and whether each row got one (NaN where not).

    Feast is asked only about customers with rows in the view's source: its file store (dask) sorts the
    joined rows by the view's timestamp, which is null for the others, and that sort fails once a
    partition holds nothing else ("Divisions calculation failed for non-numeric column 'profile_time'":
    labels of customers the profile table lacks, in a label set spanning several partitions). Feast
    leaves out the rows of customers whose data is all after the observation (or older than the view's
    TTL); they are NaN here too, and every other row stays with its own label.
    """
    have = entity["customer_id"].isin(_source_customers(fs, view)).to_numpy()
    # Feast keeps one row per (customer, time): ask once per pair, give the answer to each row of it
    asked = entity.groupby(["customer_id", "event_timestamp"], sort=False)["row"].transform("first").to_numpy()
    got = pd.DataFrame(columns=["row", *fields])
    if have.any():
        first = entity[have & (asked == entity["row"].to_numpy())]
        got = fs.get_historical_features(entity_df=first[["customer_id", "event_timestamp", "row"]],
                                         features=[f"{view}:{f}" for f in fields]).to_df()
    got = got.set_index("row")[fields]
    return got.reindex(asked).reset_index(drop=True), np.isin(asked, got.index.to_numpy())


def _value(v):
    """A joined value, None where Feast had none (NaN, NaT, None)."""
    return None if np.ndim(v) == 0 and pd.isna(v) else v


def activity_at_observation(settings: Settings, customer_ids, observe_s):
    """Each row's activity state exactly at its observation time: its customer's Silver events with
    ``event_time <= observe_s[i]``, summed as the stream and the scorer sum them (``churn.point_in_time``).
    Silver is read once, only the labelled customers and only up to the latest observation."""
    from churn.lake import LakePaths
    from churn.point_in_time import read_silver, states_at

    observe_s = np.asarray(observe_s, dtype=float)
    if len(observe_s) == 0:
        return states_at(None, customer_ids, observe_s)
    cols = read_silver(LakePaths.of(settings).silver, customers=set(customer_ids),
                       until_s=float(observe_s.max()), settings=settings)
    return states_at(cols, customer_ids, observe_s)


def point_in_time_training_set(settings: Settings, labels: pd.DataFrame, fs=None, lookahead_days: float = 7.0,
                               seed: int = 0) -> PointInTimeSet:
    """Model inputs for each label, with features as they were at its observation time: activity computed
    from Silver's events up to that time (what the scorer would have served, whatever the stream's
    micro-batches were), the profile from Feast's point-in-time join.

    A customer without a profile, or without activity at the observation time, gets NaN for what is
    missing; labels of customers with neither are left out and counted (``unknown``)."""
    from churn.feature_store import store

    fs = fs or store(settings, role="batch")
    rng = np.random.default_rng([seed, 12])
    observe = labels["label_time"].to_numpy(dtype=float) - rng.uniform(0.0, lookahead_days * DAY, len(labels))
    entity = pd.DataFrame({"customer_id": labels["customer_id"].to_numpy(),
                           "event_timestamp": pd.to_datetime(np.round(observe * 1e6).astype("int64"), unit="us", utc=True),
                           "row": np.arange(len(labels))})
    activity = activity_at_observation(settings, labels["customer_id"].to_numpy(dtype=object), observe)
    profile, has_profile = _view_at(fs, entity, "customer_profile", PROFILE_COLUMNS)
    states = activity.states()
    profiles = [{c: _value(v) for c, v in r.items()} if ok else None
                for r, ok in zip(profile[PROFILE_COLUMNS].to_dict("records"), has_profile)]
    has_activity = activity.has_activity
    keep = has_profile | has_activity
    rows = np.flatnonzero(keep)
    X = matrix([profiles[i] for i in rows], [states[i] for i in rows], observe[rows].tolist())
    return PointInTimeSet(X=X, y=labels["churned"].to_numpy().astype(int)[rows], at_s=observe[rows],
                          customer_id=labels["customer_id"].to_numpy()[rows],
                          observed_days=observed_days([states[i] for i in rows], observe[rows]), labels=len(labels),
                          unknown=int((~keep).sum()), without_profile=int((keep & ~has_profile).sum()),
                          without_activity=int((keep & ~has_activity).sum()))


def label_summary(labels: pd.DataFrame, rows: int | None = None) -> dict:
    """For a model card: how many labels, how many churned, the first and last label time (UTC), and
    how many became training rows.

    >>> label_summary(pd.DataFrame({"label_time": [1.79e9, 1.79e9 + 86400], "churned": [True, False]}), rows=2)
    {'count': 2, 'churned': 1, 'first_label_time': '2026-09-21T14:13:20.000Z', 'last_label_time': '2026-09-22T14:13:20.000Z', 'rows': 2}
    """
    from churn.contracts import format_time

    times = labels["label_time"].to_numpy(dtype=float)
    return {"count": int(len(labels)), "churned": int(labels["churned"].astype(bool).sum()),
            "first_label_time": format_time(float(times.min())) if len(times) else None,
            "last_label_time": format_time(float(times.max())) if len(times) else None, "rows": rows}


def training_set(settings: Settings, source: str = "feast") -> tuple[TrainingSet, str, dict]:
    """The nightly's training set, what it was trained on in words (the card's ``trained_on``) and its
    provenance for the card. ``feast``: labels from the topic, point in time (``NotEnoughLabels`` when
    there are too few to train on); ``simulated``: the bootstrap's simulated history."""
    if source == "feast":
        labels = labels_frame(settings)
        hint = "to train on; `churn simulate --days 60` produces history and labels"
        if len(labels) < MIN_LABELS or labels["churned"].nunique() < 2:
            raise NotEnoughLabels(f"{len(labels)} labels on {settings.topics.churn_labels.name}: too few (or one class) "
                                  + hint)
        ts = point_in_time_training_set(settings, labels, seed=settings.simulator.seed)
        if len(ts.y) < MIN_LABELS or len(np.unique(ts.y)) < 2:
            raise NotEnoughLabels(f"{ts.summary()}: too few (or one class) {hint}")
        # the trees, the calibration and the metrics each need both classes in their time window
        from churn.model.training import time_windows

        one_class = [k for k, rows in time_windows(ts.at_s).items() if len(np.unique(ts.y[rows])) < 2]
        if one_class:
            raise NotEnoughLabels(f"{ts.summary()}: one class only in the {' and '.join(one_class)} window(s) "
                                  f"(rows by observation time): too few {hint}")
        what = (f"labels from {settings.topics.churn_labels.name}, activity from Silver at each observation, "
                f"profiles from Feast (point in time): "
                f"{ts.summary()}")
        return ts, what, {"training_source": "labels", "labels": label_summary(labels, rows=len(ts.y))}
    if source == "simulated":
        from churn.model.bootstrap import simulated_training_set

        return (simulated_training_set(settings), "simulated history of 3000 customers over 60 days + customer table",
                {"training_source": "synthetic"})
    raise ValueError(f"unknown training source {source!r} (feast or simulated)")


def train_challenger(settings: Settings, trials: int | None = None, source: str = "feast") -> str:
    """The nightly training step: build the set, train, register the model with its card as a challenger
    awaiting the promotion step. Returns its version."""
    from churn.model.release import train_challenger as register

    ts, what, provenance = training_set(settings, source)
    return register(settings, ts.X, ts.y, ts.at_s, kind="xgb", source=what,
                    n_trials=settings.training.trials if trials is None else trials, seed=settings.simulator.seed,
                    observed=ts.observed_days, **provenance)


def promote_challengers(settings: Settings) -> list:
    """The nightly promotion step: the promotion rule applied to every challenger awaiting it
    (``ModelRegistry.pending``, oldest first; normally the one the training step just registered).
    Returns their ``Release``s, [] if none was waiting."""
    from churn.model.registry import ModelRegistry
    from churn.model.release import decide_challenger

    return [decide_challenger(settings, v) for v in ModelRegistry(settings.scoring.registry_dir).pending()]


def run_train(settings: Settings, trials: int | None = None, source: str = "feast"):
    """Train, card, then promote or keep at once (``churn batch train``). Returns the ``Release``."""
    from churn.model.release import decide_challenger

    return decide_challenger(settings, train_challenger(settings, trials=trials, source=source))
