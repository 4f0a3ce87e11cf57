"""Pushes to Feast's Redis online store, written in Feast's own storage format, for the streaming job.

``FeastRedisWriter.write`` does what Feast's ``FeatureStore.push(..., to=PushMode.ONLINE)`` does with a
Redis online store (``RedisOnlineStore.online_write_batch``): per entity, one hash whose key is Feast's
entity key (``churn.online_reader.redis_key``), holding the event time as a protobuf ``Timestamp`` under
``_ts:<view>`` and each feature's ``ValueProto`` under its ``_mmh3`` field (``churn.online_reader.hash_field``),
written only when the event time is newer than the one stored (an older or equal one is skipped, as Feast
skips it). The differences are in the cost:

* values are encoded straight into protobuf's wire format (Feast builds a ``ValueProto`` per value
  through its type map, from a pandas frame converted to Arrow);
* the check and the write are one server-side script per 1,000 entities, all sent in one round trip
  (Feast reads every stored timestamp in one pipeline, then writes in a second), so each entity is
  checked and written atomically.

A test pushes the same rows through Feast and through this writer and finds byte-equal hashes, and
Feast's ``get_online_features`` reading them back; a change in Feast's format fails it.

>>> double_value(1.5).hex(), int64_list_value([1, -1]).hex()
('29000000000000f83f', '720d0a0b01ffffffffffffffffff01')
>>> double_list_value([]).hex(), timestamp_value(1_700_000_000, 5_000).hex()
('7a00', '0880e2cfaa06108827')
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

import numpy as np

from churn.online_reader import fail_fast_redis, hash_field, redis_key


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def double_value(v: float | None) -> bytes:
    """``ValueProto(double_val=v)``: field 5, 64-bit (an unset ``Value`` for None)."""
    return b"" if v is None else b"\x29" + struct.pack("<d", v)


def double_list_value(values) -> bytes:
    """``ValueProto(double_list_val=DoubleList(val=values))``: field 15 holding a packed field 1."""
    data = np.asarray(values, dtype="<f8").tobytes()
    return _length_delimited(0x7A, _length_delimited(0x0A, data) if data else b"")


def int64_list_value(values) -> bytes:
    """``ValueProto(int64_list_val=Int64List(val=values))``: field 14 holding a packed field 1 of varints."""
    return int64_list_values([values])[0]


def int64_list_values(lists) -> list[bytes]:
    """``int64_list_value`` of each of ``lists``, the varints of all of them made at once (numpy).

    >>> [v.hex() for v in int64_list_values([[300], [], [0, 2**63 - 1]])]
    ['72040a02ac02', '7200', '720c0a0a00ffffffffffffffff7f']
    """
    counts = np.fromiter((len(values) for values in lists), np.int64, len(lists))
    flat = np.concatenate([np.asarray(values, np.int64) for values in lists]) if counts.sum() else np.empty(0, np.int64)
    data, sizes = _varints(flat)
    # each list's varints end where its last value's do
    byte_ends = np.concatenate([[0], np.cumsum(sizes)])[np.concatenate([[0], np.cumsum(counts)])].tolist()
    raw = data.tobytes()
    return [_length_delimited(0x72, _length_delimited(0x0A, raw[a:b]) if b > a else b"")
            for a, b in zip(byte_ends, byte_ends[1:])]


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf's varint of each int64 of ``values`` (a negative one as its 64-bit two's complement): all their
    bytes, one after the other, and how many bytes each took."""
    unsigned = values.view(np.uint64)
    sizes = np.ones(len(values), np.int64)
    rest = unsigned >> np.uint64(7)
    while rest.any():
        sizes += rest > 0
        rest >>= np.uint64(7)
    out = np.empty(int(sizes.sum()), np.uint8)
    at = np.cumsum(sizes) - sizes
    rest = unsigned.copy()
    for k in range(int(sizes.max(initial=0))):
        live = sizes > k
        more = np.where(sizes[live] > k + 1, 0x80, 0).astype(np.uint8)
        out[at[live] + k] = (rest[live] & np.uint64(0x7F)).astype(np.uint8) | more
        rest >>= np.uint64(7)
    return out, sizes


def timestamp_value(seconds: int, nanos: int) -> bytes:
    """``google.protobuf.Timestamp(seconds, nanos)``; zero fields are left out, as protobuf leaves them."""
    return (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")


#: Feast's value types this writer encodes (``ValueType`` names), by the function that encodes one value.
ENCODERS: dict[str, Callable] = {"DOUBLE": double_value, "DOUBLE_LIST": double_list_value,
                                 "INT64_LIST": int64_list_value}

def encode_column(kind: str, values: Sequence) -> list[bytes]:
    """Each of ``values`` as a ``ValueProto`` of Feast's value type ``kind`` (``ENCODERS``), a list of int64 lists
    at once."""
    if kind == "INT64_LIST":
        return int64_list_values(values)
    encode = ENCODERS[kind]
    return [encode(v) for v in values]


# KEYS: the entities' hashes. ARGV: the timestamp's field, the number of feature fields W, the W fields, then
# per key its event time (seconds, nanos), the Timestamp's bytes and its W values. A key is written only when
# its event time is newer than the one it holds (Feast's rule); returns how many were written.
_WRITE_NEWER = """
local function stored_time(raw)
  local seconds, nanos, at = 0, 0, 1
  while at <= #raw do
    local tag = string.byte(raw, at)
    at = at + 1
    local value, scale, byte = 0, 1, 128
    while byte >= 128 do
      byte = string.byte(raw, at)
      at = at + 1
      value = value + (byte % 128) * scale
      scale = scale * 128
    end
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds, nanos
end
local ts_field, width = ARGV[1], tonumber(ARGV[2])
local at, written = 3 + width, 0
for _, key in ipairs(KEYS) do
  local seconds, nanos = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local previous = redis.call('HGET', key, ts_field)
  local newer = true
  if previous then
    local s, n = stored_time(previous)
    newer = seconds > s or (seconds == s and nanos > n)
  end
  if newer then
    local fields = {ts_field, ARGV[at + 2]}
    for j = 1, width do
      fields[#fields + 1] = ARGV[2 + j]
      fields[#fields + 1] = ARGV[at + 2 + j]
    end
    redis.call('HSET', key, unpack(fields))
    written = written + 1
  end
  at = at + 3 + width
end
return written
"""


class FeastRedisWriter:
    """Rows of one feature view to Feast's Redis online store, in Feast's format (see the module doc)."""

    #: entities per script call: each call holds Redis for its duration (~1 ms per 1,000 here)
    CHUNK = 1000

    def __init__(self, project: str, options: dict, kinds: dict[str, dict[str, str]], join_key: str = "customer_id"):
        """``options``: ``redis.Redis``'s connection arguments (``churn.security.redis_options``); ``kinds``:
        per view, each feature's Feast value type name (``view_kinds``)."""
        self.project, self.kinds, self.join_key = project, kinds, join_key
        self.client = fail_fast_redis(options, timeout_s=10.0)
        self._write_newer = self.client.register_script(_WRITE_NEWER)

    @classmethod
    def from_settings(cls, settings, role: str = "stream") -> "FeastRedisWriter":
        from churn.security import redis_options
        from feature_repo.activity import customer_activity

        return cls(settings.feast.project, redis_options(settings, role), {"customer_activity": view_kinds(customer_activity)})

    def write(self, view: str, entity_ids: Sequence[str], event_times_us: Sequence[int],
              columns: dict[str, Sequence]) -> int:
        """Each entity's features (``columns``: name -> one value per entity, every feature of ``view``) at its
        event time (microseconds since the epoch), where it is newer than the stored one. Returns how many
        entities were written."""
        kinds = self.kinds[view]
        names = list(kinds)
        if set(columns) != set(names):
            raise ValueError(f"{view}: features {sorted(columns)} given, the view has {sorted(names)}")
        values = [encode_column(kinds[n], columns[n]) for n in names]
        head = [f"_ts:{view}".encode(), str(len(names)).encode(), *(hash_field(f"{view}:{n}") for n in names)]
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(entity_ids), self.CHUNK):
            keys, args = [], list(head)
            for i in range(start, min(start + self.CHUNK, len(entity_ids))):
                seconds, micros = divmod(int(event_times_us[i]), 1_000_000)
                keys.append(redis_key(self.project, self.join_key, entity_ids[i]))
                args += [seconds, micros * 1000, timestamp_value(seconds, micros * 1000)]
                args += [column[i] for column in values]
            self._write_newer(keys=keys, args=args, client=pipe)
        return sum(pipe.execute()) if entity_ids else 0

    def write_frame(self, view: str, frame, time_column: str = "feature_time") -> int:
        """``write`` for a pandas frame as Feast's ``push`` takes one: the join key, the event time
        (``time_column``, datetimes) and every feature of ``view`` as columns (others are ignored)."""
        return self.write(view, frame[self.join_key].tolist(),
                          frame[time_column].dt.as_unit("us").astype("int64").tolist(),
                          {name: frame[name].tolist() for name in self.kinds[view]})

    def close(self) -> None:
        self.client.close()


def view_kinds(view) -> dict[str, str]:
    """A Feast feature view's features and their value type names, in its schema's order (a type this writer
    does not encode raises ``ValueError``)."""
    kinds = {field.name: field.dtype.to_value_type().name for field in view.features}
    unknown = {n: k for n, k in kinds.items() if k not in ENCODERS}
    if unknown:
        raise ValueError(f"{view.name}: FeastRedisWriter does not encode {unknown}")
    return kinds
