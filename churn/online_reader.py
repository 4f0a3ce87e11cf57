"""Batch reads from Feast's Redis online store, for the scorer's hot path.

Two readers with one interface, ``read(view, names, customer_ids)`` returning one
row per customer (a dict of the named features, or None where the store holds
nothing for that customer):

* ``FeastSdkReader`` calls ``FeatureStore.get_online_features``: Feast's
  general-purpose path, which builds protobuf requests and responses per entity
  and converts every value through its type map;
* ``FeastRedisReader`` reads the same Redis hashes Feast wrote, in Feast's own
  storage format (keys from Feast's ``_redis_key``, field names from Feast's
  ``_mmh3``, values as Feast's ``ValueProto``), all customers of a call in one
  round trip: a server-side script runs one ``HMGET`` per customer and returns
  them together (a pipeline of ``HMGET`` s cost ~20 µs of Python per customer in
  redis-py, the script ~4 µs), and keys cached per customer. It is what Feast's
  Go and Java feature servers do (they pipeline). A test reads every customer both ways and asserts equal values,
  so a change in Feast's format fails the test instead of the scores.

Measured reading 1,000 customers' activity state: Feast's API 42-46 ms, the direct
reader 18-22 ms (medians of 7 in two runs; ``bench/run.py score``, figures ``score_lookup_*``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import redis


class FeastSdkReader:
    """Feast's ``get_online_features`` (the reference the fast reader is tested against)."""

    def __init__(self, fs):
        self.fs = fs

    def read(self, view: str, names: Sequence[str], customer_ids: Sequence[str]) -> list[dict | None]:
        data = self.fs.get_online_features(
            features=[f"{view}:{n}" for n in names],
            entity_rows=[{"customer_id": c} for c in customer_ids],
        ).to_dict()
        rows = []
        for i in range(len(customer_ids)):
            row = {n: data[n][i] for n in names}
            rows.append(None if all(v is None for v in row.values()) else row)
        return rows


_DOUBLE_LIST = 0x7A  # ValueProto field 15 (double_list_val), length-delimited
_PACKED_VALUES = 0x0A  # DoubleList field 1 (val), packed


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _double_list(raw: bytes) -> list[float] | None:
    """A ``double_list_val`` ValueProto read straight from its wire bytes (protobuf's own conversion of
    a repeated field to a list cost ~15 µs for a state's 36 sums, most of a customer's lookup); None if
    ``raw`` is anything else.

    >>> from feast.protos.feast.types.Value_pb2 import DoubleList, Value
    >>> _double_list(Value(double_list_val=DoubleList(val=[1.5, -2.0, 1e300])).SerializeToString())
    [1.5, -2.0, 1e+300]
    >>> _double_list(Value(double_list_val=DoubleList(val=[])).SerializeToString())
    []
    >>> _double_list(Value(double_val=1.5).SerializeToString()) is None
    True
    """
    if not raw or raw[0] != _DOUBLE_LIST:
        return None
    length, at = _varint(raw, 1)
    if at + length != len(raw):
        return None
    if length == 0:
        return []
    if raw[at] != _PACKED_VALUES:
        return None
    size, at = _varint(raw, at + 1)
    if at + size != len(raw) or size % 8:
        return None
    return np.frombuffer(raw, dtype="<f8", count=size // 8, offset=at).tolist()


def _python_value(proto) -> Any:
    """A Feast ``ValueProto`` as a Python value (scalars and lists; None if unset)."""
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    value = getattr(proto, kind)
    return list(value.val) if kind.endswith("_list_val") else value


# One HMGET per key, all in one command: KEYS are the customers' hashes, ARGV the hash fields.
_HMGET_MANY = """
local rows = {}
for i, key in ipairs(KEYS) do rows[i] = redis.call('HMGET', key, unpack(ARGV)) end
return rows
"""


class FeastRedisReader:
    """Feast's Redis online store read directly in Feast's storage format (see the module doc)."""

    def __init__(self, project: str, host: str, port: int, key_cache: int = 200_000,
                 socket_timeout_s: float = 2.0):
        from feast.infra.online_stores.helpers import _mmh3

        self.project = project
        self._mmh3 = _mmh3
        self.client = redis.Redis(host=host, port=port, socket_timeout=socket_timeout_s,
                                  socket_connect_timeout=socket_timeout_s)
        self._keys: OrderedDict[str, bytes] = OrderedDict()
        self._fields: dict[tuple[str, tuple[str, ...]], list[bytes]] = {}
        self.key_cache = key_cache
        self._hmget_many = self.client.register_script(_HMGET_MANY)  # EVALSHA, loaded on first use

    @classmethod
    def from_settings(cls, settings) -> "FeastRedisReader":
        return cls(settings.feast.project, settings.redis.host, settings.redis.port)

    def _key(self, customer_id: str) -> bytes:
        key = self._keys.get(customer_id)
        if key is None:
            from feast.infra.online_stores.helpers import _redis_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            entity = EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=customer_id)])
            key = self._keys[customer_id] = _redis_key(self.project, entity, entity_key_serialization_version=3)
            if len(self._keys) > self.key_cache:
                self._keys.popitem(last=False)
        return key

    def _hash_fields(self, view: str, names: Sequence[str]) -> list[bytes]:
        spec = (view, tuple(names))
        fields = self._fields.get(spec)
        if fields is None:
            fields = self._fields[spec] = [self._mmh3(f"{view}:{n}") for n in names]
        return fields

    def read(self, view: str, names: Sequence[str], customer_ids: Sequence[str]) -> list[dict | None]:
        from feast.protos.feast.types.Value_pb2 import Value

        if not customer_ids:
            return []
        fields = self._hash_fields(view, names)
        rows: list[dict | None] = []
        proto = Value()
        for values in self._hmget_many(keys=[self._key(c) for c in customer_ids], args=fields):
            if all(v is None for v in values):
                rows.append(None)
                continue
            row = {}
            for name, raw in zip(names, values):
                if raw is None:
                    row[name] = None
                elif (doubles := _double_list(raw)) is not None:
                    row[name] = doubles
                else:
                    proto.ParseFromString(raw)
                    row[name] = _python_value(proto)
            rows.append(row)
        return rows

    def close(self) -> None:
        self.client.close()
