"""The simulated customer base: the IBM Telco table turned into usage parameters.

Each customer's plan decides what they can do and how much: no phone service
means no calls or SMS, no internet service means no data, fibre and streaming
add data volume, multiple lines and higher monthly charges add calls. Customers
on the same plan differ widely: each rate is multiplied by per-customer
log-normal noise with mean 1 (``USAGE_SIGMA``: with sigma 0.7, a customer one
standard deviation above the median makes four times the calls of one below it). Customers marked
``Churn=Yes`` get a churn date; everyone else gets a retention date on which a
``churned=false`` label is issued.

Not every churner warns: a share ``SILENT_SHARE`` of them (moving away, a
competitor's offer) leave with no change of behaviour before (``drift_weight``
0). The others drift before they leave, each by their own amount
(``drift_weight`` from 0.2 to 1.8, mean 1, scaled by the simulator's signal
strength).

>>> pop = load_population(seed=7)
>>> len(pop), round(float(pop.churner.mean()), 3)
(7043, 0.265)
>>> bool((pop.daily_rate[~pop.has_phone, VOICE] == 0).all())
True
>>> bool((pop.drift_weight[~pop.churner] == 0).all()), round(float(pop.silent[pop.churner].mean()), 2)
(True, 0.29)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

VOICE, SMS, DATA = 0, 1, 2
RECORD_TYPES = ("voice", "sms", "data")
N_CELLS = 600
#: Spread (sigma of the log) of the per-customer noise on usage rates, call lengths and session volumes.
USAGE_SIGMA = {"voice": 0.7, "sms": 0.8, "data": 0.7, "call_s": 0.4, "session_mb": 0.6}
#: Share of churners who leave without any change of behaviour before (moving, a competitor's offer).
SILENT_SHARE = 0.3


def telco_csv_path() -> Path:
    """The IBM Telco Customer Churn table shipped inside the package."""
    return Path(str(resources.files("churn") / "data" / "telco_customer_churn.csv"))


@dataclass
class Population:
    customer_id: np.ndarray  # str, shape (n,)
    churner: np.ndarray  # bool: Churn=Yes in the table
    has_phone: np.ndarray  # bool
    has_internet: np.ndarray  # bool
    daily_rate: np.ndarray  # float (n, 3): events per day of voice, sms, data on an average day
    mean_call_s: np.ndarray
    mean_session_mb: np.ndarray
    offnet_share: np.ndarray
    intl_share: np.ndarray
    care_share: np.ndarray  # share of voice calls that go to customer care
    drop_prob: np.ndarray
    roaming_prob: np.ndarray
    home_cell: np.ndarray  # int
    silent: np.ndarray  # bool: a churner who leaves without warning
    drift_weight: np.ndarray  # float: how strongly this customer drifts before churn (0: not at all)
    profile: pd.DataFrame  # the table's rows, in the same order

    def __len__(self) -> int:
        return len(self.customer_id)


def load_population(seed: int, csv_path: Path | None = None, limit: int | None = None) -> Population:
    """Read the customer table and derive each customer's usage parameters (deterministic in ``seed``)."""
    df = pd.read_csv(csv_path or telco_csv_path())
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    rng = np.random.default_rng([seed, 1])
    n = len(df)
    phone = (df["PhoneService"] == "Yes").to_numpy()
    internet = (df["InternetService"] != "No").to_numpy()
    fibre = (df["InternetService"] == "Fiber optic").to_numpy()
    streaming = ((df["StreamingTV"] == "Yes") | (df["StreamingMovies"] == "Yes")).to_numpy()
    multi = (df["MultipleLines"] == "Yes").to_numpy()
    senior = (df["SeniorCitizen"] == 1).to_numpy()
    charges = df["MonthlyCharges"].to_numpy(dtype=float)
    charge_rank = charges.argsort().argsort() / max(n - 1, 1)  # 0 = cheapest plan, 1 = dearest

    def noise(what: str) -> np.ndarray:  # mean 1
        sigma = USAGE_SIGMA[what]
        return rng.lognormal(-0.5 * sigma**2, sigma, n)

    voice = np.where(phone, 6.0 * np.where(multi, 1.5, 1.0) * (0.7 + 0.6 * charge_rank) * noise("voice"), 0.0)
    sms = np.where(phone, 4.0 * np.where(senior, 0.4, 1.0) * noise("sms"), 0.0)
    data = np.where(internet, np.where(fibre, 14.0, 8.0) * np.where(streaming, 1.3, 1.0) * noise("data"), 0.0)
    session_mb = np.where(fibre, 120.0, 40.0) * np.where(streaming, 2.0, 1.0) * noise("session_mb")
    churner = (df["Churn"] == "Yes").to_numpy()
    warn = np.random.default_rng([seed, 5])
    silent = churner & (warn.random(n) < SILENT_SHARE)
    drift_weight = np.where(churner & ~silent, warn.uniform(0.2, 1.8, n), 0.0)

    return Population(
        customer_id=df["customerID"].to_numpy(dtype=str),
        churner=churner,
        has_phone=phone,
        has_internet=internet,
        daily_rate=np.stack([voice, sms, data], axis=1),
        mean_call_s=120.0 * noise("call_s"),
        mean_session_mb=session_mb,
        offnet_share=rng.beta(3, 7, n),  # mean 0.3
        intl_share=rng.beta(1, 60, n),  # mean ~0.016
        care_share=rng.beta(1, 120, n),  # mean ~0.008
        drop_prob=rng.beta(2, 130, n),  # mean ~0.015
        roaming_prob=rng.beta(1, 50, n),  # mean 0.02
        home_cell=rng.integers(0, N_CELLS, n),
        silent=silent,
        drift_weight=drift_weight,
        profile=df,
    )


def sample_label_times(pop: Population, seed: int, start_s: float, end_s: float) -> np.ndarray:
    """Each customer's label date, uniform in [start_s, end_s): churn date or retention date."""
    rng = np.random.default_rng([seed, 2])
    return start_s + rng.random(len(pop)) * (end_s - start_s)
