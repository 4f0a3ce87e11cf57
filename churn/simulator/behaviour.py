"""How customers behave over time: rhythm, day-to-day noise, the drift before churn, and episodes.

``shift_at`` says how far every customer's behaviour is from their usual at a
moment; ``intensity`` gives their rates of voice, SMS and data events then;
``sample_events`` draws the events of a time slice with all their attributes,
vectorised with numpy.

* **Day-to-day noise**: each customer's usage on a given day is multiplied by
  log-normal noise (``DAILY_SIGMA``, mean 1), so a quiet day or two is normal.
* **Drift before churn**: a churner who warns drifts over the ``precursor_days``
  before the churn date (``ramp`` goes from 0 to 1), by their own
  ``drift_weight`` times the simulator's signal strength (``amplitude``). At
  amplitude 1, usage falls by 65 %, calls to customer care rise by a quarter
  of calls, dropped calls rise by 12 points and the off-net share of calls by
  35 points. Silent churners (``Population.silent``) do not drift at all.
  After the churn date the customer is gone and produces nothing.
* **Episodes**: anyone, loyal customers included, goes through churn-like
  episodes at random (``EPISODES``): a billing dispute (many calls to customer
  care), a holiday (almost no usage) or a week of bad coverage (many dropped
  calls). They end, and behaviour returns to normal.

>>> ramp(np.array([0.0, 14.0, 28.0, 29.0]) * DAY, label_s=28.0 * DAY, churner=True, precursor_s=28 * DAY).tolist()
[0.0, 0.5, 1.0, 1.0]
>>> sorted(EPISODES)
['bad_coverage', 'billing_dispute', 'holiday']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churn.simulator.population import DATA, N_CELLS, SMS, VOICE, Population

DAY = 86400.0

# Relative activity by hour of day (UTC) for voice, SMS and data; normalised to mean 1.
_HOURLY = np.array(
    [
        [0.1, 0.05, 0.03, 0.03, 0.05, 0.15, 0.4, 0.9, 1.4, 1.6, 1.7, 1.7, 1.6, 1.5, 1.5, 1.5, 1.6, 1.7, 1.8, 1.7, 1.4, 1.0, 0.6, 0.3],
        [0.3, 0.15, 0.08, 0.05, 0.05, 0.1, 0.3, 0.7, 1.1, 1.2, 1.3, 1.3, 1.4, 1.3, 1.3, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.7, 1.3, 0.8],
        [0.6, 0.4, 0.25, 0.2, 0.2, 0.3, 0.5, 0.8, 1.0, 1.0, 1.0, 1.1, 1.2, 1.1, 1.0, 1.0, 1.1, 1.3, 1.5, 1.7, 1.9, 2.0, 1.7, 1.1],
    ]
)
HOURLY = _HOURLY / _HOURLY.mean(axis=1, keepdims=True)
# Relative activity by weekday (Monday first): fewer calls, more data at weekends.
_WEEKLY = np.array(
    [
        [1.1, 1.1, 1.1, 1.1, 1.1, 0.8, 0.7],
        [1.0, 1.0, 1.0, 1.0, 1.1, 1.0, 0.9],
        [0.95, 0.95, 0.95, 0.95, 1.0, 1.1, 1.1],
    ]
)
WEEKLY = _WEEKLY / _WEEKLY.mean(axis=1, keepdims=True)

# How strongly a full ramp at amplitude 1 changes behaviour.
USAGE_DROP = 0.65
CARE_SHARE_ADD = 0.25
DROP_PROB_ADD = 0.12
OFFNET_SHARE_ADD = 0.35
DATA_MB_DROP = 0.5

#: Spread (sigma of the log) of each customer's day-to-day usage noise.
DAILY_SIGMA = 0.35


@dataclass(frozen=True)
class EpisodeKind:
    per_year: float  # how often a customer goes through one, on average
    days: tuple[float, float]  # how long one lasts: uniform between these
    usage: float = 1.0  # multiplies the event rates
    care_add: float = 0.0  # added to the share of calls that go to customer care
    drop_add: float = 0.0  # added to the probability that a call drops


#: Churn-like episodes anyone can go through; they end and behaviour returns to normal.
EPISODES = {
    "billing_dispute": EpisodeKind(per_year=1.5, days=(3.0, 10.0), usage=1.1, care_add=0.3),
    "holiday": EpisodeKind(per_year=2.0, days=(5.0, 15.0), usage=0.05),
    "bad_coverage": EpisodeKind(per_year=1.5, days=(4.0, 9.0), drop_add=0.18),
}
_KINDS = list(EPISODES.values())
_MAX_EPISODE_S = max(k.days[1] for k in _KINDS) * 86400.0

DIRECTIONS = ("outgoing", "incoming")
COUNTERPARTIES = ("on_net", "off_net", "customer_care", "international")
ON_NET, OFF_NET, CARE, INTL = 0, 1, 2, 3


def ramp(t_s, label_s, churner, precursor_s: float) -> np.ndarray:
    """How far into its pre-churn drift a customer is at ``t_s``: 0 (none) to 1 (about to leave)."""
    r = 1.0 - (label_s - t_s) / precursor_s
    return np.where(churner, np.clip(r, 0.0, 1.0), 0.0)


@dataclass
class Episodes:
    """Every episode of a simulation, sorted by start time."""

    customer: np.ndarray  # int
    kind: np.ndarray  # int index into EPISODES
    start_s: np.ndarray
    end_s: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, start_s: float, end_s: float) -> "Episodes":
        """Episodes of ``n`` customers that are under way at some moment of [start_s, end_s)."""
        lo = start_s - _MAX_EPISODE_S
        years = (end_s - lo) / (365.0 * 86400.0)
        parts = []
        for k, kind in enumerate(_KINDS):
            counts = rng.poisson(kind.per_year * years, n)
            who = np.repeat(np.arange(n), counts)
            begin = lo + rng.random(len(who)) * (end_s - lo)
            length = rng.uniform(*kind.days, len(who)) * 86400.0
            parts.append((who, np.full(len(who), k), begin, begin + length))
        customer, kind, begin, stop = (np.concatenate(x) for x in zip(*parts))
        order = np.argsort(begin, kind="stable")
        return cls(customer[order], kind[order], begin[order], stop[order])

    def active(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(customer, kind) of the episodes under way at ``t_s``."""
        lo, hi = np.searchsorted(self.start_s, [t_s - _MAX_EPISODE_S, t_s], side="right")
        on = self.end_s[lo:hi] > t_s
        return self.customer[lo:hi][on], self.kind[lo:hi][on]


@dataclass
class Shift:
    """How far each customer's behaviour is from their usual at a moment, one value per customer."""

    usage: np.ndarray  # multiplies the event rates
    care_add: np.ndarray  # added to the share of calls that go to customer care
    drop_add: np.ndarray  # added to the probability that a call drops
    offnet_add: np.ndarray  # added to the off-net share of calls and SMS
    data_mb: np.ndarray  # multiplies the volume of data sessions


def shift_at(t_s: float, label_s: np.ndarray, amplitude: np.ndarray, precursor_s: float,
             episodes: Episodes | None = None) -> Shift:
    """Every customer's ``Shift`` at ``t_s``: the drift before churn (``amplitude`` per customer, 0 for
    none) and the episodes under way."""
    r = ramp(t_s, label_s, amplitude > 0, precursor_s) * amplitude
    shift = Shift(usage=np.maximum(1.0 - USAGE_DROP * r, 0.05), care_add=CARE_SHARE_ADD * r,
                  drop_add=DROP_PROB_ADD * r, offnet_add=OFFNET_SHARE_ADD * r,
                  data_mb=np.maximum(1.0 - DATA_MB_DROP * r, 0.1))
    if episodes is not None:
        customer, kind = episodes.active(t_s)
        for k, spec in enumerate(_KINDS):
            c = customer[kind == k]
            shift.usage[c] *= spec.usage
            shift.care_add[c] += spec.care_add
            shift.drop_add[c] += spec.drop_add
    return shift


def day_noise(seed: int, n: int, t_s: float) -> np.ndarray:
    """Each customer's usage multiplier (n,) on the day of ``t_s``: log-normal, mean 1, the same all day."""
    rng = np.random.default_rng([seed, 7, int(t_s // DAY)])
    return rng.lognormal(-0.5 * DAILY_SIGMA**2, DAILY_SIGMA, n)


def rhythm(t_s: float) -> np.ndarray:
    """Multipliers (3,) for voice, SMS, data at epoch time ``t_s`` (UTC)."""
    hour = int(t_s // 3600) % 24
    weekday = (int(t_s // DAY) + 3) % 7  # 1970-01-01 was a Thursday
    return HOURLY[:, hour] * WEEKLY[:, weekday]


def intensity(pop: Population, label_s: np.ndarray, t_s: float, shift: Shift, noise: np.ndarray) -> np.ndarray:
    """Events per second (n, 3) for every customer at ``t_s``, given their ``shift`` and day noise."""
    active = ~(pop.churner & (t_s >= label_s))
    per_day = pop.daily_rate * rhythm(t_s)[None, :] * (shift.usage * noise * active)[:, None]
    return per_day / DAY


@dataclass
class EventBatch:
    """Columns of a batch of CDRs (one row per event), sorted by event time."""

    customer: np.ndarray  # int index into the population
    time_ms: np.ndarray  # int64 epoch milliseconds
    record_type: np.ndarray  # int8: VOICE, SMS, DATA
    direction: np.ndarray  # int8 index into DIRECTIONS
    duration_s: np.ndarray  # float; NaN for SMS
    data_bytes: np.ndarray  # int64; -1 unless data
    counterparty: np.ndarray  # int8 index into COUNTERPARTIES; -1 for data
    dropped: np.ndarray  # bool (voice only)
    cell: np.ndarray  # int
    roaming: np.ndarray  # bool
    charge: np.ndarray  # float

    def __len__(self) -> int:
        return len(self.time_ms)

    def silver_columns(self, customer_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The events as Silver's columns (what the stream stores after parsing), as arrays.

        ``event_time`` is epoch seconds; fields a record type does not have are NaN/None.
        """
        record_type = np.array(("voice", "sms", "data"), dtype=object)[self.record_type]
        return {
            "customer_id": np.asarray(customer_ids, dtype=object)[self.customer],
            "event_time": self.time_ms / 1000.0,
            "record_type": record_type,
            "direction": np.array(DIRECTIONS, dtype=object)[self.direction],
            "duration_s": self.duration_s,
            "data_bytes": np.where(self.data_bytes >= 0, self.data_bytes, np.nan),
            "counterparty": np.array((*COUNTERPARTIES, None), dtype=object)[self.counterparty],
            "dropped": self.dropped,
            "roaming": self.roaming,
            "charge": self.charge,
        }


def sample_events(
    rng: np.random.Generator,
    pop: Population,
    customer: np.ndarray,
    record_type: np.ndarray,
    shift: Shift,
    time_ms: np.ndarray,
) -> EventBatch:
    """Draw every attribute of the given (customer, record type, time) events, customers shifted by ``shift``."""
    m = len(customer)
    order = np.argsort(time_ms, kind="stable")
    customer, record_type, time_ms = customer[order], record_type[order], time_ms[order]
    is_voice, is_sms, is_data = record_type == VOICE, record_type == SMS, record_type == DATA

    # who is on the other end (voice and SMS)
    care = np.minimum(pop.care_share[customer] + shift.care_add[customer], 0.8)
    care = np.where(is_voice, care, care * 0.1)
    intl = pop.intl_share[customer]
    offnet = np.minimum(pop.offnet_share[customer] + shift.offnet_add[customer], 0.95)
    u = rng.random(m)
    counterparty = np.full(m, ON_NET, dtype=np.int8)
    counterparty[u < care + intl + (1 - care - intl) * offnet] = OFF_NET
    counterparty[u < care + intl] = INTL
    counterparty[u < care] = CARE
    counterparty[is_data] = -1

    direction = (rng.random(m) < np.where(is_voice, 0.45, 0.5)).astype(np.int8)  # 1 = incoming
    direction[is_data | (counterparty == CARE)] = 0

    dropped = is_voice & (rng.random(m) < pop.drop_prob[customer] + shift.drop_add[customer])
    call_s = pop.mean_call_s[customer] * rng.lognormal(-0.3, 0.8, m)
    call_s = np.where(counterparty == CARE, call_s * 2.5, call_s)
    call_s = np.where(dropped, call_s * 0.3, call_s)
    session_s = rng.lognormal(5.0, 1.0, m)
    duration_s = np.round(np.where(is_voice, call_s, np.where(is_data, session_s, np.nan)), 1)
    duration_s = np.minimum(duration_s, 86400.0)

    mb = pop.mean_session_mb[customer] * shift.data_mb[customer] * rng.lognormal(-0.5, 1.0, m)
    data_bytes = np.where(is_data, (mb * 1e6).astype(np.int64), -1)

    roaming = rng.random(m) < pop.roaming_prob[customer]
    moved = rng.random(m) < 0.2
    cell = np.where(moved, rng.integers(0, N_CELLS, m), pop.home_cell[customer])

    minutes = duration_s / 60.0
    per_min = np.select([counterparty == OFF_NET, counterparty == INTL], [0.05, 0.6], 0.0)
    voice_charge = minutes * (per_min + np.where(roaming, 0.3, 0.0))
    sms_charge = np.select([counterparty == OFF_NET, counterparty == INTL], [0.05, 0.2], 0.0)
    data_charge = np.where(roaming, data_bytes / 1e8 * 5.0, 0.0)
    charge = np.round(np.select([is_voice, is_sms], [voice_charge, sms_charge], data_charge), 2)

    return EventBatch(
        customer=customer,
        time_ms=time_ms,
        record_type=record_type.astype(np.int8),
        direction=direction,
        duration_s=duration_s,
        data_bytes=data_bytes,
        counterparty=counterparty,
        dropped=dropped,
        cell=cell,
        roaming=roaming,
        charge=charge,
    )
