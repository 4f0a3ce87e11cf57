"""The lakehouse's tables: where each lives under ``streaming.lake_dir``, and cheap facts about them.

Bronze, Silver, quarantine, the stream's accounting and feature tables (written by
``streaming/``), and Gold (written by ``batch/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LakePaths:
    root: Path

    @property
    def bronze(self) -> str:
        return str(self.root / "bronze")

    @property
    def silver(self) -> str:
        return str(self.root / "silver")

    @property
    def quarantine(self) -> str:
        return str(self.root / "quarantine")

    @property
    def batches(self) -> str:
        return str(self.root / "batches")

    @property
    def feature_state(self) -> str:
        return str(self.root / "feature_state")

    @property
    def feature_history(self) -> str:
        return str(self.root / "feature_history")

    @property
    def gold_customer_day(self) -> str:
        return str(self.root / "gold" / "customer_day")

    @property
    def gold_customer_snapshot(self) -> str:
        return str(self.root / "gold" / "customer_snapshot")

    @property
    def gold_runs(self) -> str:
        return str(self.root / "gold" / "runs")


def table_rows(path: Path | str) -> int:
    """Rows of a Delta table from its log's file statistics (no data read; 0 if there is no table)."""
    from deltalake import DeltaTable

    try:
        actions = DeltaTable(str(path)).get_add_actions(flatten=True)
    except Exception:  # not (yet) a Delta table
        return 0
    return sum(actions.column("num_records").to_pylist())
