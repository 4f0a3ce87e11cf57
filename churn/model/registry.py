"""A small versioned model registry: one directory per version, a pointer file naming the champion.

Layout under the registry root (``<run_dir>/models`` by default)::

    <version>/model.json    the model (its ``to_bytes``; ``churn.model.families.model_from_bytes`` reads any)
    <version>/card.json     its model card: metrics, training window and source, reasons for its status
    <version>/validation.npz  its validation window (inputs, labels, times), for the promotion step
    CHAMPION                the champion's version (one line)
    history.jsonl           every promotion and rejection, appended

Writes are atomic (write a temporary file in the same directory, then
``os.replace``), so a reader sees the old champion or the new one, never a torn
file. ``ChampionWatcher`` lets a long-running scorer pick up a promotion
without a restart by checking the pointer at most once per interval.

>>> import tempfile
>>> from churn.model.tree import TreeModel
>>> reg = ModelRegistry(Path(tempfile.mkdtemp()))
>>> reg.champion_version() is None
True
>>> v = reg.register(b"model-bytes", {"auc": 0.9}, version="xgb-1")
>>> reg.promote(v, reason="first")
>>> reg.champion_version(), reg.card(v)["auc"]
('xgb-1', 0.9)
>>> training_source({"training_source": "labels"}), training_source({"kind": "bootstrap"})
('labels', 'synthetic')
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


#: A model card's ``training_source``: the simulator's synthetic world, or real churn labels.
SYNTHETIC, LABELS = "synthetic", "labels"


def training_source(card: dict) -> str:
    """What a model learned from, from its card: ``synthetic`` or ``labels``. A card without the
    field is synthetic if it is a bootstrap or was trained on a simulated history."""
    if card.get("training_source") in (SYNTHETIC, LABELS):
        return card["training_source"]
    simulated = card.get("kind") == "bootstrap" or str(card.get("trained_on", "")).startswith("simulated")
    return SYNTHETIC if simulated else LABELS


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def pointer(self) -> Path:
        return self.root / "CHAMPION"

    def new_version(self, prefix: str = "xgb") -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        n = 1
        while (self.root / f"{prefix}-{stamp}-{n:02d}").exists():
            n += 1
        return f"{prefix}-{stamp}-{n:02d}"

    def register(self, model_bytes: bytes, card: dict, version: str | None = None) -> str:
        """Store a model and its card as a new version (not yet champion)."""
        version = version or self.new_version()
        d = self.root / version
        if d.exists():
            raise FileExistsError(f"model version {version} already exists")
        atomic_write(d / "model.json", model_bytes)
        atomic_write(d / "card.json", json.dumps({"version": version, **card}, indent=2, default=str).encode())
        return version

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "model.json").exists())

    def card(self, version: str) -> dict:
        return json.loads((self.root / version / "card.json").read_text())

    def model_bytes(self, version: str) -> bytes:
        return (self.root / version / "model.json").read_bytes()

    def champion_version(self) -> str | None:
        try:
            return self.pointer.read_text().strip() or None
        except FileNotFoundError:
            return None

    def promote(self, version: str, reason: str) -> None:
        """Make ``version`` the champion (atomically) and record why."""
        if not (self.root / version / "model.json").exists():
            raise FileNotFoundError(f"no model version {version} in {self.root}")
        previous = self.champion_version()
        atomic_write(self.pointer, f"{version}\n".encode())
        self._history({"event": "promoted", "version": version, "previous": previous, "reason": reason})

    def reject(self, version: str, reason: str) -> None:
        """Keep ``version`` as a challenger and record why it was not promoted."""
        self._history({"event": "kept_as_challenger", "version": version, "reason": reason})

    def _history(self, record: dict) -> None:
        record = {"at": datetime.now(timezone.utc).isoformat(), **record}
        with open(self.root / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def update_card(self, version: str, **fields) -> None:
        """Set ``fields`` in a version's card (atomically)."""
        card = self.card(version)
        card.update(fields)
        atomic_write(self.root / version / "card.json", json.dumps(card, indent=2, default=str).encode())

    def save_validation(self, version: str, X, y, times) -> None:
        """Store a version's validation window (``X``, ``y``, observation ``times``): the rows the promotion
        step scores it and the champion on."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, X=X, y=y, times=times)
        atomic_write(self.root / version / "validation.npz", buffer.getvalue())

    def validation(self, version: str):
        """``(X, y, times)`` of a version's validation window (``save_validation``)."""
        import numpy as np

        with np.load(self.root / version / "validation.npz") as data:
            return data["X"], data["y"], data["times"]

    def pending(self) -> list[str]:
        """Versions awaiting the promotion step, oldest first: trained and registered with their validation
        window (``churn.model.release.train_challenger``), no decision yet."""
        waiting = [v for v in self.versions() if (self.root / v / "validation.npz").exists()
                   and (self.card(v).get("decision") or {}).get("promoted", False) is None]
        return sorted(waiting, key=lambda v: v.rsplit("-", 2)[-2:])  # by the time stamp ``new_version`` gives

    def save_drift_baseline(self, version: str, baseline) -> None:
        """Store the training distribution of a version's inputs (``churn.model.drift``)."""
        atomic_write(self.root / version / "drift_baseline.json", baseline.to_json().encode())

    def drift_baseline(self, version: str):
        """The version's ``DriftBaseline``, or None for a version trained before baselines were kept."""
        from churn.model.drift import DriftBaseline

        path = self.root / version / "drift_baseline.json"
        return DriftBaseline.from_json(path.read_text()) if path.exists() else None

    def load_champion(self):
        """The champion (a model of any family, ``churn.model.families``) with its version in ``meta['version']``, its drift baseline
        in ``meta['drift_baseline']`` and what it learned from in ``meta['training_source']``
        (``training_source``); None if there is no champion."""
        from churn.model.families import model_from_bytes

        version = self.champion_version()
        if version is None:
            return None
        model = model_from_bytes(self.model_bytes(version))
        model.meta["version"] = version
        model.meta["drift_baseline"] = self.drift_baseline(version)
        model.meta["training_source"] = training_source(self.card(version))
        return model


class ChampionWatcher:
    """Holds the current champion and swaps in a newly promoted one (checked at most every ``interval_s``)."""

    def __init__(self, registry: ModelRegistry, interval_s: float = 1.0, clock=time.monotonic):
        self.registry, self.interval_s, self.clock = registry, interval_s, clock
        self.model = registry.load_champion()
        self.version = self.model.meta["version"] if self.model else None
        self._checked = clock()

    def current(self):
        """The champion to score with now; reloads if the pointer names another version."""
        now = self.clock()
        if now - self._checked >= self.interval_s:
            self._checked = now
            version = self.registry.champion_version()
            if version is not None and version != self.version:
                self.model = self.registry.load_champion()
                self.version = self.model.meta["version"]
        return self.model
