"""Invalid CDRs for testing dead-lettering: one kind per class of contract violation.

Each kind turns a valid encoded CDR into a bad one and names the reason the
contract's validator must give for it, so a test can check every bad event
against its expected reason.

>>> good = b'{"event_id":"r-1","customer_id":"c","event_time":"2026-01-01T00:00:00.000Z","record_type":"sms","direction":"outgoing","counterparty":"on_net","cell_id":"C0001","roaming":false,"charge":0.0}'
>>> from churn.contracts import CDR
>>> for kind in BAD_KINDS:
...     value = make_bad(kind, good, "bad-1", now_s=1.8e9)
...     assert CDR.parse(value, now=1.8e9)[1].reason == BAD_KINDS[kind], kind
"""

from __future__ import annotations

from typing import Callable

import orjson

from churn.contracts import format_time

#: kind -> the reason the validator gives for it
BAD_KINDS: dict[str, str] = {
    "malformed_json": "malformed_json",
    "not_an_object": "not_an_object",
    "missing_customer_id": "missing_field:customer_id",
    "wrong_type_roaming": "wrong_type:roaming",
    "negative_duration": "negative_value:duration_s",
    "unknown_record_type": "unknown_value:record_type",
    "bad_event_time": "bad_format:event_time",
    "future_event_time": "future_event_time:event_time",
    "missing_duration": "missing_field:duration_s",
}


def _negative_duration(e: dict, now_s: float) -> None:
    e.update(record_type="voice", duration_s=-abs(e.get("duration_s") or 30.0), counterparty="on_net", dropped=False)
    e.pop("data_bytes", None)


def _missing_duration(e: dict, now_s: float) -> None:
    e.update(record_type="voice", counterparty="on_net", dropped=False)
    e.pop("duration_s", None)
    e.pop("data_bytes", None)


_MUTATIONS: dict[str, Callable[[dict, float], None]] = {
    "missing_customer_id": lambda e, now: e.pop("customer_id"),
    "wrong_type_roaming": lambda e, now: e.update(roaming="no"),
    "negative_duration": _negative_duration,
    "unknown_record_type": lambda e, now: e.update(record_type="fax"),
    "bad_event_time": lambda e, now: e.update(event_time="yesterday 10:15"),
    "future_event_time": lambda e, now: e.update(event_time=format_time(now + 86400.0)),
    "missing_duration": _missing_duration,
}


def make_bad(kind: str, good_value: bytes, event_id: str, now_s: float) -> bytes:
    """A bad variant of ``good_value`` of the given kind, with its own ``event_id``."""
    if kind == "malformed_json":
        return good_value[: len(good_value) // 2]
    event = orjson.loads(good_value)
    event["event_id"] = event_id
    if kind == "not_an_object":
        return orjson.dumps([event])
    _MUTATIONS[kind](event, now_s)
    return orjson.dumps(event)
