"""How hard the simulated world is: the bootstrap model's ROC AUC on the later window of a simulated history.

``churn.model.bootstrap.simulated_auc``: the same path as ``churn model bootstrap`` (3,000 customers,
60 days, activity read up to a week before each label, 15 % of rows without activity, no parameter
search), trained on the earliest 60 % of the rows by observation time and scored on the latest 20 %;
the history ends on a fixed date, so the figure is reproducible.

    .venv/bin/python bench/run.py simulator_behaviour_auc      # at the default signal strength, to results.json
    .venv/bin/python bench/simulator_auc.py 0 0.25 0.5 1 2     # a calibration curve, printed
"""

from __future__ import annotations

import sys
import time

from churn.config import Settings
from churn.model.bootstrap import simulated_auc


def bench_simulator_behaviour_auc(s: Settings) -> tuple[float, str, dict]:
    """The bootstrap model's ROC AUC on the later window of 60 simulated days of 3,000 customers at the default
    signal strength (target 0.85-0.92: about as hard as real churn); the profile-only AUC for comparison."""
    started = time.perf_counter()
    out = simulated_auc(s)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out.pop("roc_auc"), "AUC", out


if __name__ == "__main__":
    for strength in [float(a) for a in sys.argv[1:]] or [Settings().simulator.signal_strength]:
        started = time.perf_counter()
        out = simulated_auc(Settings(simulator={"signal_strength": strength}))
        print({**out, "seconds": round(time.perf_counter() - started, 1)}, flush=True)
