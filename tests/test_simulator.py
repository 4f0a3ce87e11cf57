"""The simulator without a broker: determinism, validity, plans, rhythm, and churn precursors."""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pytest

from churn.contracts import CDR, CHURN_LABEL, parse_time
from churn.simulator import Simulator
from churn.simulator.bad_events import BAD_KINDS
from churn.simulator.behaviour import CARE, OFF_NET
from churn.simulator.population import DATA, VOICE

END = parse_time("2026-11-01T00:00:00Z")
DAY = 86400.0
HISTORY_DAYS = 90


def digest(sim: Simulator) -> str:
    h = hashlib.sha256()
    for step in sim.backfill_steps():
        for k, v in zip(step.keys, step.values):
            h.update(k + b"\0" + v + b"\n")
        for k, v in step.labels:
            h.update(k + b"\1" + v + b"\n")
    return h.hexdigest()


def test_same_seed_same_stream_other_seed_other_stream():
    kw = dict(start_s=END - 2 * DAY, end_s=END, customers=300, bad_ratio=0.05, duplicate_ratio=0.02,
              clock=lambda: END)
    a, b, c = digest(Simulator(seed=5, **kw)), digest(Simulator(seed=5, **kw)), digest(Simulator(seed=6, **kw))
    assert a == b
    assert a != c


def test_every_good_event_is_valid_and_ids_are_unique():
    sim = Simulator(seed=1, start_s=END - 3 * DAY, end_s=END, customers=400)
    ids, n = set(), 0
    for step in sim.backfill_steps():
        for key, value in zip(step.keys, step.values):
            event, violation = CDR.parse(value, now=END)
            assert violation is None, (violation, value)
            assert event["customer_id"].encode() == key
            assert END - 3 * DAY <= parse_time(event["event_time"]) < END
            ids.add(event["event_id"])
            n += 1
        for key, value in step.labels:
            assert CHURN_LABEL.parse(value, now=END)[1] is None
    assert n > 10_000 and len(ids) == n


def test_bad_events_carry_the_reason_the_validator_gives_and_duplicates_repeat_ids():
    sim = Simulator(seed=2, start_s=END - DAY, end_s=END, customers=500, bad_ratio=0.1, duplicate_ratio=0.05,
                    clock=lambda: END)
    total = good = dups = 0
    seen: dict[str, int] = {}
    reasons: dict[str, int] = {}
    bad_kinds: dict[str, int] = {}
    for step in sim.backfill_steps():
        total += len(step.values)
        good += len(step.good)
        dups += step.duplicates
        for kind, n in step.bad.items():
            bad_kinds[kind] = bad_kinds.get(kind, 0) + n
        for kind, value in step.bad_values:
            assert CDR.parse(value, now=END)[1].reason == BAD_KINDS[kind]
        for value in step.values:
            event, violation = CDR.parse(value, now=END)
            if violation:
                reasons[violation.reason] = reasons.get(violation.reason, 0) + 1
            else:
                seen[event["event_id"]] = seen.get(event["event_id"], 0) + 1
    n_bad = sum(bad_kinds.values())
    assert total == good + dups + n_bad
    assert set(bad_kinds) == set(BAD_KINDS)  # every kind is exercised
    assert reasons == {BAD_KINDS[k]: n for k, n in bad_kinds.items()}
    assert 0.08 < n_bad / total < 0.12
    assert sum(1 for c in seen.values() if c == 2) == dups and len(seen) == good


@pytest.fixture(scope="module")
def history():
    """90 days of 1,200 customers' CDRs as columns, with each customer's label."""
    sim = Simulator(seed=42, start_s=END - HISTORY_DAYS * DAY, end_s=END, customers=1200)
    cols = {k: [] for k in ("customer", "time_ms", "record_type", "counterparty", "dropped", "data_bytes")}
    labels = {}
    for step in sim.backfill_steps():
        for k in cols:
            cols[k].append(getattr(step.good, k))
        for key, value in step.labels:
            e = orjson.loads(value)
            labels[e["customer_id"]] = (parse_time(e["label_time"]), e["churned"])
    return sim, {k: np.concatenate(v) for k, v in cols.items()}, labels


def test_one_label_per_customer_matching_the_table(history):
    sim, cols, labels = history
    assert len(labels) == len(sim.pop)
    for cid, churner in zip(sim.pop.customer_id, sim.pop.churner):
        assert labels[cid][1] == bool(churner)
    # churners are gone after their churn date; retained customers keep going
    t = cols["time_ms"] / 1000
    after = t >= sim.label_s[cols["customer"]]
    assert not (after & sim.pop.churner[cols["customer"]]).any()
    assert (after & ~sim.pop.churner[cols["customer"]]).any()


def test_usage_follows_the_plan(history):
    sim, cols, _ = history
    c, kind = cols["customer"], cols["record_type"]
    no_phone = ~sim.pop.has_phone[c]
    no_internet = ~sim.pop.has_internet[c]
    assert not ((kind != DATA) & no_phone).any()  # no phone service: no calls, no SMS
    assert not ((kind == DATA) & no_internet).any()  # no internet service: no data
    fibre = (sim.pop.profile["InternetService"] == "Fiber optic").to_numpy()[c]
    data = kind == DATA
    assert cols["data_bytes"][data & fibre].mean() > 1.8 * cols["data_bytes"][data & ~fibre].mean()
    # dearer plans (more monthly charges) make more calls
    charges = sim.pop.profile["MonthlyCharges"].to_numpy()
    calls = np.bincount(c[kind == VOICE], minlength=len(sim.pop))
    phone = sim.pop.has_phone & ~sim.pop.churner
    top, bottom = charges[phone] > np.median(charges[phone]), charges[phone] <= np.median(charges[phone])
    assert calls[phone][top].mean() > 1.2 * calls[phone][bottom].mean()


def test_daily_and_weekly_rhythm(history):
    _, cols, _ = history
    t = cols["time_ms"] // 1000
    hours = np.bincount((t // 3600) % 24, minlength=24)
    assert hours[2:5].mean() < 0.2 * hours[17:21].mean()  # nights are quiet
    weekday = (t // 86400 + 3) % 7
    voice = cols["record_type"] == VOICE
    per_day = np.bincount(weekday[voice], minlength=7)
    assert per_day[5:].mean() < 0.85 * per_day[:5].mean()  # fewer calls at weekends


def test_churners_last_30_days_differ_in_the_intended_direction(history):
    sim, cols, labels = history
    c, t = cols["customer"], cols["time_ms"] / 1000
    label_t = sim.label_s[c]
    voice, peer = cols["record_type"] == VOICE, cols["record_type"] != DATA
    last30 = (t >= label_t - 30 * DAY) & (t < label_t)
    before = (t >= label_t - 60 * DAY) & (t < label_t - 30 * DAY)

    def per_customer(mask):
        return np.bincount(c[mask], minlength=len(sim.pop)).astype(float)

    # customers with 60 simulated days before their label, with a phone line
    full = (sim.label_s - 60 * DAY >= END - HISTORY_DAYS * DAY) & sim.pop.has_phone
    ch, st = full & sim.pop.churner, full & ~sim.pop.churner

    def stats(window):
        events = per_customer(window)
        calls = per_customer(window & voice)
        return {
            "events_per_day": (events[ch].mean() / 30, events[st].mean() / 30),
            "care_calls": (per_customer(window & voice & (cols["counterparty"] == CARE))[ch].mean(),
                           per_customer(window & voice & (cols["counterparty"] == CARE))[st].mean()),
            "drop_rate": (per_customer(window & voice & cols["dropped"])[ch].sum() / calls[ch].sum(),
                          per_customer(window & voice & cols["dropped"])[st].sum() / calls[st].sum()),
            "offnet_share": (per_customer(window & peer & (cols["counterparty"] == OFF_NET))[ch].sum()
                             / per_customer(window & peer)[ch].sum(),
                             per_customer(window & peer & (cols["counterparty"] == OFF_NET))[st].sum()
                             / per_customer(window & peer)[st].sum()),
        }

    last, base = stats(last30), stats(before)
    print("last 30 days (churners, retained):", last, "\n30-60 days before:", base)
    assert ch.sum() > 100 and st.sum() > 300
    # churners against retained customers, in the 30 days before the label
    assert last["events_per_day"][0] < 0.9 * last["events_per_day"][1]  # less usage
    assert last["care_calls"][0] > 5 * last["care_calls"][1]  # more customer-care calls
    assert last["drop_rate"][0] > 2 * last["drop_rate"][1]  # more dropped calls
    assert last["offnet_share"][0] > last["offnet_share"][1] + 0.08  # higher off-net share
    # churners against their own previous 30 days: usage falls, the rest rises; retained stay put
    assert last["events_per_day"][0] < 0.8 * base["events_per_day"][0]
    assert 0.9 < last["events_per_day"][1] / base["events_per_day"][1] < 1.1
    assert last["care_calls"][0] > 3 * base["care_calls"][0]
    assert last["drop_rate"][0] > 1.5 * base["drop_rate"][0]
    assert last["offnet_share"][0] > base["offnet_share"][0] + 0.05


def test_live_step_holds_the_count_and_moves_simulated_time():
    sim = Simulator(seed=3, start_s=END, end_s=END + 60 * DAY, customers=300, mode="live")
    step = sim.live_step(0, 1000, wall_t0=END, wall_t1=END + 0.1)
    assert len(step.values) == 1000
    times = [parse_time(orjson.loads(v)["event_time"]) for v in step.values]
    assert min(times) >= END and max(times) < END + 0.1 + 1e-3
    assert sim.sim_now_s > END + 3600  # 1000 events of 300 customers is hours of their life
