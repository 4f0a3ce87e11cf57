"""Customer profiles as a first-class input: the ``customer_profile`` contract, ``churn profiles load`` with a
column mapping (invalid rows reported and quarantined with their reason), the profile history (every version
kept) read point in time by Feast, the newest version online, and nothing generated in the source tree.

The CLI tests run ``churn`` in a private run directory; the one that materializes starts its own
``redis-server`` on a free port. The point-in-time test uses real Feast over the test's lake with a SQLite
online store."""

from __future__ import annotations

import copy
import re
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import free_ports, run_cli, settings_from, sqlite_feature_store

from churn.config import PROJECT_ROOT, Settings
from churn.contracts import CUSTOMER_PROFILE, parse_time
from churn.model.inputs import MODEL_FEATURES, PROFILE_CATEGORIES, PROFILE_COLUMNS, vector
from churn.profiles import (FEATURE_COLUMNS, TELCO_MAPPING, Mapping, MappingError, history, history_path,
                            profile_frame, quarantined, telco_table)

# An operator's CRM extract: its own column names and codes.
CRM_MAPPING = """
missing = ["", "NULL"]

[columns]
customer_id = "ACCOUNT_NO"
updated_at = "LAST_CHANGE"
activation_date = "START_DATE"
plan = "TARIFF"
contract = "TERM"
contract_end_date = "TERM_END"
monthly_charges = "MRC"
payment_method = "PAY"
paperless_billing = "E_BILL"
streaming_tv = "TV"

[values.contract]
M2M = "Month-to-month"
12M = "One year"
24M = "Two year"

[values.payment_method]
DD = "Bank transfer (automatic)"
CC = "Credit card (automatic)"

[booleans]
true = ["Y"]
false = ["N"]
"""
CRM_COLUMNS = ["ACCOUNT_NO", "LAST_CHANGE", "START_DATE", "TARIFF", "TERM", "TERM_END", "MRC", "PAY", "E_BILL", "TV"]
JAN, MAR = "2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z"
VALID = [
    ["A-1", JAN, "2024-06-15", "Basic", "M2M", "NULL", "20.5", "DD", "Y", "N"],
    ["A-2", JAN, "2025-12-01", "Family", "24M", "2027-12-01", "55", "CC", "N", "Y"],
    ["A-3", JAN, "", "", "", "", "", "", "", ""],  # everything but the key and the time unknown
]
INVALID = [  # each with the reason the contract gives
    (["A-4", JAN, "2024-01-01", "Basic", "36M", "", "20", "DD", "Y", "N"], "unknown_value:contract"),
    (["A-5", JAN, "2024-01-01", "Basic", "M2M", "", "cheap", "DD", "Y", "N"], "wrong_type:monthly_charges"),
    (["A-6", JAN, "2024-01-01", "Basic", "M2M", "", "-3", "DD", "Y", "N"], "negative_value:monthly_charges"),
    (["", JAN, "2024-01-01", "Basic", "M2M", "", "20", "DD", "Y", "N"], "missing_field:customer_id"),
    (["A-7", "2026-01-01 00:00", "2024-01-01", "Basic", "M2M", "", "20", "DD", "Y", "N"], "bad_format:updated_at"),
    (["A-8", JAN, "2024-02-30", "Basic", "M2M", "", "20", "DD", "Y", "N"], "bad_format:activation_date"),
    (["A-9", JAN, "2024-01-01", "Basic", "M2M", "", "20", "DD", "maybe", "N"], "wrong_type:paperless_billing"),
    (["A-10", "2999-01-01T00:00:00Z", "2024-01-01", "Basic", "M2M", "", "20", "DD", "Y", "N"],
     "future_event_time:updated_at"),
]


def write_extract(path: Path, rows: list[list[str]]) -> Path:
    pd.DataFrame(rows, columns=CRM_COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {"CHURN_RUN_DIR": str(tmp_path / "run"), "CHURN_FEAST__PROJECT": f"p{uuid.uuid4().hex[:6]}",
            "CHURN_REDIS__PORT": "1"}  # nothing may reach an online store unless a test starts one


@pytest.fixture
def mapping(tmp_path) -> Path:
    path = tmp_path / "crm.toml"
    path.write_text(CRM_MAPPING)
    return path


# -- the contract and the mapping -------------------------------------------------------------------------
def test_contract_covers_what_the_model_reads_and_only_key_and_time_are_required():
    assert CUSTOMER_PROFILE.required == ["customer_id", "updated_at"]
    assert (CUSTOMER_PROFILE.topic, CUSTOMER_PROFILE.key_field, CUSTOMER_PROFILE.time_field) == \
        ("customer-profiles", "customer_id", "updated_at")
    assert set(PROFILE_COLUMNS) <= set(CUSTOMER_PROFILE.fields)
    assert CUSTOMER_PROFILE.enum("contract") == PROFILE_CATEGORIES["contract"]
    for name in FEATURE_COLUMNS:
        assert "null" in CUSTOMER_PROFILE.fields[name]["type"], name
    assert CUSTOMER_PROFILE.validate({"customer_id": "x", "updated_at": JAN}) is None
    assert CUSTOMER_PROFILE.validate({"customer_id": "x", "updated_at": JAN, "contract_end_date": "2026-02-29"}
                                     ).reason == "bad_format:contract_end_date"
    from feature_repo.profile import PROFILE_FIELDS

    assert [f.name for f in PROFILE_FIELDS if f.name not in PROFILE_COLUMNS] == ["plan", "activation_date",
                                                                                "contract_end_date"]
    assert {f.name for f in PROFILE_FIELDS} == set(FEATURE_COLUMNS)


def test_telco_sample_is_one_mapping_and_gives_the_same_profiles():
    frame = profile_frame()
    assert len(frame) == 7043 and frame["customer_id"].is_unique
    assert not frame[PROFILE_COLUMNS].isna().any().any()
    assert (frame["updated_at"] == pd.Timestamp("2020-01-01", tz="UTC")).all()
    first = frame.set_index("customer_id").loc["7590-VHVEG"]
    assert (first["tenure_months"], first["monthly_charges"], first["contract"], first["payment_method"]) == \
        (1, 29.85, "Month-to-month", "Electronic check")
    assert (first["phone_service"], first["multiple_lines"], first["online_backup"], first["has_partner"]) == (0, 0, 1, 1)
    raw = pd.read_csv(PROJECT_ROOT / "churn" / "data" / "telco_customer_churn.csv", dtype=str)
    blank = raw["TotalCharges"].str.strip() == ""
    assert blank.sum() == 11 and (frame["total_charges"][blank.to_numpy()] == 0.0).all()  # the mapping's default
    assert frame["senior_citizen"].sum() == (raw["SeniorCitizen"] == "1").sum() == 1142
    assert frame["multiple_lines"].sum() == (raw["MultipleLines"] == "Yes").sum()


def test_documented_mapping_format_parses_and_errors_name_the_problem(tmp_path):
    readme = (TELCO_MAPPING.parent / "README.md").read_text()
    import tomllib

    example = Mapping.from_dict(tomllib.loads(re.search(r"```toml\n(.*?)```", readme, re.S).group(1)))
    assert example.record({"ACCOUNT_NO": "9", "TERM": "12M", "E_BILL": "Y", "MRC": "NULL", "LAST_CHANGE": "",
                           "START_DATE": "2025-01-31", "TARIFF": " Max ", "TERM_END": "n/a"}) == {
        "customer_id": "9", "contract": "One year", "paperless_billing": True, "activation_date": "2025-01-31",
        "plan": "Max", "updated_at": "2026-01-01T00:00:00Z"}
    with pytest.raises(MappingError, match="names no field of customer_profile: churn"):
        Mapping.from_dict({"columns": {"customer_id": "id", "updated_at": "t", "churn": "Churn"}})
    with pytest.raises(MappingError, match="updated_at is required"):
        Mapping.from_dict({"columns": {"customer_id": "id"}})


def test_simulator_customers_csv_is_still_read_as_profiles_source(tmp_path):
    s = settings_from({"CHURN_SIMULATOR__CUSTOMERS_CSV": "/data/telco.csv"})
    assert s.profiles.source == Path("/data/telco.csv") and not hasattr(s.simulator, "customers_csv")
    assert telco_table(s) == Path("/data/telco.csv")  # the Telco mapping: the simulator reads it too
    crm = Settings(profiles={"source": "/data/crm.csv", "mapping": str(tmp_path / "crm.toml")})
    assert telco_table(crm) is None  # another format: the simulator keeps the bundled sample
    assert telco_table(Settings()) is None


# -- churn profiles load ---------------------------------------------------------------------------------
def test_load_reports_and_quarantines_invalid_rows_and_keeps_every_version(tmp_path, env, mapping):
    extract = write_extract(tmp_path / "crm.csv", VALID + [row for row, _ in INVALID])
    out = run_cli(["profiles", "load", str(extract), "--mapping", str(mapping), "--no-materialize"], env, timeout=120)
    assert out.returncode == 1, out.stderr  # some rows were invalid; the valid ones are loaded all the same
    for i, (row, reason) in enumerate(INVALID, len(VALID) + 1):
        who = re.escape(row[0] or "?")
        assert re.search(rf"^row {i} \({who}\): {reason}: ", out.stdout, re.M), (reason, out.stdout)
    assert "11 rows, 3 new versions loaded, 0 already loaded, 8 invalid" in out.stdout
    assert "History: 3 versions of 3 customers." in out.stdout

    s = settings_from(env)
    h = history(s).sort_values("customer_id").set_index("customer_id")
    assert list(h.index) == ["A-1", "A-2", "A-3"]
    a1 = h.loc["A-1"]
    assert (a1["plan"], a1["contract"], a1["monthly_charges"], a1["payment_method"]) == \
        ("Basic", "Month-to-month", 20.5, "Bank transfer (automatic)")
    assert (a1["paperless_billing"], a1["streaming_tv"], a1["tenure_months"]) == (1, 0, 18)  # 2024-06-15 .. 2026-01-01
    assert a1["contract_end_date"] is None and a1["updated_at"] == pd.Timestamp(JAN)
    assert (h.loc["A-2", "tenure_months"], h.loc["A-2", "contract"]) == (1, "Two year")
    assert h.loc["A-3", FEATURE_COLUMNS].isna().all()  # unknown stays unknown
    q = quarantined(s).sort_values("row")
    assert q["row"].tolist() == list(range(4, 12))
    assert q["reason"].tolist() == [reason for _, reason in INVALID]
    assert q["customer_id"].tolist()[:3] == ["A-4", "A-5", "A-6"] and q["customer_id"].isna().tolist()[3]
    assert '"contract":"36M"' in q["record"].iloc[0] and (q["source"] == str(extract)).all()

    # the same extract again changes nothing; a plan change is a new version, the old one stays
    again = run_cli(["profiles", "load", str(extract), "--mapping", str(mapping), "--no-materialize"], env, timeout=120)
    assert "11 rows, 0 new versions loaded, 3 already loaded, 8 invalid" in again.stdout, again.stdout
    change = write_extract(tmp_path / "crm-march.csv", [["A-1", MAR, "2024-06-15", "Premium", "12M", "2027-03-01",
                                                         "45", "CC", "Y", "Y"]])
    out = run_cli(["profiles", "load", str(change), "--mapping", str(mapping), "--no-materialize"], env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rows, 1 new versions loaded, 0 already loaded, 0 invalid. History: 4 versions of 3 customers." \
        in out.stdout
    a1 = history(s).query("customer_id == 'A-1'").sort_values("updated_at")
    assert a1["plan"].tolist() == ["Basic", "Premium"] and a1["tenure_months"].tolist() == [18, 20]
    assert len(quarantined(s)) == 16  # each load's invalid rows, with their reasons


def test_load_reads_parquet_with_typed_columns(tmp_path, env):
    frame = pd.DataFrame({"id": [101, 102], "changed": pd.to_datetime(["2026-01-05 10:00", "2026-01-06 00:00"]),
                          "since": pd.to_datetime(["2025-01-05", "2020-02-01"]).date,
                          "mrc": [10.0, np.nan], "term": ["One year", None], "paperless": [True, None]})
    frame.to_parquet(tmp_path / "crm.parquet")
    (tmp_path / "m.toml").write_text('[columns]\ncustomer_id = "id"\nupdated_at = "changed"\nactivation_date = "since"\n'
                                     'monthly_charges = "mrc"\ncontract = "term"\npaperless_billing = "paperless"\n')
    out = run_cli(["profiles", "load", str(tmp_path / "crm.parquet"), "--mapping", str(tmp_path / "m.toml"),
                   "--no-materialize"], env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    h = history(settings_from(env)).sort_values("customer_id")
    assert h["customer_id"].tolist() == ["101", "102"]
    assert h["updated_at"].tolist() == [pd.Timestamp("2026-01-05 10:00", tz="UTC"), pd.Timestamp("2026-01-06", tz="UTC")]
    assert h["activation_date"].tolist() == ["2025-01-05", "2020-02-01"] and h["tenure_months"].tolist() == [12, 71]
    assert h["monthly_charges"].iloc[0] == 10.0 and np.isnan(h["monthly_charges"].iloc[1])
    assert h["contract"].tolist() == ["One year", None] and h["paperless_billing"].iloc[0] == 1


def test_load_refuses_an_extract_without_the_mapped_columns(tmp_path, env, mapping):
    pd.DataFrame({"ACCOUNT_NO": ["x"]}).to_csv(tmp_path / "thin.csv", index=False)
    out = run_cli(["profiles", "load", str(tmp_path / "thin.csv"), "--mapping", str(mapping), "--no-materialize"],
                  env, timeout=120)
    assert out.returncode == 1 and "lacks the mapped column(s)" in out.stderr and "LAST_CHANGE" in out.stderr
    assert not Path(history_path(settings_from(env))).exists()


# -- point in time, offline and online --------------------------------------------------------------------
def feast_over(settings: Settings):
    """The project's profile view over this test's history, in a private registry; SQLite online store."""
    from feature_repo.entities import customer
    from feature_repo.profile import customer_profile, profile_source

    source = copy.deepcopy(profile_source)
    source.file_options.uri = str(history_path(settings))
    view = copy.deepcopy(customer_profile)
    view.batch_source = source
    view.source = source
    return sqlite_feature_store(settings, [customer, source, view])


def test_plan_change_after_an_observation_does_not_leak_into_it(tmp_path, env, mapping):
    """Two extracts, January and March: Feast's point-in-time join gives each observation the version in
    force then (nothing before the first), and the online store the newest after each load."""
    from churn import profiles

    s = settings_from(env)
    profiles.ensure_history(s)
    fs = feast_over(s)
    online = lambda: fs.get_online_features(  # noqa: E731
        features=["customer_profile:plan", "customer_profile:contract", "customer_profile:monthly_charges"],
        entity_rows=[{"customer_id": c} for c in ("A-1", "A-2", "NOBODY")]).to_dict()

    report = profiles.load(s, write_extract(tmp_path / "jan.csv", VALID), mapping, fs=fs)
    assert (report.loaded, report.invalid, report.materialized) == (3, [], True)
    assert online()["plan"] == ["Basic", "Family", None]
    report = profiles.load(s, write_extract(tmp_path / "mar.csv", [
        ["A-1", MAR, "2024-06-15", "Premium", "12M", "2027-03-01", "45", "CC", "Y", "Y"]]), mapping, fs=fs)
    assert report.loaded == 1
    now = online()
    assert (now["plan"], now["contract"], now["monthly_charges"]) == \
        (["Premium", "Family", None], ["One year", "Two year", None], [45.0, 55.0, None])

    at = ["2025-12-31T00:00:00Z", "2026-02-15T00:00:00Z", "2026-02-28T23:59:59Z", MAR, "2026-06-01T00:00:00Z",
          "2026-02-15T00:00:00Z"]
    who = ["A-1"] * 5 + ["A-2"]
    entity = pd.DataFrame({"customer_id": who, "event_timestamp": pd.to_datetime(at, utc=True), "row": range(6)})
    got = fs.get_historical_features(entity_df=entity, features=[f"customer_profile:{c}" for c in
                                                                 ["plan", *PROFILE_COLUMNS]]).to_df()
    got = got.set_index("row").reindex(range(6))  # Feast may leave out a row it has nothing for
    assert got["plan"].tolist()[1:] == ["Basic", "Basic", "Premium", "Premium", "Family"]
    assert pd.isna(got["plan"].iloc[0])  # observed before the customer's first version: no profile
    assert got["contract"].tolist()[1:] == ["Month-to-month", "Month-to-month", "One year", "One year", "Two year"]
    assert got["monthly_charges"].tolist()[1:] == [20.5, 20.5, 45.0, 45.0, 55.0]
    # and the model's input observed in February is the January profile's
    row = got.iloc[1]
    x = vector({c: (None if pd.isna(row[c]) else row[c]) for c in PROFILE_COLUMNS}, None,
               at_s=parse_time("2026-02-15T00:00:00Z"))
    assert x[MODEL_FEATURES.index("contract_month_to_month")] == 1.0
    assert x[MODEL_FEATURES.index("contract_one_year")] == 0.0 and x[MODEL_FEATURES.index("monthly_charges")] == 20.5


# -- churn features apply: the default Telco load, online, nothing written into the source tree ------------
@pytest.fixture
def redis_port(tmp_path):
    (port,) = free_ports(1)
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=20)


def test_features_apply_loads_the_telco_mapping_and_writes_only_under_the_run_dir(tmp_path, env, mapping,
                                                                                  redis_port):
    env = {**env, "CHURN_REDIS__PORT": str(redis_port)}
    in_tree = PROJECT_ROOT / "feature_repo" / "feature_store.yaml"
    before = in_tree.stat().st_mtime_ns if in_tree.exists() else None
    out = run_cli(["features", "apply"], env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "applied customer_profile" in out.stdout
    s = settings_from(env)
    generated = s.run_dir / "feast" / "feature_store.yaml"
    assert f"connection_string: \"127.0.0.1:{redis_port}\"" in generated.read_text()
    assert (in_tree.stat().st_mtime_ns if in_tree.exists() else None) == before
    assert len(history(s)) == 7043

    # an operator's extract on top, through the CLI, materialized into Redis
    extract = write_extract(tmp_path / "crm.csv", VALID)
    out = run_cli(["profiles", "load", str(extract), "--mapping", str(mapping)], env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "History: 7046 versions of 7046 customers; newest materialized online." in out.stdout
    from churn.feature_store import store

    data = store(s).get_online_features(
        features=["customer_profile:plan", "customer_profile:tenure_months", "customer_profile:contract"],
        entity_rows=[{"customer_id": c} for c in ("A-1", "7590-VHVEG", "A-3")]).to_dict()
    assert data["plan"] == ["Basic", None, None] and data["tenure_months"] == [18, 1, None]
    assert data["contract"] == ["Month-to-month", "Month-to-month", None]
    assert run_cli(["features", "apply"], env, timeout=300).returncode == 0  # again: the sample is loaded already
    assert len(history(s)) == 7046
