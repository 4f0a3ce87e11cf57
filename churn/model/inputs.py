"""The model's inputs: one feature vector per (customer, time), built the same way for training and scoring.

A vector joins the customer's profile (plan and account facts) with their
activity (the decayed sums of ``churn.features``) read at the scoring time:
sums decayed to that time, ratios, active days, short-versus-long trends and
days since the last event. Missing activity (a customer with no CDR yet, or an
online store that could not be read) is NaN, which the tree model handles.

Every feature has a plain-words reading for alert reasons (``describe``).

>>> profile = {"tenure_months": 2, "monthly_charges": 80.0, "contract": "Month-to-month"}
>>> x = vector(profile, None, at_s=0.0)
>>> len(x) == len(MODEL_FEATURES), x[MODEL_FEATURES.index("tenure_months")]
(True, 2.0)
>>> x[MODEL_FEATURES.index("contract_month_to_month")], math.isnan(x[MODEL_FEATURES.index("care_calls_7d")])
(1.0, True)
>>> describe("care_calls_7d", 4.2)
'4 calls to customer care in the last 7 days'
>>> describe("events_trend_7d_30d", 0.55)
'activity in the last 7 days is 45% below its 30-day level'
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from churn.features import ACTIVE_DAYS_WINDOW, HORIZONS, RATIOS, SUM_FEATURES, decay_to

PROFILE_NUMERIC = [
    "tenure_months", "monthly_charges", "total_charges", "senior_citizen", "has_partner", "has_dependents",
    "phone_service", "multiple_lines", "online_security", "online_backup", "device_protection", "tech_support", "streaming_tv", "streaming_movies",
    "paperless_billing",
]
#: Categorical profile columns and their values (one indicator each).
PROFILE_CATEGORIES = {
    "contract": ["Month-to-month", "One year", "Two year"],
    "internet_service": ["DSL", "Fiber optic", "No"],
    "payment_method": ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"],
}
#: Every profile column the scorer reads from the online store.
PROFILE_COLUMNS = PROFILE_NUMERIC + list(PROFILE_CATEGORIES)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_").replace("__", "_")


CATEGORY_FEATURES = {f"{col}_{_slug(v)}": (col, v) for col, values in PROFILE_CATEGORIES.items() for v in values}
TREND_MEASURES = ["events", "call_minutes", "data_mb"]
TREND_FEATURES = [f"{m}_trend_7d_30d" for m in TREND_MEASURES]
ACTIVITY_FEATURES = [*SUM_FEATURES, *RATIOS, "active_days_30d", *TREND_FEATURES, "days_since_last_event"]
MODEL_FEATURES = [*PROFILE_NUMERIC, *CATEGORY_FEATURES, *ACTIVITY_FEATURES]

_NAN = float("nan")


def activity_at(state: Mapping | None, at_s: float) -> dict[str, float]:
    """Activity features of a customer's state (``churn.features`` sums at ``ref_time``) read at ``at_s``."""
    if not state or state.get("ref_time") is None:
        return {name: _NAN for name in ACTIVITY_FEATURES}
    out = {k: (_NAN if v is None else float(v)) for k, v in decay_to(state, at_s).items()}
    for m in TREND_MEASURES:
        short, long = out[f"{m}_7d"], out[f"{m}_30d"]
        out[f"{m}_trend_7d_30d"] = (short / HORIZONS["7d"]) / (long / HORIZONS["30d"]) if long > 0 else _NAN
    out["days_since_last_event"] = max(at_s - float(state["ref_time"]), 0.0) / 86400.0
    return out


def vector(profile: Mapping | None, state: Mapping | None, at_s: float) -> list[float]:
    """The model's input for one customer at ``at_s`` (epoch seconds), in ``MODEL_FEATURES`` order."""
    x = _profile_part(profile or {})
    activity = activity_at(state, at_s)
    x.extend(activity[name] for name in ACTIVITY_FEATURES)
    return x


def matrix(profiles: Sequence[Mapping | np.ndarray | None], states: Sequence[Mapping | None],
           at_s: Sequence[float]) -> np.ndarray:
    """Vectors of many (profile, state, time) rows as one float32 matrix: ``vector`` row by row, vectorised.

    A profile may also be given as its ``profile_vector`` (the scorer computes it once per customer).

    >>> state = {"ref_time": 0.0, "active_days": [0], **{n: 1.0 for n in SUM_FEATURES}}
    >>> rows = [({"tenure_months": 3}, state, 3600.0), (None, None, 0.0), ({"contract": "One year"}, state, 0.0)]
    >>> fast = matrix(*zip(*rows))
    >>> slow = np.array([vector(*r) for r in rows], dtype=np.float32)
    >>> bool(np.allclose(fast, slow, rtol=1e-6, equal_nan=True))
    True
    >>> bool(np.array_equal(matrix([profile_vector(rows[0][0])], [state], [3600.0]), fast[:1], equal_nan=True))
    True
    """
    n = len(at_s)
    out = np.full((n, len(MODEL_FEATURES)), np.nan, dtype=np.float64)
    for i, profile in enumerate(profiles):
        if isinstance(profile, np.ndarray):
            out[i, :_N_PROFILE] = profile
        elif profile:
            out[i, :_N_PROFILE] = _profile_part(profile)
    out[:, _N_PROFILE:] = activity_matrix(states, at_s)
    return out.astype(np.float32)


_N_PROFILE = len(PROFILE_NUMERIC) + len(CATEGORY_FEATURES)
_TAUS = np.array([HORIZONS[name.rsplit("_", 1)[1]] for name in SUM_FEATURES])
_SUM_INDEX = {name: i for i, name in enumerate(SUM_FEATURES)}


def profile_vector(profile: Mapping) -> np.ndarray:
    """The profile part of a model input (the leading ``MODEL_FEATURES``), for ``matrix``."""
    return np.array(_profile_part(profile), dtype=np.float64)


def _profile_part(profile: Mapping) -> list[float]:
    x = [_NAN if profile.get(c) is None else float(profile[c]) for c in PROFILE_NUMERIC]
    for col, value in CATEGORY_FEATURES.values():
        got = profile.get(col)
        x.append(_NAN if got is None else float(got == value))
    return x


def _sums_of(state: Mapping) -> list[float]:
    """A state's sums in ``SUM_FEATURES`` order: its packed ``sums`` if it has them, else by name."""
    packed = state.get("sums")
    if packed is not None:
        return packed
    return [_NAN if state.get(name) is None else state[name] for name in SUM_FEATURES]


def activity_matrix(states: Sequence[Mapping | None], at_s: Sequence[float]) -> np.ndarray:
    """``activity_at`` of many rows at once (rows without a state are all NaN). The ratios and trends are
    computed for all their columns in one operation each: column by column, ~70 numpy calls cost ~0.4 ms
    per call whatever the number of rows, most of what a live batch of tens of CDRs spent here."""
    n = len(at_s)
    at = np.asarray(at_s, dtype=float)
    out = np.full((n, len(ACTIVITY_FEATURES)), np.nan)
    have = np.array([bool(st) and st.get("ref_time") is not None for st in states], dtype=bool)
    if not have.any():
        return out
    rows = np.flatnonzero(have)
    ref = np.array([float(states[i]["ref_time"]) for i in rows])
    sums = np.array([_sums_of(states[i]) for i in rows], dtype=float)
    age = np.maximum(at[rows] - ref, 0.0)
    decayed = sums * np.exp(-age[:, None] / _TAUS[None, :])
    a, b = decayed[:, _RATIO_NUM], decayed[:, _RATIO_DEN]
    short, long = decayed[:, _TREND_SHORT], decayed[:, _TREND_LONG]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(~np.isnan(a) & ~np.isnan(b) & (b != 0), a / np.where(b == 0, 1.0, b), 0.0)
        trends = np.where(long > 0, (short / HORIZONS["7d"]) / (long / HORIZONS["30d"]), _NAN)
    today = np.floor(at[rows] / 86400.0)
    active = [_NAN if states[i].get("active_days") is None else
              float(sum(1 for d in states[i]["active_days"] if d > t - ACTIVE_DAYS_WINDOW)) for i, t in zip(rows, today)]
    out[rows] = np.concatenate([decayed, ratios, np.array(active)[:, None], trends, (age / 86400.0)[:, None]], axis=1)
    return out


# ``ACTIVITY_FEATURES`` is these blocks in this order: sums, ratios, active days, trends, days since the last event
_RATIO_NUM = np.array([_SUM_INDEX[num] for num, _ in RATIOS.values()])
_RATIO_DEN = np.array([_SUM_INDEX[den] for _, den in RATIOS.values()])
_TREND_SHORT = np.array([_SUM_INDEX[f"{m}_7d"] for m in TREND_MEASURES])
_TREND_LONG = np.array([_SUM_INDEX[f"{m}_30d"] for m in TREND_MEASURES])
assert ACTIVITY_FEATURES == [*SUM_FEATURES, *RATIOS, "active_days_30d", *TREND_FEATURES, "days_since_last_event"]


# -- plain words for reasons -----------------------------------------------------------------
_HORIZON_WORDS = {"1d": "last day", "7d": "last 7 days", "30d": "last 30 days"}
_COUNT_WORDS = {
    "events": "calls, texts and data sessions", "calls": "calls", "dropped_calls": "dropped calls",
    "care_calls": "calls to customer care", "peer_events": "calls and texts",
    "offnet_events": "calls and texts to other networks", "intl_events": "international calls and texts",
    "sms": "texts", "roaming_events": "events while roaming",
}
_AMOUNT_WORDS = {"call_minutes": "{:.0f} minutes of calls", "data_mb": "{:.0f} MB of data",
                 "charge": "{:.2f} in usage charges"}
_RATIO_WORDS = {"dropped_rate": "of calls dropped", "offnet_share": "of calls and texts went to other networks",
                "care_share": "of calls went to customer care"}
_PROFILE_WORDS = {
    "tenure_months": "customer for {:.0f} months", "monthly_charges": "monthly bill of {:.2f}",
    "total_charges": "{:.0f} billed in total", "senior_citizen": "senior citizen: {}", "has_partner": "has a partner: {}",
    "has_dependents": "has dependents: {}", "phone_service": "phone service: {}", "multiple_lines": "multiple lines: {}",
    "online_security": "online security add-on: {}", "online_backup": "online backup add-on: {}",
    "device_protection": "device protection add-on: {}", "tech_support": "tech support add-on: {}",
    "streaming_tv": "streaming TV: {}", "streaming_movies": "streaming movies: {}",
    "paperless_billing": "paperless billing: {}",
}


#: The reason given when a customer has no activity state at all (no CDR counted yet).
NO_ACTIVITY = "no activity data for this customer yet"


def describe_missing(features: Sequence[str]) -> str:
    """The features a row lacks, in plain words, as one reason. A trend is missing when its measure has
    nothing in 30 days (its 30-day sum is 0): that is said, not "no data".

    >>> describe_missing(ACTIVITY_FEATURES)
    'no activity data for this customer yet'
    >>> describe_missing(["data_mb_trend_7d_30d", "call_minutes_trend_7d_30d"])
    'no data use and no call time in the last 30 days'
    """
    if set(ACTIVITY_FEATURES) <= set(features):
        return NO_ACTIVITY
    words = {"events": "calls, texts or data sessions", "call_minutes": "call time", "data_mb": "data use"}
    trends = [words[f.split("_trend")[0]] for f in features if f in TREND_FEATURES]
    others = [f for f in features if f not in TREND_FEATURES]
    parts = [" and ".join(f"no {w}" for w in trends) + " in the last 30 days"] if trends else []
    if others:
        parts.append("not known: " + ", ".join(others))
    return "; ".join(parts)


def describe(feature: str, value: float) -> str:
    """The feature's value in plain words (for the reasons of an alert)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"no recent activity data ({feature})"
    if feature in CATEGORY_FEATURES:
        col, cat = CATEGORY_FEATURES[feature]
        words = col.replace("_", " ")
        return f"{words} is {cat}" if value >= 0.5 else f"{words} is not {cat}"
    if feature in _PROFILE_WORDS:
        template = _PROFILE_WORDS[feature]
        return template.format("yes" if value >= 0.5 else "no") if template.endswith(": {}") else template.format(value)
    if feature in TREND_FEATURES:
        what = "activity" if feature.startswith("events") else feature.split("_trend")[0].replace("_", " ")
        what = {"call minutes": "call time", "data mb": "data use"}.get(what, what)
        change = "below" if value < 1 else "above"
        return f"{what} in the last 7 days is {abs(1 - value):.0%} {change} its 30-day level"
    if feature == "days_since_last_event":
        return f"{value:.1f} days since the last call, text or data session"
    if feature == "active_days_30d":
        return f"active on {value:.0f} of the last 30 days"
    if "_" not in feature:
        return f"{feature} = {value:.3g}"
    base, horizon = feature.rsplit("_", 1)
    when = _HORIZON_WORDS.get(horizon, horizon)
    if base in _RATIO_WORDS:
        return f"{value:.0%} {_RATIO_WORDS[base]} in the {when}"
    if base in _COUNT_WORDS:
        return f"{value:.0f} {_COUNT_WORDS[base]} in the {when}"
    if base in _AMOUNT_WORDS:
        return _AMOUNT_WORDS[base].format(value) + f" in the {when}"
    return f"{feature} = {value:.3g}"
