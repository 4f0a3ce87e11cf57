"""CDR and label events as contract-conforming JSON bytes, written fast.

The byte templates below spell out the CDR contract's fields; a test checks that
every encoded event validates against ``schemas/cdr.schema.json`` and that the
templates cover exactly the contract's fields, so they cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import orjson

from churn.contracts import format_time
from churn.simulator.behaviour import COUNTERPARTIES, DIRECTIONS, EventBatch
from churn.simulator.population import DATA, SMS, VOICE

_HEAD = b'{"event_id":"%s-%d","customer_id":"%s","event_time":"%sZ","record_type":'
_TAIL = b'"cell_id":"C%04d","roaming":%s,"charge":%.2f}'
TEMPLATES = {
    VOICE: _HEAD + b'"voice","direction":"%s","duration_s":%.1f,"counterparty":"%s","dropped":%s,' + _TAIL,
    SMS: _HEAD + b'"sms","direction":"%s","counterparty":"%s",' + _TAIL,
    DATA: _HEAD + b'"data","direction":"%s","duration_s":%.1f,"data_bytes":%d,' + _TAIL,
}
_BOOL = (b"false", b"true")
_DIRECTIONS = [d.encode() for d in DIRECTIONS]
_PARTIES = [p.encode() for p in COUNTERPARTIES] + [b""]  # index -1: none (data)


def iso_times_ms(time_ms: np.ndarray) -> list[bytes]:
    """Epoch milliseconds to RFC 3339 text without the zone letter (the template adds ``Z``)."""
    return np.datetime_as_string(time_ms.astype("datetime64[ms]"), unit="ms").astype("S").tolist()


def encode_cdrs(
    batch: EventBatch, customer_ids: list[bytes], run_id: bytes, first_seq: int
) -> tuple[list[bytes], list[bytes]]:
    """JSON values and Kafka keys of a batch; event ids are ``<run_id>-<seq>``."""
    voice, sms, data = TEMPLATES[VOICE], TEMPLATES[SMS], TEMPLATES[DATA]
    values: list[bytes] = []
    keys: list[bytes] = []
    append_v, append_k = values.append, keys.append
    rows = zip(
        range(first_seq, first_seq + len(batch)),
        batch.customer.tolist(),
        iso_times_ms(batch.time_ms),
        batch.record_type.tolist(),
        batch.direction.tolist(),
        batch.duration_s.tolist(),
        batch.data_bytes.tolist(),
        batch.counterparty.tolist(),
        batch.dropped.tolist(),
        batch.cell.tolist(),
        batch.roaming.tolist(),
        batch.charge.tolist(),
    )
    for seq, c, t, kind, d, dur, nbytes, party, drop, cell, roam, charge in rows:
        cid = customer_ids[c]
        if kind == VOICE:
            v = voice % (run_id, seq, cid, t, _DIRECTIONS[d], dur, _PARTIES[party], _BOOL[drop], cell, _BOOL[roam], charge)
        elif kind == SMS:
            v = sms % (run_id, seq, cid, t, _DIRECTIONS[d], _PARTIES[party], cell, _BOOL[roam], charge)
        else:
            v = data % (run_id, seq, cid, t, _DIRECTIONS[d], dur, nbytes, cell, _BOOL[roam], charge)
        append_v(v)
        append_k(cid)
    return values, keys


def encode_label(event_id: str, customer_id: str, label_time_s: float, churned: bool) -> bytes:
    """One churn-label event (contract ``churn_label``)."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "label_time": format_time(label_time_s),
            "churned": churned,
            "source": "simulator",
        }
    )
