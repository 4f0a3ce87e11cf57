"""Property: the nightly retrain takes any customer base without crashing, and its point-in-time training
set holds exactly what the base implies.

Hypothesis generates bases of 240-300 labelled customers, each with a profile (complete, with optional
fields missing, brand-new: activated an hour before the earliest observation, tenure not given so 0 from
the activation date, only a version after the label, or none) and activity (calls and data, only calls,
only SMS, only data, only events after the label, or none), some with a profile version and a burst of
calls after their label that no row may see. The profiles go through ``churn.profiles.load`` (a CSV
extract, its mapping, validation) into the Delta profile history that Feast's ``customer_profile`` view
reads; activity is written to Silver (Delta); the labels are a frame (no Kafka, no Redis: the online
store is SQLite and a training set reads the offline store only). Every time is either before the
earliest possible observation of its label (7 days before it) or after the label, so what each row has
does not depend on the random observation times.

The training set (``batch.train.point_in_time_training_set``, real Feast) must keep exactly the labels of
customers with a profile or activity when observed, count the others as ``unknown``, give each row its own
label, NaN for the part it lacks and the values the base implies for the rest; the nightly step
(``batch.train.run_train``) then trains and registers a model, or, with fewer than ``MIN_LABELS`` usable
labels or one class, skips with ``NotEnoughLabels`` and the set's summary.

Regressions it found: churned labels only among the latest rows crashed the nightly in the Platt
calibration (sklearn's ``ValueError``: one class in the calibration window; ``run_nightly`` only catches
``RuntimeError``), now a ``NotEnoughLabels`` naming the windows; an empty profile history (nothing loaded
yet) crashed the training set (``ArrowInvalid: No match for FieldRef.Name(customer_id)``), now every row
is without a profile.
"""

from __future__ import annotations

import copy
import re
import tempfile
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import settings_from
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_training_any_base import calls, columns, register, write_silver

from churn.contracts import format_time
from churn.features import DAY, HORIZONS
from churn.model.inputs import _N_PROFILE, ACTIVITY_FEATURES, CATEGORY_FEATURES, MODEL_FEATURES, PROFILE_NUMERIC
from churn.profiles import BOOLEAN_FIELDS, FEATURE_COLUMNS, months_between

T0 = 1.75e9  # the first label (2025-06); one more every half day, all in the past for the contract's checks
LOOKAHEAD = 7 * DAY  # point_in_time_training_set's default: each row is observed up to 7 days before its label

PROFILE_KINDS = ["full", "partial", "new", "none", "late"]
ACTIVITY_KINDS = ["mixed", "voice", "sms", "data", "none", "late"]
PAYMENT = ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)", "Voucher"]

#: One customer: (profile kind, activity kind, churned, hours from the last event to the earliest
#: observation, a profile version and calls after the label, fields a "partial" profile lacks as a bitmask).
customer = st.tuples(st.sampled_from(PROFILE_KINDS), st.sampled_from(ACTIVITY_KINDS), st.booleans(),
                     st.integers(1, 15 * 24), st.booleans(), st.integers(1, 2 ** len(FEATURE_COLUMNS) - 1))
bases = st.lists(customer, min_size=240, max_size=300)


def cycle(n: int, churned=lambda i: i % 3 == 0) -> list[tuple]:
    """A base of ``n`` customers going through every combination of kinds in turn."""
    return [(PROFILE_KINDS[i % 5], ACTIVITY_KINDS[(i // 5) % 6], churned(i), 1 + (i * 37) % (15 * 24), i % 4 == 0,
             1 + (i * 7919) % (2 ** len(FEATURE_COLUMNS) - 1)) for i in range(n)]


def fresh_settings(root: Path):
    return settings_from({"CHURN_RUN_DIR": str(root / "run"), "CHURN_STREAMING__LAKE_DIR": str(root / "lake"),
                          "CHURN_SCORING__REGISTRY_DIR": str(root / "models"),
                          "CHURN_FEAST__PROJECT": f"p{uuid.uuid4().hex[:6]}"})


# -- the base: profile extract, Silver, labels -------------------------------------------------------------
def profile_cells(i: int) -> dict[str, str]:
    """Customer ``i``'s profile as extract cells (text, booleans Yes/No), every optional field given."""
    contract = ["Month-to-month", "One year", "Two year"][i % 3]
    monthly = 20 + (i * 37 % 8000) / 100
    cells = {"activation_date": "2019-03-15", "tenure_months": str(1 + i % 72), "plan": f"Plan {i % 5}",
             "contract": contract, "contract_end_date": "" if contract == "Month-to-month" else "2027-06-30",
             "monthly_charges": f"{monthly:.2f}", "total_charges": f"{monthly * (1 + i % 72):.2f}",
             "payment_method": PAYMENT[i % 5], "internet_service": ["DSL", "Fiber optic", "No"][(i // 3) % 3]}
    return {**cells, **{b: "Yes" if (i >> k) & 1 else "No" for k, b in enumerate(BOOLEAN_FIELDS)}}


def revised_cells() -> dict[str, str]:
    """A later version, far from any earlier one: a row that saw it would show it."""
    return {"activation_date": "2019-03-15", "tenure_months": "1100", "plan": "Later", "contract": "Two year",
            "contract_end_date": "2030-01-01", "monthly_charges": "9999.50", "total_charges": "999999",
            "payment_method": "Mailed check", "internet_service": "Fiber optic",
            **dict.fromkeys(BOOLEAN_FIELDS, "Yes")}


def sms(customer_id: str, times) -> list[dict]:
    return [{**e, "record_type": "sms", "duration_s": np.nan, "counterparty": "off_net"}
            for e in calls(customer_id, times)]


def data(customer_id: str, times) -> list[dict]:
    return [{**e, "record_type": "data", "duration_s": np.nan, "data_bytes": 1e6, "counterparty": None}
            for e in calls(customer_id, times)]


def events(customer_id: str, kind: str, times: list[float], label: float) -> list[dict]:
    """Silver rows of one activity kind: at ``times`` (one-minute calls, 1 MB sessions), or after the label."""
    if kind == "late":
        return calls(customer_id, [label + DAY, label + 2 * DAY]) + data(customer_id, [label + 3 * DAY])
    return {"mixed": lambda: calls(customer_id, times, "customer_care") + data(customer_id, times),
            "voice": lambda: calls(customer_id, times), "sms": lambda: sms(customer_id, times),
            "data": lambda: data(customer_id, times), "none": list}[kind]()


def build(settings, base: list[tuple], others: int, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the base's profile history (with ``others`` profiles of customers without labels) and Silver
    (none if no event); return the labels and what each customer should get (its profile as of the
    observation, cells missing as "", and its events up to the observation)."""
    from churn import profiles

    n = len(base)
    ids = [f"C{i:04d}" for i in range(n)]
    label_time = T0 + 0.5 * DAY * np.arange(n)
    labels = pd.DataFrame({"customer_id": ids, "label_time": label_time, "churned": [c[2] for c in base]})
    records, rows, truth = [], [], []
    for i, (cid, (pk, ak, _, gap_h, after, mask), label) in enumerate(zip(ids, base, label_time)):
        earliest = label - LOOKAHEAD  # no observation of this label is earlier
        seen = None  # the profile version in force when observed
        if pk in ("full", "partial"):
            seen = profile_cells(i)
            if pk == "partial":
                seen.update({f: "" for k, f in enumerate(FEATURE_COLUMNS) if (mask >> k) & 1})
            seen["updated_at"] = format_time(earliest - DAY - (i % 300) * DAY)
        elif pk == "new":  # activated an hour before the earliest observation; tenure from the activation date
            updated = earliest - 3600.0
            seen = {**profile_cells(i), "tenure_months": "", "total_charges": "0",
                    "activation_date": datetime.fromtimestamp(updated, tz=timezone.utc).date().isoformat(),
                    "updated_at": format_time(updated)}
        if seen is not None:
            records.append({"customer_id": cid, **seen})
        if pk == "late" or (seen is not None and after):
            records.append({"customer_id": cid, **revised_cells(), "updated_at": format_time(label + DAY)})
        last = earliest - gap_h * 3600.0
        times = [last - 2 * DAY, last - DAY, last]
        rows += events(cid, ak, times, label)
        if after and ak not in ("none", "late"):
            rows += calls(cid, [label + 0.5 * DAY] * 5, "customer_care")  # never seen by its row
        truth.append({"customer_id": cid, "kind": pk, "profile": seen,
                      "activity": ak if ak not in ("none", "late") else None, "times": times})
    records += [{"customer_id": f"OTHER-{j:03d}", **profile_cells(j), "updated_at": format_time(T0 - 30 * DAY)}
                for j in range(others)]  # profiles of customers without labels

    fields = ["customer_id", "updated_at", *FEATURE_COLUMNS]
    extract = tmp / "extract.csv"
    pd.DataFrame(records, columns=fields).fillna("").to_csv(extract, index=False)
    mapping = tmp / "mapping.toml"
    mapping.write_text("[columns]\n" + "".join(f'{f} = "{f}"\n' for f in fields)
                       + '[booleans]\ntrue = ["Yes"]\nfalse = ["No"]\n')
    report = profiles.load(settings, extract, mapping, materialize=False)
    assert (report.loaded, report.invalid) == (len(records), []), report.invalid[:3]
    if rows:
        write_silver(settings, [columns(rows[i::3]) for i in range(3) if rows[i::3]])
    return labels, pd.DataFrame(truth)


def register_history(settings):
    """``register`` (the project's views, SQLite online store), with the profile view reading the Delta
    profile history ``churn.profiles.load`` wrote, as ``churn features apply`` registers it."""
    from churn.profiles import history_path
    from feature_repo.profile import customer_profile, profile_source

    fs = register(settings)
    source, view = copy.deepcopy(profile_source), copy.deepcopy(customer_profile)
    for s in (source, view.batch_source):
        s.file_options.uri = str(history_path(settings))
    fs.apply([source, view])
    return fs


# -- what each row should hold ------------------------------------------------------------------------------
def expected_profile(cells: dict[str, str]) -> np.ndarray:
    """The profile part of a model input, from the extract's cells (tenure from the activation date when
    not given, as of the version's date)."""
    def given(f):
        return cells.get(f, "") != ""

    out = []
    for f in PROFILE_NUMERIC:
        if f == "tenure_months" and not given(f) and given("activation_date"):
            updated = datetime.fromtimestamp(pd.Timestamp(cells["updated_at"]).timestamp(), tz=timezone.utc)
            out.append(float(months_between(date.fromisoformat(cells["activation_date"]), updated.date())))
        elif not given(f):
            out.append(np.nan)
        elif f in BOOLEAN_FIELDS:
            out.append(1.0 if cells[f] == "Yes" else 0.0)
        else:
            out.append(float(cells[f]))
    out += [float(cells[col] == value) if given(col) else np.nan for col, value in CATEGORY_FEATURES.values()]
    return np.array(out, dtype=np.float32)


#: Per activity kind, the measures each event time adds one unit to (calls last a minute, data is 1 MB).
UNITS = {"mixed": {"events": 2, "calls": 1, "call_minutes": 1, "care_calls": 1, "data_mb": 1, "sms": 0},
         "voice": {"events": 1, "calls": 1, "call_minutes": 1, "care_calls": 0, "data_mb": 0, "sms": 0},
         "sms": {"events": 1, "calls": 0, "call_minutes": 0, "care_calls": 0, "data_mb": 0, "sms": 1},
         "data": {"events": 1, "calls": 0, "call_minutes": 0, "care_calls": 0, "data_mb": 1, "sms": 0}}


def check_activity(x: np.ndarray, kind: str, times: list[float], at: float) -> None:
    col = {name: x[_N_PROFILE + j] for j, name in enumerate(ACTIVITY_FEATURES)}
    for measure, units in UNITS[kind].items():
        for h, tau in HORIZONS.items():
            want = units * sum(np.exp(-(at - t) / tau) for t in times)
            assert np.isclose(col[f"{measure}_{h}"], want, rtol=1e-5, atol=1e-30), (kind, measure, h)
    assert col["active_days_30d"] == 3.0
    assert np.isclose(col["days_since_last_event"], (at - times[-1]) / DAY, rtol=1e-5)
    nan = {name for name, v in col.items() if np.isnan(v)}
    assert nan == ({"call_minutes_trend_7d_30d"} if not UNITS[kind]["call_minutes"] else set()) | (
        {"data_mb_trend_7d_30d"} if not UNITS[kind]["data_mb"] else set()), (kind, nan)


# -- the property ----------------------------------------------------------------------------------------------
@hsettings(max_examples=8, deadline=None, derandomize=True, print_blob=True,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large, HealthCheck.large_base_example])
@example(base=cycle(270), others=20)  # every combination, a third churned: trains
@example(base=cycle(240, churned=lambda i: i >= 230), others=20)  # churned only at the end: one class while training
@example(base=cycle(150), others=20)  # fewer usable labels than MIN_LABELS
@example(base=[("none", *c[1:]) for c in cycle(300)], others=0)  # an empty profile history (nothing loaded yet)
@example(base=[(c[0], "none", *c[2:]) for c in cycle(400)], others=20)  # no Silver table yet
@given(base=bases, others=st.sampled_from([20, 0]))
def test_any_customer_base_gives_a_consistent_training_set_and_never_crashes_the_nightly(base, others):
    import batch.train
    from batch.train import MIN_LABELS, NotEnoughLabels, point_in_time_training_set, run_train
    from churn.model.registry import ModelRegistry

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        settings = fresh_settings(Path(tmp))
        labels, truth = build(settings, base, others, Path(tmp))
        fs = register_history(settings)
        ts = point_in_time_training_set(settings, labels, fs=fs, seed=settings.simulator.seed)

        has_profile = truth["profile"].notna().to_numpy()
        has_activity = truth["activity"].notna().to_numpy()
        keep = has_profile | has_activity
        kept = labels[keep]
        assert (ts.labels, ts.unknown) == (len(base), int((~keep).sum()))
        assert len(ts.y) == len(ts.X) == len(ts.at_s) == ts.labels - ts.unknown
        assert ts.customer_id.tolist() == kept["customer_id"].tolist()
        assert ts.y.tolist() == kept["churned"].astype(int).tolist() and int(ts.y.sum()) == int(kept["churned"].sum())
        assert ts.without_profile == int((keep & ~has_profile).sum())
        assert ts.without_activity == int((keep & ~has_activity).sum())
        label_at = kept["label_time"].to_numpy()
        assert np.all(ts.at_s <= label_at) and np.all(ts.at_s > label_at - LOOKAHEAD)
        assert ts.X.shape[1] == len(MODEL_FEATURES)

        for x, at, (_, t) in zip(ts.X, ts.at_s, truth[keep].iterrows()):
            if t["profile"] is None:
                assert np.isnan(x[:_N_PROFILE]).all(), t["customer_id"]
            else:  # the version in force when observed, never the one after the label
                np.testing.assert_array_equal(x[:_N_PROFILE], expected_profile(t["profile"]), err_msg=t["customer_id"])
                if t["kind"] == "new":
                    assert x[MODEL_FEATURES.index("tenure_months")] == 0.0, t["customer_id"]
            if t["activity"] is None:
                assert np.isnan(x[_N_PROFILE:]).all(), t["customer_id"]
            else:  # Silver's events up to the observation, never the calls after the label
                check_activity(x, t["activity"], t["times"], at)

        # the nightly step on the same labels: trains, or skips with the reason, never crashes. The trees,
        # the calibration and the metrics see the earliest 60 %, the next 20 % and the last 20 % of the rows
        # by observation time: each needs both classes
        mp.setattr(batch.train, "labels_frame", lambda s: labels)
        n = len(ts.y)
        windows = dict(zip(["train", "calibrate", "validate"],
                           np.split(ts.y[np.argsort(ts.at_s, kind="stable")], [int(n * 0.6), int(n * 0.8)])))
        one_class = [k for k, y in windows.items() if len(np.unique(y)) < 2]
        skip = None
        if n < MIN_LABELS or len(np.unique(ts.y)) < 2:
            skip = "too few (or one class)"
        elif one_class:
            skip = f"one class only in the {' and '.join(one_class)} window"
        print(f"\n{len(base)} customers: {ts.summary()}; {int(ts.y.sum())} churned: "
              f"{'trains' if skip is None else 'skips: ' + skip}", end="")
        if skip is not None:
            with pytest.raises(NotEnoughLabels, match=re.escape(skip)):
                run_train(settings, trials=0)
            assert not ModelRegistry(settings.scoring.registry_dir).versions()
            return
        release = run_train(settings, trials=0)
        assert ts.summary() in release.source, release.source
        card = ModelRegistry(settings.scoring.registry_dir).card(release.version)
        assert {k: w["rows"] for k, w in card["windows"].items()} == {k: len(y) for k, y in windows.items()}
        assert card["validation"]["positives"] == int(windows["validate"].sum())
        assert 0.0 <= card["validation"]["roc_auc"] <= 1.0
        assert release.promoted == (release.reason == "no champion yet"), release.reason
