"""The lakehouse's tables: where each lives under the lake's root, and cheap facts about them.

Bronze, Silver, quarantine, the stream's accounting and feature tables (written by
``streaming/``), and Gold (written by ``batch/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from churn import storage
from churn.config import Settings


@dataclass(frozen=True)
class LakePaths:
    """The tables under a lake root: a local folder or an ``s3a://`` URL (``churn.storage.lake_url``)."""

    root: str

    @classmethod
    def of(cls, settings: Settings) -> "LakePaths":
        return cls(storage.lake_url(settings))

    def _at(self, *parts: str) -> str:
        return storage.join(str(self.root), *parts)

    @property
    def bronze(self) -> str:
        return self._at("bronze")

    @property
    def silver(self) -> str:
        return self._at("silver")

    @property
    def quarantine(self) -> str:
        return self._at("quarantine")

    @property
    def batches(self) -> str:
        return self._at("batches")

    @property
    def feature_history(self) -> str:
        return self._at("feature_history")

    @property
    def profile_history(self) -> str:
        return self._at("profile_history")

    @property
    def profile_quarantine(self) -> str:
        return self._at("profile_quarantine")

    @property
    def gold_customer_day(self) -> str:
        return self._at("gold", "customer_day")

    @property
    def gold_customer_snapshot(self) -> str:
        return self._at("gold", "customer_snapshot")

    @property
    def gold_runs(self) -> str:
        return self._at("gold", "runs")

    def gold_staging(self, date_from, date_to) -> str:
        """Where the nightly stages Gold for a date range before its quality gate (``batch.gold``)."""
        return self._at("gold", "staging", f"{date_from}_{date_to}")


def table_rows(path: Path | str, settings: Settings | None = None) -> int:
    """Rows of a Delta table from its log's file statistics (no data read; 0 if there is no table).
    ``settings`` say how to reach a table on S3."""
    try:
        actions = storage.open_delta(settings or Settings(), str(path)).get_add_actions(flatten=True)
    except Exception:  # not (yet) a Delta table
        return 0
    return sum(actions.column("num_records").to_pylist())


def rows_by(path: Path | str, column: str, settings: Settings | None = None) -> dict[str, int]:
    """Rows of a Delta table by the value of ``column``, most first ({} if there is no table)."""
    import pyarrow.compute as pc

    try:
        table = storage.open_delta(settings or Settings(), str(path))
    except Exception:  # not (yet) a Delta table
        return {}
    counted = pc.value_counts(table.to_pyarrow_table(columns=[column]).column(column)).to_pylist()
    return {str(c["values"]): int(c["counts"])
            for c in sorted(counted, key=lambda c: (-c["counts"], str(c["values"])))}


def silver_frame(cols: dict, first_id: int = 0):
    """Events as columns (``EventBatch.silver_columns``) as a pandas frame with Silver's types,
    ready for ``spark.createDataFrame(...).write`` into a Silver table (tests, benchmarks)."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(cols)
    frame["event_id"] = [f"e{first_id + i}" for i in range(len(frame))]
    frame["event_time"] = pd.to_datetime(np.round(frame["event_time"] * 1e6).astype("int64"), unit="us", utc=True)
    frame["data_bytes"] = frame["data_bytes"].astype("Int64")
    frame["event_date"] = frame["event_time"].dt.date
    return frame
