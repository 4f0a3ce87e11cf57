"""What the alerts would do on a labelled window: how many, how often right, and what the riskiest slice holds.

``alert_report`` reads the rows of a window (each a customer observed once, with the
model's risk at that time and whether the customer churned) with the scorer's band
thresholds. A row whose risk is at or above a band's lower bound counts as an alert at
that band:

- per band (``medium``, ``high``, ``critical``): **precision**, the share of churners among
  the rows at or above the band; **recall**, the share of all churners that are at or above
  it; and how many alerts that makes per 1,000 customers per day (rows at or above per
  1,000 rows, divided by the window's length in days: the window's customers, each alerted
  at most once over the window);
- ``alerts_per_1000_customers_per_day``: the same for ``min_band``, the lowest band that
  raises alerts (``scoring.alert_min_band``);
- **lift** of the top 1 % and 5 % of rows by risk: their churn rate divided by the window's
  churn rate, what a retention team calling only those customers gets over calling at random.

Figures that would divide by zero (no rows at or above a band, no churner, a window
without length) are None.

>>> risk = [0.95, 0.8, 0.72, 0.6, 0.55, 0.4, 0.35, 0.2, 0.1, 0.05]
>>> y = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0]
>>> times = [0.0, 86400.0, 2 * 86400.0, 0, 0, 0, 0, 0, 0, 0]  # a window of 2 days
>>> r = alert_report(risk, y, times, thresholds=(0.3, 0.5, 0.7), min_band="high", tops=(0.1, 0.5))
>>> r["window"]
{'rows': 10, 'churners': 4, 'days': 2.0, 'base_churn_rate': 0.4}
>>> r["bands"]["high"]
{'from_risk': 0.5, 'alerts': 5, 'churners': 3, 'precision': 0.6, 'recall': 0.75, 'per_1000_customers_per_day': 250.0}
>>> r["alerts_per_1000_customers_per_day"]
250.0
>>> r["lift"]["10%"]
{'rows': 1, 'churners': 1, 'churn_rate': 1.0, 'lift': 2.5}
>>> alert_summary(r)
'high+ 250.0 alerts/1k customers/day, precision 0.60, recall 0.75; lift top 10% 2.50x, top 50% 1.50x'
"""

from __future__ import annotations

import numpy as np

DAY = 86400.0
#: The slices of the riskiest rows whose lift is reported (shares of the window's rows).
TOPS = (0.01, 0.05)


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(float(a) / float(b), digits) if b else None


def _top_label(share: float) -> str:
    return f"{share * 100:g}%"


def alert_report(risk, y, times, thresholds, min_band: str = "high", tops=TOPS) -> dict:
    """Alert volume, precision and recall by band, and lift of the riskiest rows, on one window.

    ``risk``: each row's risk; ``y``: 1 if the customer churned; ``times``: each row's observation
    time (epoch s; only the window's length is used); ``thresholds``: lower bounds of medium, high,
    critical; ``min_band``: the lowest band that raises alerts; ``tops``: shares for the lift."""
    from streaming.scoring.bands import BANDS

    risk = np.asarray(risk, dtype=float)
    y = np.asarray(y).astype(int)
    times = np.asarray(times, dtype=float)
    if not (len(risk) == len(y) == len(times)):
        raise ValueError(f"risk, y and times differ in length ({len(risk)}, {len(y)}, {len(times)})")
    if min_band not in BANDS[1:]:
        raise ValueError(f"min_band must be one of {', '.join(BANDS[1:])}, not {min_band!r}")
    rows, churners = len(y), int(y.sum())
    days = round(float(times.max() - times.min()) / DAY, 4) if rows else 0.0
    bands = {}
    for name, bound in zip(BANDS[1:], thresholds):
        at = risk >= bound
        alerts, hits = int(at.sum()), int(y[at].sum())
        per_day = _ratio(1000.0 * alerts / rows, days) if rows else None
        bands[name] = {"from_risk": float(bound), "alerts": alerts, "churners": hits,
                       "precision": _ratio(hits, alerts), "recall": _ratio(hits, churners),
                       "per_1000_customers_per_day": None if per_day is None else round(per_day, 2)}
    base = _ratio(churners, rows)
    order = np.argsort(-risk, kind="stable")
    lift = {}
    for share in tops:
        k = min(rows, max(1, round(share * rows)))
        hits = int(y[order[:k]].sum()) if rows else 0
        rate = _ratio(hits, k) if rows else None
        lift[_top_label(share)] = {"rows": k if rows else 0, "churners": hits, "churn_rate": rate,
                                   "lift": _ratio(hits / k, churners / rows) if rows and churners else None}
    return {"window": {"rows": rows, "churners": churners, "days": days, "base_churn_rate": base},
            "alert_min_band": min_band,
            "alerts_per_1000_customers_per_day": bands[min_band]["per_1000_customers_per_day"],
            "bands": bands, "lift": lift}


def alert_summary(report: dict) -> str:
    """One short line of ``alert_report``'s figures for the alerting band, and the lifts."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    band = report["alert_min_band"]
    b = report["bands"][band]
    lifts = ", ".join(f"top {k} {num(v['lift'], '.2f')}x" for k, v in report["lift"].items())
    return (f"{band}+ {num(report['alerts_per_1000_customers_per_day'], '.1f')} alerts/1k customers/day, "
            f"precision {num(b['precision'], '.2f')}, recall {num(b['recall'], '.2f')}; lift {lifts}")
