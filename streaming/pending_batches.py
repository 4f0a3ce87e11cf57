"""The silver batches whose driver work may still be running after Spark committed them.

The silver query's ``foreachBatch`` returns once its Spark job has brought the batch to the driver, so that
the next batch's Spark job runs while this one's Delta writes, features and push to Feast finish
(``streaming.overlap_batches``). Spark commits a batch when ``foreachBatch`` returns, so the batch's rows are
written here first: a process killed before its driver work ended finds them on restart and ends the batch
before the query resumes (``StreamingJob.end_pending_batches``). Every write the work makes is idempotent per
batch, so ending a batch again changes nothing it already wrote.

A batch's rows are one Arrow IPC file, ``<batch id>.arrow``, in a folder beside the query's checkpoint, written
whole or not at all (aside and renamed; an S3 PUT is atomic), and removed once the batch's work has ended.
Only a batch Spark committed is ended from here: one it did not commit, Spark runs again.

>>> import tempfile
>>> from churn.config import Settings
>>> pending = PendingBatches(Settings(), tempfile.mkdtemp() + "/silver-pending")
>>> pending.write(7, pa.table({"x": [1, 2]}))
>>> pending.ids(), pending.read(7).column("x").to_pylist()
([7], [1, 2])
>>> pending.remove(7); pending.ids()
[]
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from churn import storage
from churn.config import Settings

SUFFIX = ".arrow"


def pending_url(checkpoint: str) -> str:
    """Where the batches of the query checkpointed at ``checkpoint`` are kept: a folder beside it."""
    return checkpoint.rstrip("/") + "-pending"


class PendingBatches:
    """The rows of batches committed in Spark but perhaps not yet ended on the driver, under ``url``."""

    def __init__(self, settings: Settings, url: str):
        self.settings = settings
        self.url = url

    def _url(self, batch_id: int) -> str:
        return storage.join(self.url, f"{batch_id}{SUFFIX}")

    def write(self, batch_id: int, rows: pa.Table) -> None:
        """Keep ``rows`` as batch ``batch_id``'s, whole (a reader never sees a part)."""
        url = self._url(batch_id)
        if storage.is_s3(url):
            filesystem, path = storage.filesystem(self.settings, url)
            with filesystem.open_output_stream(path) as out, pa.ipc.new_file(out, rows.schema) as writer:
                writer.write_table(rows)
            return
        # aside and renamed, without ``churn.model.registry.atomic_write``'s fsync: this is on every behind batch's
        # path, and what it guards against is the process dying, as with Spark's own checkpoint files
        Path(self.url).mkdir(parents=True, exist_ok=True)
        aside = f"{url}.{os.getpid()}.tmp"
        with pa.OSFile(aside, "wb") as out, pa.ipc.new_file(out, rows.schema) as writer:
            writer.write_table(rows)
        os.replace(aside, url)

    def read(self, batch_id: int) -> pa.Table:
        filesystem, path = storage.filesystem(self.settings, self._url(batch_id))
        with filesystem.open_input_file(path) as f:
            return pa.ipc.open_file(f).read_all()

    def remove(self, batch_id: int) -> None:
        filesystem, path = storage.filesystem(self.settings, self._url(batch_id))
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def remove_leftovers(self) -> None:
        """Remove the files a process killed while writing left aside."""
        for name in storage.names(self.settings, self.url):
            if not name.endswith(SUFFIX):
                filesystem, path = storage.filesystem(self.settings, storage.join(self.url, name))
                filesystem.delete_file(path)

    def ids(self) -> list[int]:
        """The batches kept here, oldest first (files left half written by a killed process are not batches)."""
        names = storage.names(self.settings, self.url)
        return sorted(int(n[:-len(SUFFIX)]) for n in names if n.endswith(SUFFIX) and n[:-len(SUFFIX)].isdigit())
