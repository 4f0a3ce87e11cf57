"""Models say where they come from: the card's training source, and the promotion rule for a
synthetic champion (the first model trained on real labels that passes the sanity checks replaces it).

No stack: the "labels" models here learn from simulated rows passed to ``train_and_release`` as
``training_source="labels"``, which is all the rule looks at."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from churn.config import Settings
from churn.model.bootstrap import simulated_training_set, train_bootstrap
from churn.model.inputs import ACTIVITY_FEATURES, MODEL_FEATURES
from churn.model.registry import ModelRegistry
from churn.model.release import train_and_release

LABELS = {"count": 600, "churned": 150, "first_label_time": "2026-08-01T00:00:00.000Z",
          "last_label_time": "2026-09-21T00:00:00.000Z", "rows": 600}


@pytest.fixture(scope="module")
def profile_only():
    """Rows of other days than the bootstrap's, without their activity: a weaker model than the champion."""
    ts = simulated_training_set(Settings(), customers=800, days=45, end_s=1.79e9, seed=7)
    X = ts.X.copy()
    X[:, [MODEL_FEATURES.index(f) for f in ACTIVITY_FEATURES]] = np.nan
    return X, ts.y, ts.at_s


def _registry_settings(registry_dir: Path) -> Settings:
    return Settings(scoring={"registry_dir": registry_dir}, training={"promotion_margin": 0.005})


@pytest.fixture(scope="module")
def synthetic_registry(tmp_path_factory) -> tuple[Path, str]:
    """One small bootstrap champion (synthetic) for the module: its registry folder and version."""
    root = tmp_path_factory.mktemp("synthetic") / "models"
    return root, train_bootstrap(_registry_settings(root), customers=1000, days=45)


@pytest.fixture
def synthetic_champion(synthetic_registry, tmp_path) -> tuple[Settings, ModelRegistry, str]:
    """A registry of the test's own whose champion is the module's small bootstrap (synthetic)."""
    root, version = synthetic_registry
    shutil.copytree(root, tmp_path / "models")
    return _registry_settings(tmp_path / "models"), ModelRegistry(tmp_path / "models"), version


def test_the_bootstrap_champion_is_synthetic(synthetic_champion):
    _, registry, version = synthetic_champion
    card = registry.card(version)
    assert registry.champion_version() == version
    assert card["training_source"] == "synthetic" and card["labels"] is None
    assert card["trained_on"].startswith("simulated history of 1000 customers")
    assert registry.load_champion().meta["training_source"] == "synthetic"


def test_a_synthetic_candidate_must_beat_a_synthetic_champion(synthetic_champion, profile_only):
    s, registry, champion = synthetic_champion
    release = train_and_release(s, *profile_only, kind="t", source="simulated, profile only", n_trials=0)
    print(f"synthetic candidate {release.metrics['roc_auc']} vs champion {release.champion_metrics['roc_auc']}")
    assert release.metrics["roc_auc"] < release.champion_metrics["roc_auc"]
    assert not release.promoted and "does not beat the champion" in release.reason
    assert registry.champion_version() == champion


def test_the_first_model_on_labels_replaces_the_synthetic_champion_the_next_must_beat_it(synthetic_champion,
                                                                                         profile_only):
    s, registry, synthetic = synthetic_champion
    release = train_and_release(s, *profile_only, kind="t", source="labels", n_trials=0,
                                training_source="labels", labels=LABELS)
    cand, champ = release.metrics["roc_auc"], release.champion_metrics["roc_auc"]
    print(f"labels candidate {cand} vs synthetic champion {champ}: {release.reason}")
    assert cand < champ  # worse on the window, promoted all the same
    assert cand >= 0.6  # passed the sanity checks
    assert release.promoted and release.reason.startswith("replaces the synthetic champion: ")
    assert f"{cand:.4f}" in release.reason and f"{champ:.4f}" in release.reason
    assert registry.champion_version() == release.version
    card = registry.card(release.version)
    assert card["training_source"] == "labels" and card["labels"] == LABELS
    assert card["champion_on_same_window"]["version"] == synthetic
    assert card["champion_on_same_window"]["training_source"] == "synthetic"
    assert card["decision"] == {"promoted": True, "reason": release.reason}
    assert registry.load_champion().meta["training_source"] == "labels"
    last = orjson.loads((registry.root / "history.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["version"], last["previous"]) == ("promoted", release.version, synthetic)
    assert last["reason"] == release.reason

    # the champion is on labels now: the next model on labels must beat it by the margin
    same = train_and_release(s, *profile_only, kind="t", source="labels again", n_trials=0,
                             training_source="labels", labels=LABELS)
    assert same.metrics["roc_auc"] == same.champion_metrics["roc_auc"]  # the same rows, the same model
    assert not same.promoted and "does not beat the champion" in same.reason
    assert registry.champion_version() == release.version


def test_a_model_on_labels_that_fails_the_sanity_checks_never_replaces_a_synthetic_champion(synthetic_champion,
                                                                                            profile_only):
    s, registry, synthetic = synthetic_champion
    X, y, at = profile_only
    noise = np.random.default_rng(3).permutation(y)  # labels unrelated to the rows
    release = train_and_release(s, X, noise, at, kind="t", source="labels", n_trials=0, training_source="labels",
                                labels=LABELS)
    print(f"labels candidate on shuffled labels: {release.reason}")
    assert not release.promoted and release.reason.startswith("sanity: ")
    assert registry.champion_version() == synthetic
    assert registry.card(release.version)["training_source"] == "labels"


def test_the_training_source_must_be_synthetic_or_labels(tmp_path, profile_only):
    s = Settings(scoring={"registry_dir": tmp_path / "models"})
    with pytest.raises(ValueError, match="training_source"):
        train_and_release(s, *profile_only, kind="t", source="x", n_trials=0, training_source="crm")
