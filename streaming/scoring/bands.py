"""Risk bands, hysteresis and the alert rule: when a score becomes an alert.

Bands are ``low < medium < high < critical`` with lower bounds ``thresholds``.
A customer enters a higher band as soon as the risk reaches it, but leaves a
band only when the risk falls ``hysteresis`` below the band's lower bound, so a
risk wobbling around a bound does not flip the band back and forth.

An alert is raised when the band rises into one at or above ``min_band``, and
either it is higher than the band of the customer's last alert or the cooldown
since that alert has passed. Times are event times, so replaying the same
events from the same state gives the same alerts.

>>> t = (0.3, 0.5, 0.7)
>>> band_of(0.55, t), band_of(0.05, t), band_of(0.7, t)
(2, 0, 3)
>>> with_hysteresis(0.48, current=2, thresholds=t, hysteresis=0.05)  # just below 0.5: stays high
2
>>> with_hysteresis(0.44, current=2, thresholds=t, hysteresis=0.05)
1
>>> rule = AlertRule(min_band=2, cooldown_s=3600)
>>> rule.should_alert(new=2, previous=1, alert_band=None, alerted_at=None, now=0)
True
>>> rule.should_alert(new=2, previous=1, alert_band=2, alerted_at=0, now=600)  # back into high within the cooldown
False
>>> rule.should_alert(new=3, previous=2, alert_band=2, alerted_at=0, now=600)  # escalation alerts at once
True
>>> rule.should_alert(new=2, previous=1, alert_band=2, alerted_at=0, now=7200)
True
>>> rule.should_alert(new=2, previous=2, alert_band=None, alerted_at=None, now=0)  # no crossing
False
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

BANDS = ("low", "medium", "high", "critical")
BAND_INDEX = {name: i for i, name in enumerate(BANDS)}


def band_of(risk: float, thresholds) -> int:
    return bisect_right(list(thresholds), risk)


def with_hysteresis(risk: float, current: int | None, thresholds, hysteresis: float) -> int:
    """The band after ``risk``, given the band the customer is in now (None: no band yet)."""
    raw = band_of(risk, thresholds)
    if current is None or raw >= current:
        return raw
    band = current
    while band > 0 and risk < thresholds[band - 1] - hysteresis:
        band -= 1
    return band


@dataclass(frozen=True)
class AlertRule:
    min_band: int = 2
    cooldown_s: float = 6 * 3600.0

    def should_alert(self, new: int, previous: int | None, alert_band: int | None, alerted_at: float | None,
                     now: float) -> bool:
        if new < self.min_band or (previous is not None and new <= previous):
            return False
        if alert_band is None or alerted_at is None or new > alert_band:
            return True
        return now - alerted_at >= self.cooldown_s
