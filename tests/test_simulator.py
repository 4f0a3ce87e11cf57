"""The simulator without a broker: determinism, validity, plans, rhythm, churn precursors and what blurs them
(silent churners, loyal customers' episodes, usage noise), and how hard the simulated history is to learn."""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pytest

from churn.config import Settings, SimulatorSettings
from churn.contracts import CDR, CHURN_LABEL, parse_time
from churn.model.bootstrap import simulated_auc
from churn.simulator import Simulator
from churn.simulator.bad_events import BAD_KINDS
from churn.simulator.behaviour import CARE, EPISODES, OFF_NET, shift_at
from churn.simulator.population import DATA, VOICE
from churn.simulator.simulator import SIGNAL_STRENGTH

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


def window_stats(sim, cols, window, group) -> dict[str, float]:
    """Per-customer means over ``group`` (customers) of the events inside ``window`` (an event mask, 30 days)."""
    c = cols["customer"]
    voice, peer = cols["record_type"] == VOICE, cols["record_type"] != DATA

    def per_customer(mask):
        return np.bincount(c[mask], minlength=len(sim.pop)).astype(float)[group]

    calls = per_customer(window & voice)
    return {
        "events_per_day": per_customer(window).mean() / 30,
        "care_calls": per_customer(window & voice & (cols["counterparty"] == CARE)).mean(),
        "drop_rate": per_customer(window & voice & cols["dropped"]).sum() / calls.sum(),
        "offnet_share": per_customer(window & peer & (cols["counterparty"] == OFF_NET)).sum()
        / per_customer(window & peer).sum(),
    }


def label_windows(sim, cols):
    """Event masks: the 30 days before each event's customer's label, and the 30 days before those."""
    t, label_t = cols["time_ms"] / 1000, sim.label_s[cols["customer"]]
    last30 = (t >= label_t - 30 * DAY) & (t < label_t)
    before = (t >= label_t - 60 * DAY) & (t < label_t - 30 * DAY)
    return last30, before


def test_churners_last_30_days_differ_in_the_intended_direction(history):
    sim, cols, labels = history
    last30, before = label_windows(sim, cols)
    # customers with 60 simulated days before their label, with a phone line
    full = (sim.label_s - 60 * DAY >= END - HISTORY_DAYS * DAY) & sim.pop.has_phone
    ch, st = full & sim.pop.churner, full & ~sim.pop.churner

    def stats(window):
        a, b = window_stats(sim, cols, window, ch), window_stats(sim, cols, window, st)
        return {k: (a[k], b[k]) for k in a}

    last, base = stats(last30), stats(before)
    print("last 30 days (churners, retained):", last, "\n30-60 days before:", base)
    assert ch.sum() > 100 and st.sum() > 300
    # churners (silent ones included) against retained customers, in the 30 days before the label. Usage is
    # compared with each group's own previous 30 days: churners' plans (fibre, dearer) make them busier to begin with
    usage = {k: last["events_per_day"][i] / base["events_per_day"][i] for i, k in enumerate(("churners", "retained"))}
    assert usage["churners"] < usage["retained"] - 0.1  # usage falls more
    assert last["care_calls"][0] > 2.5 * last["care_calls"][1]  # more customer-care calls
    assert last["drop_rate"][0] > 1.5 * last["drop_rate"][1]  # more dropped calls
    assert last["offnet_share"][0] > last["offnet_share"][1] + 0.05  # higher off-net share
    # churners against their own previous 30 days: usage falls, the rest rises; retained stay put
    assert usage["churners"] < 0.8
    assert 0.9 < usage["retained"] < 1.1
    assert last["care_calls"][0] > 3 * base["care_calls"][0]
    assert last["drop_rate"][0] > 1.5 * base["drop_rate"][0]
    assert last["offnet_share"][0] > base["offnet_share"][0] + 0.03


def test_silent_churners_leave_without_warning_the_others_drift(history):
    sim, cols, _ = history
    last30, before = label_windows(sim, cols)
    full = (sim.label_s - 60 * DAY >= END - HISTORY_DAYS * DAY) & sim.pop.has_phone
    silent, warning = full & sim.pop.silent, full & sim.pop.churner & ~sim.pop.silent
    assert sim.pop.silent[~sim.pop.churner].sum() == 0 and (sim.amplitude[sim.pop.silent] == 0).all()
    assert 0.2 < sim.pop.silent[sim.pop.churner].mean() < 0.4
    quiet, drift, retained = ({k: window_stats(sim, cols, w, group) for k, w in (("last", last30), ("before", before))}
                              for group in (silent, warning, full & ~sim.pop.churner))
    print("silent churners:", quiet, "\nchurners who warn:", drift, "\nretained:", retained)
    assert silent.sum() > 30 and warning.sum() > 80
    # silent churners: their last 30 days look like the 30 before, and like retained customers'
    assert 0.9 < quiet["last"]["events_per_day"] / quiet["before"]["events_per_day"] < 1.1
    assert abs(quiet["last"]["offnet_share"] - quiet["before"]["offnet_share"]) < 0.02
    assert 0.67 < quiet["last"]["care_calls"] / retained["last"]["care_calls"] < 1.5  # few; billing disputes vary
    assert 0.67 < quiet["last"]["drop_rate"] / retained["last"]["drop_rate"] < 1.5
    # the others drift
    assert drift["last"]["events_per_day"] < 0.85 * drift["before"]["events_per_day"]
    assert drift["last"]["care_calls"] > 3 * drift["before"]["care_calls"]
    assert drift["last"]["drop_rate"] > 2 * drift["before"]["drop_rate"]
    assert drift["last"]["offnet_share"] > drift["before"]["offnet_share"] + 0.04


def test_loyal_customers_have_churn_like_episodes(history):
    sim, cols, _ = history
    c, t = cols["customer"], cols["time_ms"] / 1000
    ep = sim.episodes
    names = list(EPISODES)
    inside = (ep.start_s >= END - HISTORY_DAYS * DAY) & (ep.end_s < END) & ~sim.pop.churner[ep.customer]
    voice = cols["record_type"] == VOICE
    # every event's episode of each kind, if any (a customer's episodes of one kind rarely overlap)
    seen = {}
    for name in names:
        k = names.index(name)
        mine = inside & (ep.kind == k)
        assert mine.sum() > 50, name  # hundreds of loyal customers go through each kind
        during = np.zeros(len(t), dtype=bool)
        for cust, a, b in zip(ep.customer[mine], ep.start_s[mine], ep.end_s[mine]):
            lo, hi = np.searchsorted(t, [a, b])  # events are in time order
            during[lo:hi] |= c[lo:hi] == cust
        who = np.zeros(len(sim.pop), dtype=bool)
        who[ep.customer[mine]] = True
        outside = who[c] & ~during
        days_in = float((ep.end_s[mine] - ep.start_s[mine]).sum() / DAY)
        days_out = who.sum() * HISTORY_DAYS - days_in
        seen[name] = {
            "events_per_day": (during.sum() / days_in, outside.sum() / days_out),
            "care_calls_per_day": ((during & voice & (cols["counterparty"] == CARE)).sum() / days_in,
                                   (outside & voice & (cols["counterparty"] == CARE)).sum() / days_out),
            "drop_rate": ((during & voice & cols["dropped"]).sum() / (during & voice).sum(),
                          (outside & voice & cols["dropped"]).sum() / (outside & voice).sum()),
        }
    print("loyal customers during and outside their episodes:", seen)
    holiday, dispute, coverage = seen["holiday"], seen["billing_dispute"], seen["bad_coverage"]
    assert holiday["events_per_day"][0] < 0.15 * holiday["events_per_day"][1]  # almost no usage
    assert dispute["care_calls_per_day"][0] > 10 * dispute["care_calls_per_day"][1]  # many care calls
    assert coverage["drop_rate"][0] > 5 * coverage["drop_rate"][1]  # many dropped calls


def test_usage_varies_widely_between_customers_of_the_same_plan(history):
    sim, cols, _ = history
    p, loyal = sim.pop.profile, ~sim.pop.churner
    charges = p["MonthlyCharges"].to_numpy()
    # calls depend on the phone plan and the monthly charges: one line, charges in the middle of its range
    one_line = (p["PhoneService"] == "Yes").to_numpy() & (p["MultipleLines"] == "No").to_numpy() & loyal
    one_line &= (charges >= np.quantile(charges[one_line], 0.3)) & (charges <= np.quantile(charges[one_line], 0.7))
    # data sessions on the internet plan: fibre without streaming
    fibre = ((p["InternetService"] == "Fiber optic") & (p["StreamingTV"] == "No")
             & (p["StreamingMovies"] == "No")).to_numpy() & loyal
    calls = np.bincount(cols["customer"][cols["record_type"] == VOICE], minlength=len(sim.pop))[one_line]
    data = np.bincount(cols["customer"][cols["record_type"] == DATA], minlength=len(sim.pop))[fibre]
    print(f"{one_line.sum()} customers of one phone plan, calls p10/p50/p90 {np.quantile(calls, [0.1, 0.5, 0.9])}; "
          f"{fibre.sum()} of one internet plan, data sessions {np.quantile(data, [0.1, 0.5, 0.9])}")
    assert one_line.sum() > 100 and fibre.sum() > 50
    for n in (calls, data):
        assert np.quantile(n, 0.9) > 4 * np.quantile(n, 0.1)  # log-normal, sigma 0.7: 6x; measured 5.0 (both)


def test_signal_strength_scales_the_drift_and_zero_means_none():
    label = np.array([28.0 * DAY] * 3)
    weak, strong = (shift_at(27.0 * DAY, label, np.array([0.0, a, 2 * a]), 28 * DAY) for a in (0.25, 0.5))
    assert weak.usage[0] == 1.0 and weak.care_add[0] == 0.0 and weak.drop_add[0] == 0.0
    assert np.allclose(strong.care_add[1], 2 * weak.care_add[1]) and np.allclose(strong.care_add[1], weak.care_add[2])
    assert weak.usage[1] < 1.0 and weak.offnet_add[1] > 0.0
    kw = dict(seed=4, start_s=END - 40 * DAY, end_s=END, customers=300)
    none = Simulator(signal_strength=0.0, **kw)
    assert (none.amplitude == 0).all()
    assert (Simulator(signal_strength=2.0, **kw).amplitude > Simulator(**kw).amplitude).any()
    with pytest.raises(ValueError):
        Simulator(signal_strength=-0.1, **kw)


def test_the_default_signal_strength_is_the_settings_default():
    assert SimulatorSettings().signal_strength == SIGNAL_STRENGTH == Simulator(
        seed=1, start_s=END - DAY, end_s=END, customers=10).signal_strength


def test_at_the_default_signal_the_simulated_history_is_as_hard_as_real_churn():
    """The bootstrap's path (``churn model bootstrap`` defaults: 3,000 customers, 60 days): the model's ROC AUC on
    the later window is in [0.85, 0.92]. Deterministic (fixed end and seed); about 20 s."""
    out = simulated_auc(Settings())
    print(out)
    assert 0.85 <= out["roc_auc"] <= 0.92
    assert out["roc_auc"] > out["profile_only_roc_auc"]  # behaviour still helps


def test_live_step_holds_the_count_and_moves_simulated_time():
    sim = Simulator(seed=3, start_s=END, end_s=END + 60 * DAY, customers=300, mode="live")
    step = sim.live_step(0, 1000, wall_t0=END, wall_t1=END + 0.1)
    assert len(step.values) == 1000
    times = [parse_time(orjson.loads(v)["event_time"]) for v in step.values]
    assert min(times) >= END and max(times) < END + 0.1 + 1e-3
    assert sim.sim_now_s > END + 3600  # 1000 events of 300 customers is hours of their life
