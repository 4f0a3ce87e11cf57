"""Every dashboard JSON that Grafana provisions is valid against Grafana's published schemas, pinned in
monitoring/grafana/schema/ (see its README): the dashboard kind, the options and field config of each
panel type used, and the Prometheus query of each target. The schemas are those of the Grafana
Foundation SDK release that builds the dashboards, so upgrading one without the other fails here."""

from __future__ import annotations

import copy
import json
from functools import cache

import jsonschema
import pytest

from churn.config import PROJECT_ROOT
from monitoring.grafana.dashboards import DASHBOARDS, FOLDER, as_json

SCHEMAS = PROJECT_ROOT / "monitoring" / "grafana" / "schema"
PANEL_TYPES = ("timeseries", "stat", "heatmap")
UIDS = [d.uid for d in DASHBOARDS]


@cache
def _schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


def dashboard_schema() -> dict:
    """The pinned dashboard schema, with the one correction the README names: a threshold step's value
    may be null (Grafana's base step, -Infinity, is saved as null; Grafana's own schema allows it since
    grafana/grafana#70958 and the SDK's later JSON schema does too)."""
    schema = copy.deepcopy(_schema("dashboard"))
    value = schema["definitions"]["Threshold"]["properties"]["value"]
    assert value.get("type") == "number", value  # upstream fixed it: drop this correction
    value["type"] = ["number", "null"]
    return schema


def _validator(schema: dict, definition: str | None = None) -> jsonschema.Draft7Validator:
    if definition is not None:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors that explain ``error``: for a oneOf/anyOf, those of the alternative that came closest."""
    if not error.context:
        return [error]
    branches: dict = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    closest = min(branches.values(), key=len)
    return [leaf for sub in closest for leaf in _leaves(sub)]


def problems(data: dict) -> list[str]:
    """Everything in a dashboard's JSON that Grafana's pinned schemas reject, as 'path: message' lines."""
    found: list[tuple[list, jsonschema.ValidationError | str]]
    found = [(["dashboard"], e) for e in _validator(dashboard_schema()).iter_errors(data)]
    for i, panel in enumerate(data.get("panels", [])):
        if not isinstance(panel, dict):
            continue
        where: list = ["panels", i]
        kind = panel.get("type")
        if kind not in PANEL_TYPES:
            found.append((where, f"panel type {kind!r} has no pinned schema (add {kind}.schema.json)"))
            continue
        options = _validator(_schema(kind), "Options").iter_errors(panel.get("options"))
        found += [(where + ["options"], e) for e in options]
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None and "FieldConfig" in _schema(kind)["definitions"]:
            found += [(where + ["fieldConfig", "defaults", "custom"], e)
                      for e in _validator(_schema(kind), "FieldConfig").iter_errors(custom)]
        for j, target in enumerate(panel.get("targets") or []):
            found += [(where + ["targets", j], e) for e in _validator(_schema("prometheus")).iter_errors(target)]
    out = []
    for prefix, error in found:
        if isinstance(error, str):
            out.append(f"{'/'.join(map(str, prefix))}: {error}")
            continue
        base = prefix[1:] if prefix == ["dashboard"] else prefix
        for leaf in _leaves(error):
            path = "/".join(map(str, [*base, *leaf.absolute_path])) or "(top)"
            out.append(f"{path}: {leaf.message}")
    return sorted(set(out))


def _load(uid: str) -> dict:
    return json.loads((FOLDER / f"{uid}.json").read_text())


def test_the_pinned_schemas_are_valid_draft_7_schemas():
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        jsonschema.Draft7Validator.check_schema(json.loads(path.read_text()))
    jsonschema.Draft7Validator.check_schema(dashboard_schema())
    assert {p.name for p in SCHEMAS.glob("*.schema.json")} == {
        "dashboard.schema.json", "prometheus.schema.json", *(f"{k}.schema.json" for k in PANEL_TYPES)}


@pytest.mark.parametrize("uid", UIDS)
def test_every_dashboard_is_valid_against_grafanas_schema(uid: str):
    data = _load(uid)
    assert problems(data) == []
    assert problems(json.loads(as_json(next(d for d in DASHBOARDS if d.uid == uid)))) == []
    # the schema is the one of the SDK release that generated the dashboard
    pinned = _schema("dashboard")["definitions"]["Dashboard"]["properties"]["schemaVersion"]["default"]
    assert data["schemaVersion"] == pinned
    assert {p["type"] for p in data["panels"]} <= set(PANEL_TYPES)


def _panel(data: dict, kind: str) -> dict:
    return next(p for p in data["panels"] if p["type"] == kind)


def _wrong_unit(d):  # a number where the schema wants a string
    _panel(d, "timeseries")["fieldConfig"]["defaults"]["unit"] = 1


def _wrong_width(d):
    _panel(d, "timeseries")["gridPos"]["w"] = "12"


def _wrong_schema_version(d):
    d["schemaVersion"] = "36"


def _unknown_dashboard_field(d):
    d["refreshInterval"] = "10s"


def _threshold_as_string(d):
    _panel(d, "timeseries")["fieldConfig"]["defaults"]["thresholds"]["steps"].append({"value": "1", "color": "red"})


def _legend_flag_as_string(d):
    _panel(d, "timeseries")["options"]["legend"]["showLegend"] = "yes"


def _stat_calcs_not_a_list(d):
    _panel(d, "stat")["options"]["reduceOptions"]["calcs"] = "lastNotNull"


def _query_format_unknown(d):
    _panel(d, "timeseries")["targets"][0]["format"] = "timeseries"


def _query_without_expr(d):
    del _panel(d, "timeseries")["targets"][0]["expr"]


def _unknown_panel_type(d):
    _panel(d, "stat")["type"] = "singlestat"


BREAKAGES = {f.__name__.lstrip("_"): (f, where) for f, where in [
    (_wrong_unit, "fieldConfig/defaults/unit: 1 is not of type 'string'"),
    (_wrong_width, "gridPos/w: '12' is not of type 'integer'"),
    (_wrong_schema_version, "schemaVersion: '36' is not of type 'integer'"),
    (_unknown_dashboard_field, "(top): Additional properties are not allowed ('refreshInterval' was unexpected)"),
    (_threshold_as_string, "thresholds/steps/1/value: '1' is not of type 'number', 'null'"),
    (_legend_flag_as_string, "options/legend/showLegend: 'yes' is not of type 'boolean'"),
    (_stat_calcs_not_a_list, "options/reduceOptions/calcs: 'lastNotNull' is not of type 'array'"),
    (_query_format_unknown, "targets/0/format: 'timeseries' is not one of"),
    (_query_without_expr, "targets/0: 'expr' is a required property"),
    (_unknown_panel_type, "panel type 'singlestat' has no pinned schema"),
]}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_dashboard_with_a_wrong_field_fails_validation(breakage: str):
    break_it, expected = BREAKAGES[breakage]
    data = copy.deepcopy(_load("churn-health"))  # it has time-series and stat panels
    break_it(data)
    found = problems(data)
    assert found, f"{breakage} passed validation"
    assert any(expected in line for line in found), found


def test_the_correction_allows_only_a_null_threshold_value():
    data = _load("churn-latency")
    steps = _panel(data, "timeseries")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["value"] is None  # Grafana's base step
    raw = _validator(_schema("dashboard"))
    assert not raw.is_valid(data)  # the unpatched schema rejects it: the correction is needed
    assert problems(data) == []


def test_problems_name_the_path_into_the_dashboard():
    data = copy.deepcopy(_load("churn-model"))
    data["panels"][1]["gridPos"]["h"] = 0
    assert problems(data) == ["panels/1/gridPos/h: 0 is less than or equal to the minimum of 0"]
