"""Event contracts: one JSON Schema per event type in ``schemas/``, every other form derived.

The JSON Schema files are the single definition. From each this module derives
a fast validator that names the reason an event is invalid, a Python
``TypedDict``, a Spark ``StructType`` and the Markdown reference in
``schemas/README.md``. Tests prove the derived validator agrees with the
reference ``jsonschema`` implementation.

>>> cdr = CONTRACTS["cdr"]
>>> event = {"event_id": "e1", "customer_id": "7590-VHVEG",
...          "event_time": "2026-11-23T10:15:00.000Z", "record_type": "voice",
...          "direction": "outgoing", "duration_s": 61.0, "counterparty": "off_net",
...          "dropped": False, "cell_id": "C0421", "roaming": False, "charge": 0.12}
>>> cdr.validate(event, now=parse_time("2026-11-23T10:16:00Z")) is None
True
>>> cdr.validate({**event, "duration_s": -3}).reason
'negative_value:duration_s'
>>> cdr.validate({**event, "record_type": "fax"}).reason
'unknown_value:record_type'
>>> cdr.parse(b'{"event_id": ')[1].reason
'malformed_json'
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, TypedDict

import orjson

from churn.config import PROJECT_ROOT, get_settings

SCHEMAS_DIR = PROJECT_ROOT / "schemas"

# Violation codes, in the order the validator checks them.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_VALUE = "unknown_value"
NEGATIVE_VALUE = "negative_value"
OUT_OF_RANGE = "out_of_range"
BAD_FORMAT = "bad_format"
FUTURE_EVENT_TIME = "future_event_time"

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


@dataclass(frozen=True)
class Violation:
    """Why an event is invalid: a code, the field concerned, and words for a person."""

    code: str
    field: str | None
    detail: str

    @property
    def reason(self) -> str:
        """``code:field`` (or just ``code``): short, stable, good for metrics labels."""
        return f"{self.code}:{self.field}" if self.field else self.code


@functools.lru_cache(maxsize=8)  # a CDR's time is read by its check, the future-time rule and the consumer
def parse_time(value: str) -> float:
    """RFC 3339 text to epoch seconds; ``ValueError`` if it is not RFC 3339 with a zone.

    >>> parse_time("1970-01-01T00:01:00.500Z")
    60.5
    >>> parse_time("2026-11-23T10:15:00+01:00") == parse_time("2026-11-23T09:15:00Z")
    True
    """
    if not _RFC3339.match(value):
        raise ValueError(f"not RFC 3339 date-time with a time zone: {value!r}")
    return datetime.fromisoformat(value).timestamp()


def format_time(epoch_s: float) -> str:
    """Epoch seconds to RFC 3339 UTC with milliseconds, the form producers here write.

    >>> format_time(60.5)
    '1970-01-01T00:01:00.500Z'
    """
    ms = int(round(epoch_s * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}

Check = Callable[[Any, str], "Violation | None"]


def _types_of(spec: dict) -> list[str]:
    t = spec.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _compile_value_check(spec: dict) -> Check:
    """One property's checks (type, enum, range, length, pattern, format, items) as a closure.

    Only the constraints the property has become steps. The closure runs them in turn (array items
    are checked this way); ``_compile_object_check`` instead inlines each step's test (``passes``)
    and calls a step only when its test fails (the scorer and the streaming job validate every CDR:
    this is on their hot path).
    """
    types = _types_of(spec)
    nullable = "null" in types
    steps: list[Check] = []
    # per step, a Python expression over ``v`` that is true when the step would pass (None: always run
    # the step); ``_compile_object_check`` inlines them, see there
    passes: list[tuple[str | None, dict]] = []
    type_tests = [_JSON_TYPES[t] for t in types if t != "null"]
    if type_tests:
        expected = " or ".join(t for t in types if t != "null")
        is_type = type_tests[0] if len(type_tests) == 1 else (lambda v: any(test(v) for test in type_tests))

        def type_step(value, name):
            if is_type(value):
                return None
            if isinstance(value, float) and not math.isfinite(value):
                return Violation(WRONG_TYPE, name, f"{name} must be a finite number, got {value!r}")
            return Violation(WRONG_TYPE, name, f"{name} must be {expected}, got {type(value).__name__} {value!r:.40}")

        steps.append(type_step)
        kinds = [t for t in types if t != "null"]
        passes.append((_TYPE_PASSES.get(kinds[0]) if len(kinds) == 1 else None, {}))
    enum = spec.get("enum")
    if enum is not None:
        enum_set = set(enum)
        allowed = ", ".join(str(e) for e in enum if e is not None)
        steps.append(lambda v, name: None if v in enum_set else
                     Violation(UNKNOWN_VALUE, name, f"{name} must be one of {allowed}; got {v!r:.40}"))
        passes.append(("v in ENUM", {"ENUM": enum_set}))
    minimum, maximum = spec.get("minimum"), spec.get("maximum")
    if minimum is not None:
        low_code = NEGATIVE_VALUE if minimum == 0 else OUT_OF_RANGE
        steps.append(lambda v, name: None if v >= minimum else
                     Violation(low_code, name, f"{name} must be >= {minimum}, got {v!r}"))
        passes.append(("v >= MINIMUM", {"MINIMUM": minimum}))
    if maximum is not None:
        steps.append(lambda v, name: None if v <= maximum else
                     Violation(OUT_OF_RANGE, name, f"{name} must be <= {maximum}, got {v!r}"))
        passes.append(("v <= MAXIMUM", {"MAXIMUM": maximum}))
    min_len, max_len = spec.get("minLength"), spec.get("maxLength")
    if min_len is not None or max_len is not None:
        lo, hi = min_len or 0, max_len if max_len is not None else math.inf

        def length_step(v, name):
            n = len(v)
            if n < lo:
                return Violation(OUT_OF_RANGE, name, f"{name} must have at least {lo} characters")
            if n > hi:
                return Violation(OUT_OF_RANGE, name, f"{name} must have at most {hi} characters")
            return None

        steps.append(length_step)
        passes.append(("LO <= len(v) <= HI", {"LO": lo, "HI": hi}))
    if "pattern" in spec:
        search = re.compile(spec["pattern"]).search
        steps.append(lambda v, name: None if search(v) else
                     Violation(BAD_FORMAT, name, f"{name} must match {spec['pattern']}; got {v!r:.40}"))
        passes.append(("SEARCH(v)", {"SEARCH": search}))
    if spec.get("format") == "date-time":
        def datetime_step(v, name):
            try:
                parse_time(v)
            except ValueError:
                return Violation(BAD_FORMAT, name, f"{name} must be an RFC 3339 date-time with a time zone; got {v!r:.40}")
            return None

        steps.append(datetime_step)
        passes.append((None, {}))
    if spec.get("format") == "date":
        def date_step(v, name):
            try:
                date.fromisoformat(v)
            except ValueError:
                return Violation(BAD_FORMAT, name, f"{name} must be a calendar date YYYY-MM-DD; got {v!r:.40}")
            return None

        steps.append(date_step)
        passes.append((None, {}))
    max_items = spec.get("maxItems")
    if max_items is not None:
        steps.append(lambda v, name: None if len(v) <= max_items else
                     Violation(OUT_OF_RANGE, name, f"{name} must have at most {max_items} items"))
        passes.append(("len(v) <= MAX_ITEMS", {"MAX_ITEMS": max_items}))
    if "items" in spec:
        item_check = _compile_object_check(spec["items"])

        def items_step(v, name):
            for i, item in enumerate(v):
                bad = item_check(item, f"{name}[{i}]")
                if bad is not None:
                    return bad
            return None

        steps.append(items_step)
        passes.append((None, {}))

    def check(value: Any, name: str) -> Violation | None:
        if value is None and nullable:
            return None
        for step in steps:
            bad = step(value, name)
            if bad is not None:
                return bad
        return None

    check.nullable = nullable  # type: ignore[attr-defined]
    check.steps = list(zip(steps, passes))  # type: ignore[attr-defined]
    return check


# an expression over ``v`` that is true when a value is of the JSON type (exact types: anything else, such
# as a NumPy float, is left to the type step, which decides as it always does)
_TYPE_PASSES = {
    "string": "type(v) is str",
    "number": "(type(v) is float or type(v) is int)",
    "integer": "type(v) is int",
    "boolean": "(v is True or v is False)",
    "object": "type(v) is dict",
    "array": "type(v) is list",
}


def _compile_object_check(schema: dict) -> Check:
    """An object's checks: required fields, then each property, then if/then rules.

    Compiled to one Python function (``exec`` of generated source): every check of every property is an
    inline expression, and a property's step (the closure that words the violation) is called only
    when its expression is false, so a valid event costs no function call per constraint. A step
    decides: where its expression is false but the step finds nothing wrong (a value of an unusual
    Python type), checking goes on. This made a valid CDR's check ~2.4x faster, 5.5 -> 2.3 µs (the
    streaming job and the scorer validate every CDR).
    """
    required = list(schema.get("required", []))
    props = [(name, _compile_value_check(spec)) for name, spec in schema.get("properties", {}).items()]
    conditionals: list[tuple[str, Any, list[str]]] = []
    for rule in schema.get("allOf", []):
        ((field, cond),) = rule["if"]["properties"].items()
        conditionals.append((field, cond["const"], rule["then"]["required"]))

    namespace: dict[str, Any] = {
        "Violation": Violation, "NOT_AN_OBJECT": NOT_AN_OBJECT, "MISSING_FIELD": MISSING_FIELD,
    }
    lines = [
        "def check(value, name):",
        "    if not isinstance(value, dict):",
        "        return Violation(NOT_AN_OBJECT, name or None, f\"{name or 'event'} must be a JSON object\")",
        "    prefix = f'{name}.' if name else ''",
    ]
    for field in required:
        lines += [f"    if {field!r} not in value:",
                  f"        return Violation(MISSING_FIELD, prefix + {field!r}, "
                  f"'required field ' + prefix + {field!r} + ' is missing')"]
    for i, (field, field_check) in enumerate(props):
        lines += [f"    if {field!r} in value:", f"        v = value[{field!r}]"]
        indent = "        "
        if field_check.nullable:
            lines.append("        if v is not None:")
            indent += "    "
        for j, (step, (expression, constants)) in enumerate(field_check.steps):
            step_name = f"_step_{i}_{j}"
            namespace[step_name] = step
            call = [f"{indent}bad = {step_name}(v, prefix + {field!r})", f"{indent}if bad is not None:",
                    f"{indent}    return bad"]
            if expression is None:
                lines += call
                continue
            for const, constant in constants.items():
                namespace[f"{const}_{i}_{j}"] = constant
                expression = re.sub(rf"\b{const}\b", f"{const}_{i}_{j}", expression)
            lines.append(f"{indent}if not ({expression}):")
            lines += ["    " + line for line in call]
    for k, (field, const, then_required) in enumerate(conditionals):
        namespace[f"_const_{k}"] = const
        lines.append(f"    if value.get({field!r}) == _const_{k}:")
        for needed in then_required:
            lines += [f"        if value.get({needed!r}) is None:",
                      f"            return Violation(MISSING_FIELD, prefix + {needed!r}, "
                      f"prefix + {needed!r} + {' is required when ' + field + ' is ' + str(const)!r})"]
    lines.append("    return None")
    exec(compile("\n".join(lines), f"<contract check of {schema.get('title', 'object')}>", "exec"), namespace)
    return namespace["check"]


class Contract:
    """One event type: its JSON Schema and everything derived from it."""

    def __init__(self, name: str, schema: dict, max_future_skew_s: float = 300.0):
        self.name = name
        self.schema = schema
        self.title: str = schema["title"]
        self.topic: str = schema["x-topic"]
        self.key_field: str = schema["x-key"]
        self.time_field: str = schema["x-event-time"]
        self.max_future_skew_s = max_future_skew_s
        self._check = _compile_object_check(schema)

    @property
    def fields(self) -> dict[str, dict]:
        return self.schema["properties"]

    @property
    def required(self) -> list[str]:
        return list(self.schema["required"])

    def enum(self, field: str) -> list[str]:
        """Allowed values of an enumerated field (without null)."""
        return [v for v in self.fields[field]["enum"] if v is not None]

    def validate(self, event: Any, now: float | None = None) -> Violation | None:
        """The first reason ``event`` breaks the contract, or None if it is valid.

        ``now`` (epoch seconds, default the clock) bounds how far in the future the
        event time may be.
        """
        bad = self._check(event, "")
        if bad is not None:
            return bad
        event_time = parse_time(event[self.time_field])
        limit = (time.time() if now is None else now) + self.max_future_skew_s
        if event_time > limit:
            return Violation(
                FUTURE_EVENT_TIME,
                self.time_field,
                f"{self.time_field} {event[self.time_field]} is more than "
                f"{self.max_future_skew_s:g} s ahead of the receiver's clock",
            )
        return None

    def parse(self, raw: bytes | str, now: float | None = None) -> tuple[dict | None, Violation | None]:
        """Decode one message value and validate it: ``(event, None)`` or ``(None, violation)``."""
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return None, Violation(MALFORMED_JSON, None, f"value is not valid UTF-8 JSON: {exc}")
        bad = self.validate(event, now)
        return (None, bad) if bad is not None else (event, None)

    @property
    def typed_dict(self) -> type:
        """A ``TypedDict`` of the event (all keys optional at the type level)."""
        py = {"string": str, "number": float, "integer": int, "boolean": bool, "array": list, "object": dict}
        annotations = {}
        for name, spec in self.fields.items():
            types = [py[t] for t in _types_of(spec) if t != "null"]
            annotations[name] = types[0] if len(types) == 1 else Any
        return TypedDict(self.title, annotations, total=False)  # type: ignore[operator]

    def spark_schema(self):
        """The event as a Spark ``StructType`` (date-times become timestamps)."""
        from pyspark.sql import types as T

        def to_spark(spec: dict):
            kind = [t for t in _types_of(spec) if t != "null"][0]
            if kind == "string":
                return T.TimestampType() if spec.get("format") == "date-time" else T.StringType()
            if kind == "array":
                return T.ArrayType(to_spark(spec["items"]))
            if kind == "object":
                req = set(spec.get("required", []))
                return T.StructType(
                    [T.StructField(n, to_spark(s), n not in req) for n, s in spec["properties"].items()]
                )
            return {"number": T.DoubleType(), "integer": T.LongType(), "boolean": T.BooleanType()}[kind]

        return to_spark(self.schema)


def load_contracts(schemas_dir: Path = SCHEMAS_DIR, max_future_skew_s: float = 300.0) -> dict[str, Contract]:
    """Every ``*.schema.json`` in ``schemas_dir``, by file stem (``cdr``, ``churn_risk``, ...)."""
    contracts = {}
    for path in sorted(schemas_dir.glob("*.schema.json")):
        name = path.name.removesuffix(".schema.json")
        contracts[name] = Contract(name, json.loads(path.read_text()), max_future_skew_s)
    return contracts


CONTRACTS = load_contracts(max_future_skew_s=get_settings().contracts.max_future_skew_s)
CDR = CONTRACTS["cdr"]
CHURN_RISK = CONTRACTS["churn_risk"]
CHURN_LABEL = CONTRACTS["churn_label"]
CHURN_SCORE = CONTRACTS["churn_score"]
CUSTOMER_PROFILE = CONTRACTS["customer_profile"]
