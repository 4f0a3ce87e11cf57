"""Customer behaviour features, defined once for the streaming and the nightly path.

Every activity feature is an exponentially decayed sum over a customer's CDRs:

    value(T) = sum over events i with t_i <= T of  w_i * exp(-(T - t_i) / tau)

with ``tau`` the horizon (1, 7 or 30 days): roughly "how much in the last
horizon", weighted towards the recent. ``T`` is the customer's newest event
time (``ref_time``). Decayed sums are *mergeable*: the sums of two sets of
events, each at its own reference time, combine exactly into the sums of their
union (``merge``), in any order. So the stream computes each micro-batch's
partial sums and merges them into the customer's state, the nightly job
computes the same sums over all of Silver in one go, and both give the same
numbers; out-of-order events need no special case.

Reading a value at a later time ``now`` only decays it: ``value(now) =
value(T) * exp(-(now - T) / tau)`` (``decay_to``); ratios of two sums with the
same horizon (off-net share, dropped-call rate) do not change with decay.

The measures are Spark SQL expressions over Silver's columns, so both paths run
the very same expressions.

>>> round(decayed_weight(0.0, DAY, DAY), 4)
0.3679
>>> a = {"ref_time": 10.0, "calls_1d": 1.0}
>>> b = {"ref_time": 20.0, "calls_1d": 1.0}
>>> merged = merge_states(a, b)
>>> merged["ref_time"], round(merged["calls_1d"], 6) == round(1.0 + exp(-10.0 / DAY), 6)
(20.0, True)
>>> merge_states(a, b) == merge_states(b, a)
True
"""

from __future__ import annotations

from math import exp

DAY = 86400.0
HORIZONS: dict[str, float] = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}

#: measure -> (filter, weight) as Spark SQL over Silver columns.
MEASURES: dict[str, tuple[str, str]] = {
    "events": ("true", "1.0"),
    "calls": ("record_type = 'voice'", "1.0"),
    "call_minutes": ("record_type = 'voice'", "duration_s / 60.0"),
    "dropped_calls": ("record_type = 'voice' AND dropped", "1.0"),
    "care_calls": ("record_type = 'voice' AND counterparty = 'customer_care'", "1.0"),
    "peer_events": ("record_type IN ('voice', 'sms')", "1.0"),
    "offnet_events": ("record_type IN ('voice', 'sms') AND counterparty = 'off_net'", "1.0"),
    "intl_events": ("counterparty = 'international'", "1.0"),
    "sms": ("record_type = 'sms'", "1.0"),
    "data_mb": ("record_type = 'data'", "data_bytes / 1e6"),
    "roaming_events": ("roaming", "1.0"),
    "charge": ("true", "charge"),
}

#: Days counted by ``active_days_30d`` (distinct UTC days with any event).
ACTIVE_DAYS_WINDOW = 30

#: The decayed sums kept in state and pushed to the online store.
SUM_FEATURES: list[str] = [f"{m}_{h}" for m in MEASURES for h in HORIZONS]

#: Ratios derived from the sums when features are read (same horizon, so decay-free).
RATIOS: dict[str, tuple[str, str]] = {
    **{f"dropped_rate_{h}": (f"dropped_calls_{h}", f"calls_{h}") for h in HORIZONS},
    **{f"offnet_share_{h}": (f"offnet_events_{h}", f"peer_events_{h}") for h in HORIZONS},
    **{f"care_share_{h}": (f"care_calls_{h}", f"calls_{h}") for h in HORIZONS},
}


def horizon_of(feature: str) -> float:
    return HORIZONS[feature.rsplit("_", 1)[1]]


def decayed_weight(t: float, ref: float, tau: float) -> float:
    return exp(-(ref - t) / tau)


def merge_states(a: dict, b: dict) -> dict:
    """Combine two customers' states (sums at their own ``ref_time``) into one, exactly."""
    ref = max(a["ref_time"], b["ref_time"])
    out = {"ref_time": ref}
    for name in a:
        if name in ("ref_time", "active_days"):
            continue
        tau = horizon_of(name)
        out[name] = a[name] * exp(-(ref - a["ref_time"]) / tau) + b[name] * exp(-(ref - b["ref_time"]) / tau)
    if "active_days" in a:
        today = int(ref // DAY)
        out["active_days"] = sorted(d for d in set(a["active_days"]) | set(b["active_days"])
                                    if d > today - ACTIVE_DAYS_WINDOW)
    return out


def decay_to(values: dict, now: float) -> dict:
    """Feature values read at ``now`` (>= their ``ref_time``): sums decayed, ratios added."""
    ref = values["ref_time"]
    out = {}
    for name in SUM_FEATURES:
        v = values.get(name)
        out[name] = None if v is None else v * exp(-max(now - ref, 0.0) / horizon_of(name))
    for name, (num, den) in RATIOS.items():
        n, d = values.get(num), values.get(den)
        out[name] = (n / d) if (n is not None and d) else 0.0
    days = values.get("active_days")
    today = int(now // DAY)
    out["active_days_30d"] = None if days is None else sum(1 for d in days if d > today - ACTIVE_DAYS_WINDOW)
    return out


# -- Spark: the same definitions as expressions ---------------------------------------------
def partial_sums(df):
    """Per customer: ``ref_time`` (newest event, epoch s), every decayed sum at it, active days.

    ``df`` has Silver's columns (``customer_id``, ``event_time`` timestamp, the CDR fields).
    Used on one micro-batch by the stream and on all of Silver by the nightly job.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    with_t = df.withColumn("_t", F.col("event_time").cast("double"))
    with_ref = with_t.withColumn("_ref", F.max("_t").over(Window.partitionBy("customer_id")))
    aggs = [F.max("_ref").alias("ref_time")]
    for measure, (cond, weight) in MEASURES.items():
        for h, tau in HORIZONS.items():
            w = F.when(F.expr(cond), F.expr(weight)).otherwise(F.lit(0.0))
            aggs.append(F.sum(F.coalesce(w, F.lit(0.0)) * F.exp(-(F.col("_ref") - F.col("_t")) / F.lit(tau)))
                        .cast("double").alias(f"{measure}_{h}"))
    day = F.floor(F.col("_t") / F.lit(DAY)).cast("int")
    aggs.append(F.array_sort(F.collect_set(F.when(day > F.floor(F.col("_ref") / F.lit(DAY)) - ACTIVE_DAYS_WINDOW, day)))
                .alias("active_days"))
    return with_ref.groupBy("customer_id").agg(*aggs)


def merge_sql(old: str = "s", new: str = "b") -> dict[str, str]:
    """Delta MERGE ``SET`` expressions combining state ``old`` with partial sums ``new``."""
    ref = f"greatest({old}.ref_time, {new}.ref_time)"
    sets = {"ref_time": ref}
    for name in SUM_FEATURES:
        tau = horizon_of(name)
        sets[name] = (f"{old}.{name} * exp(-({ref} - {old}.ref_time) / {tau}) "
                      f"+ {new}.{name} * exp(-({ref} - {new}.ref_time) / {tau})")
    sets["active_days"] = (f"array_sort(filter(array_union({old}.active_days, {new}.active_days), "
                           f"d -> d > floor({ref} / {DAY}) - {ACTIVE_DAYS_WINDOW}))")
    return sets
