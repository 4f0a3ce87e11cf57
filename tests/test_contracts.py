"""The contracts: the validator names each class of bad event; derived forms agree with the schemas."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churn.contracts import CDR, CHURN_LABEL, CHURN_RISK, CONTRACTS, format_time, parse_time
from churn.schema_docs import README_PATH, kcat_one_liner, render_readme

NOW = parse_time("2026-11-23T12:00:00Z")
VOICE = {
    "event_id": "e-1", "customer_id": "7590-VHVEG", "event_time": "2026-11-23T11:59:00.000Z",
    "record_type": "voice", "direction": "outgoing", "duration_s": 61.0, "counterparty": "off_net",
    "dropped": False, "cell_id": "C0001", "roaming": False, "charge": 0.12,
}
DATA = {k: v for k, v in VOICE.items() if k not in ("counterparty", "dropped")} | {
    "record_type": "data", "data_bytes": 1_500_000}
SMS = {k: v for k, v in VOICE.items() if k not in ("duration_s", "dropped")} | {"record_type": "sms"}


def without(event: dict, field: str) -> dict:
    return {k: v for k, v in event.items() if k != field}


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=list(CONTRACTS))
def test_schema_examples_are_valid(contract):
    for example in contract.schema["examples"]:
        assert contract.validate(example, now=parse_time(example[contract.time_field]) + 1) is None


@pytest.mark.parametrize("event", [VOICE, DATA, SMS], ids=["voice", "data", "sms"])
def test_valid_cdrs_pass(event):
    assert CDR.validate(event, now=NOW) is None
    # optional fields may be null or absent; extra fields are allowed
    assert CDR.validate({**event, "extra": 1}, now=NOW) is None


BAD = [
    ("missing event_id", without(VOICE, "event_id"), "missing_field:event_id"),
    ("missing customer", without(SMS, "customer_id"), "missing_field:customer_id"),
    ("missing time", without(DATA, "event_time"), "missing_field:event_time"),
    ("voice without duration", without(VOICE, "duration_s"), "missing_field:duration_s"),
    ("voice with null duration", {**VOICE, "duration_s": None}, "missing_field:duration_s"),
    ("voice without dropped flag", without(VOICE, "dropped"), "missing_field:dropped"),
    ("sms without counterparty", without(SMS, "counterparty"), "missing_field:counterparty"),
    ("data without bytes", without(DATA, "data_bytes"), "missing_field:data_bytes"),
    ("duration as text", {**VOICE, "duration_s": "61"}, "wrong_type:duration_s"),
    ("roaming as text", {**VOICE, "roaming": "no"}, "wrong_type:roaming"),
    ("bool as a number", {**VOICE, "charge": True}, "wrong_type:charge"),
    ("bytes as a fraction", {**DATA, "data_bytes": 1.5}, "wrong_type:data_bytes"),
    ("customer as a number", {**VOICE, "customer_id": 7590}, "wrong_type:customer_id"),
    ("negative duration", {**VOICE, "duration_s": -1.0}, "negative_value:duration_s"),
    ("negative charge", {**VOICE, "charge": -0.01}, "negative_value:charge"),
    ("negative bytes", {**DATA, "data_bytes": -5}, "negative_value:data_bytes"),
    ("day-long call and more", {**VOICE, "duration_s": 90000}, "out_of_range:duration_s"),
    ("unknown record type", {**VOICE, "record_type": "fax"}, "unknown_value:record_type"),
    ("unknown direction", {**VOICE, "direction": "sideways"}, "unknown_value:direction"),
    ("unknown counterparty", {**VOICE, "counterparty": "alien"}, "unknown_value:counterparty"),
    ("empty event id", {**VOICE, "event_id": ""}, "out_of_range:event_id"),
    ("event id with spaces", {**VOICE, "event_id": "a b"}, "bad_format:event_id"),
    ("time without zone", {**VOICE, "event_time": "2026-11-23T11:59:00"}, "bad_format:event_time"),
    ("time in words", {**VOICE, "event_time": "yesterday"}, "bad_format:event_time"),
    ("far future", {**VOICE, "event_time": format_time(NOW + 3600)}, "future_event_time:event_time"),
]


@pytest.mark.parametrize("name,event,reason", BAD, ids=[b[0] for b in BAD])
def test_each_class_of_bad_event_has_its_reason(name, event, reason):
    violation = CDR.validate(event, now=NOW)
    assert violation is not None and violation.reason == reason
    assert violation.detail  # words for a person, not just a code


def test_values_of_unusual_python_types_are_judged_as_before_by_the_steps():
    """The compiled check's inline tests use exact types; a NumPy float or a str subclass fails them and is
    then judged by the property's own step, as JSON Schema would judge the value."""
    import numpy as np

    class Text(str):
        pass

    assert CDR.validate({**VOICE, "duration_s": np.float64(61.0), "customer_id": Text("c-1")}, now=NOW) is None
    assert CDR.validate({**VOICE, "duration_s": np.float64(-1.0)}, now=NOW).reason == "negative_value:duration_s"
    assert CDR.validate({**VOICE, "event_id": Text("a b")}, now=NOW).reason == "bad_format:event_id"
    assert CDR.validate({**DATA, "data_bytes": 5.0}, now=NOW) is None  # an integral float is an integer
    assert CDR.validate({**VOICE, "dropped": 0}, now=NOW).reason == "wrong_type:dropped"  # not a boolean


def test_future_skew_is_a_bound_not_a_ban():
    assert CDR.validate({**VOICE, "event_time": format_time(NOW + 299)}, now=NOW) is None
    assert CDR.validate({**VOICE, "event_time": format_time(NOW + 301)}, now=NOW).reason == "future_event_time:event_time"


@pytest.mark.parametrize("raw,reason", [
    (b"", "malformed_json"), (b"{", "malformed_json"), (b"\xff\xfe", "malformed_json"),
    (b"[1, 2]", "not_an_object"), (b'"text"', "not_an_object"), (b"null", "not_an_object"),
])
def test_parse_rejects_what_is_not_an_event(raw, reason):
    event, violation = CDR.parse(raw, now=NOW)
    assert event is None and violation.reason == reason


def test_nested_items_are_checked():
    alert = copy.deepcopy(CHURN_RISK.schema["examples"][0])
    assert CHURN_RISK.validate(alert, now=NOW) is None
    alert["reasons"][0]["contribution"] = "big"
    assert CHURN_RISK.validate(alert, now=NOW).reason == "wrong_type:reasons[0].contribution"
    del alert["reasons"][0]["text"]
    assert CHURN_RISK.validate(alert, now=NOW).reason == "missing_field:reasons[0].text"
    assert CHURN_RISK.validate({**alert, "risk": 1.5}, now=NOW).reason == "out_of_range:risk"
    assert CHURN_LABEL.validate({**CHURN_LABEL.schema["examples"][0], "churned": "yes"}, now=NOW).reason == "wrong_type:churned"


# -- property-based: generated events against our validator and the reference one -------------
def _value_strategy(spec: dict):
    types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    kind = [t for t in types if t != "null"][0]
    if "enum" in spec:
        return st.sampled_from([v for v in spec["enum"] if v is not None])
    if spec.get("format") == "date-time":
        return st.integers(int(NOW - 90 * 86400), int(NOW)).map(format_time)
    if kind == "string":
        return st.from_regex(spec.get("pattern", r"^[A-Za-z0-9-]+$"), fullmatch=True).filter(
            lambda s: spec.get("minLength", 0) <= len(s) <= spec.get("maxLength", 10**9))
    if kind == "number":
        return st.floats(spec.get("minimum", -1e6), spec.get("maximum", 1e6), allow_nan=False)
    if kind == "integer":
        return st.integers(spec.get("minimum", -10**6), spec.get("maximum", 10**12))
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(kind)


@st.composite
def valid_cdrs(draw):
    event = {name: draw(_value_strategy(spec)) for name, spec in CDR.fields.items()}
    # optional fields a record type does not need may be absent
    for name in list(event):
        if name not in CDR.required and draw(st.booleans()):
            needed = {"voice": ("duration_s", "counterparty", "dropped"), "sms": ("counterparty",),
                      "data": ("data_bytes",)}[event["record_type"]]
            if name not in needed:
                del event[name]
    return event


REFERENCE = jsonschema.Draft202012Validator(CDR.schema)
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=5), st.lists(st.integers(), max_size=2))


@given(valid_cdrs())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_generated_valid_cdrs_pass_both_validators(event):
    assert CDR.validate(event, now=NOW) is None
    assert REFERENCE.is_valid(event)
    # and survive a JSON round trip
    assert CDR.parse(orjson.dumps(event), now=NOW) == (json.loads(orjson.dumps(event)), None)


@given(valid_cdrs(), st.sampled_from([f for f in CDR.fields if f != "event_time"]), JUNK)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_validator_agrees_with_reference_on_corrupted_events(event, field, junk):
    event[field] = junk
    ours = CDR.validate(event, now=NOW)
    assert (ours is None) == REFERENCE.is_valid(event), (event, ours)
    if ours is not None:
        assert ours.field == field or ours.code == "missing_field"


@given(valid_cdrs(), st.sampled_from(CDR.required))
def test_dropping_any_required_field_is_named(event, field):
    del event[field]
    assert CDR.validate(event, now=NOW).reason == f"missing_field:{field}"


# -- derived forms ------------------------------------------------------------------------------
@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=list(CONTRACTS))
def test_derived_python_type_and_spark_schema_match_the_contract(contract):
    assert list(contract.typed_dict.__annotations__) == list(contract.fields)
    spark = contract.spark_schema()
    assert [f.name for f in spark.fields] == list(contract.fields)
    for f in spark.fields:
        assert f.nullable == (f.name not in contract.required)
        if contract.fields[f.name].get("format") == "date-time":
            assert f.dataType.typeName() == "timestamp"


def test_the_validated_rows_spark_schema_is_their_arrow_schema_with_the_contracts_types():
    from streaming.parse import ALL_COLUMNS, spark_schema

    validated = ",".join(f"{name}:{ddl}" for name, _, ddl in ALL_COLUMNS)
    assert spark_schema().simpleString() == f"struct<{validated}>"
    assert spark_schema(with_raw=True).simpleString() == (
        f"struct<{validated},raw_key:binary,headers:array<struct<key:string,value:binary>>,topic:string,"
        "kafka_timestamp_type:int,duplicate:boolean>")
    assert "event_time:timestamp" in validated and "kafka_offset:bigint" in validated


def test_simulator_templates_spell_exactly_the_cdr_fields():
    from churn.simulator.encode import TEMPLATES

    for kind, template in TEMPLATES.items():
        names = re.findall(rb'"([a-z_]+)":', template)
        assert set(n.decode() for n in names) <= set(CDR.fields)
        assert set(CDR.required) <= set(n.decode() for n in names)


def test_schema_docs_are_up_to_date():
    assert README_PATH.read_text() == render_readme(), "run `churn schemas docs`"


def test_readme_kcat_example_is_the_documented_one():
    from churn.config import PROJECT_ROOT

    assert kcat_one_liner(CDR, "127.0.0.1:19092") in (PROJECT_ROOT / "README.md").read_text()
