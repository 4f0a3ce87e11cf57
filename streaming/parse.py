"""Kafka records to typed CDR rows, validated by the contract's own validator (in Spark executors).

``validate_arrow`` runs inside ``mapInArrow``: each record's value is checked by
``churn.contracts.CDR.parse``, the very validator producers and tests use, with
the Kafka record timestamp as the receiver's clock (so a replay decides the
same). Valid records come out typed per the contract; invalid ones keep their
raw bytes and get the reason.
"""

from __future__ import annotations

import json
from typing import Iterator

import pyarrow as pa

from churn.contracts import CDR, parse_time

#: Kafka columns carried through, then the contract's fields, then the verdict.
KAFKA_COLUMNS = [
    ("kafka_key", pa.string(), "string"),
    ("value", pa.binary(), "binary"),
    ("kafka_partition", pa.int32(), "int"),
    ("kafka_offset", pa.int64(), "bigint"),
    ("kafka_timestamp", pa.timestamp("us", tz="UTC"), "timestamp"),
]
_ARROW = {"string": pa.string(), "number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}
_DDL = {"string": "string", "number": "double", "integer": "bigint", "boolean": "boolean"}


def _contract_columns() -> list[tuple[str, pa.DataType, str]]:
    cols = []
    for name, spec in CDR.fields.items():
        kind = [t for t in (spec["type"] if isinstance(spec["type"], list) else [spec["type"]]) if t != "null"][0]
        if spec.get("format") == "date-time":
            cols.append((name, pa.timestamp("us", tz="UTC"), "timestamp"))
        else:
            cols.append((name, _ARROW[kind], _DDL[kind]))
    return cols


CONTRACT_COLUMNS = _contract_columns()
VERDICT_COLUMNS = [("reason", pa.string(), "string"), ("reason_detail", pa.string(), "string")]
#: What the silver query de-duplicates on: a valid record's ``event_id``; an invalid one is never a duplicate of
#: another (``invalid:<partition>:<offset>``).
DEDUP_KEY_COLUMNS = [("dedup_key", pa.string(), "string")]
ALL_COLUMNS = KAFKA_COLUMNS + CONTRACT_COLUMNS + VERDICT_COLUMNS + DEDUP_KEY_COLUMNS
ARROW_SCHEMA = pa.schema([(n, t) for n, t, _ in ALL_COLUMNS])
#: The rest of a Kafka record, for Bronze (``streaming.bronze_writer`` = ``silver_batch``): Spark's Kafka source
#: columns passed through ``validate_arrow`` as they are (no Python per record), renamed as Bronze names them.
RAW_COLUMNS = [
    ("key", "raw_key", pa.binary()),
    ("headers", "headers", pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))),
    ("topic", "topic", pa.string()),
    ("timestampType", "kafka_timestamp_type", pa.int32()),
]
#: With ``RAW_COLUMNS``, also ``duplicate``: false as validated, true where the de-duplication finds a duplicate.
ARROW_SCHEMA_WITH_RAW = pa.schema([*ARROW_SCHEMA, *((out, t) for _, out, t in RAW_COLUMNS), ("duplicate", pa.bool_())])
#: The columns of Spark's Kafka source that ``validate_arrow`` reads; with ``RAW_INPUTS``, those it passes through.
KAFKA_INPUTS = ["key", "value", "partition", "offset", "timestamp"]
RAW_INPUTS = [name for name, _, _ in RAW_COLUMNS if name not in KAFKA_INPUTS]


def spark_schema(with_raw: bool = False):
    """``validate_arrow``'s output schema (``ARROW_SCHEMA``, or ``ARROW_SCHEMA_WITH_RAW``) as a Spark ``StructType``,
    converted in Python. Spark would parse a DDL string with its SQL parser, whose first use in a JVM costs ~0.5 s of
    a streaming job's start on two cores."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(ARROW_SCHEMA_WITH_RAW if with_raw else ARROW_SCHEMA)


def validate_records(keys, values, partitions, offsets, timestamps_us) -> pa.RecordBatch:
    """One Arrow batch of parsed, validated rows from parallel lists of Kafka fields."""
    out: dict[str, list] = {n: [] for n, _, _ in ALL_COLUMNS}
    fields = [(n, t) for n, _, t in CONTRACT_COLUMNS]
    for key, value, part, off, ts in zip(keys, values, partitions, offsets, timestamps_us):
        out["kafka_key"].append(key)
        out["value"].append(value)
        out["kafka_partition"].append(part)
        out["kafka_offset"].append(off)
        out["kafka_timestamp"].append(ts)
        event, violation = CDR.parse(value if value is not None else b"", now=ts / 1e6)
        if violation is not None:
            for name, _ in fields:
                out[name].append(None)
            out["reason"].append(violation.reason)
            out["reason_detail"].append(violation.detail[:500])
            out["dedup_key"].append(f"invalid:{part}:{off}")
            continue
        for name, ddl in fields:
            v = event.get(name)
            if ddl == "timestamp":
                v = int(round(parse_time(v) * 1e6))
            elif ddl == "double" and v is not None:
                v = float(v)
            elif ddl == "bigint" and v is not None:
                v = int(v)
            out[name].append(v)
        out["reason"].append(None)
        out["reason_detail"].append(None)
        out["dedup_key"].append(event["event_id"])
    return pa.RecordBatch.from_arrays([pa.array(out[n], type=t) for n, t, _ in ALL_COLUMNS], schema=ARROW_SCHEMA)


def validate_arrow(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` function over Kafka rows (key, value, partition, offset, timestamp). Rows that also
    carry ``RAW_COLUMNS`` (headers, topic, timestampType) come out with them appended, as they came in, and
    ``duplicate`` false (output schema ``ARROW_SCHEMA_WITH_RAW``)."""
    for batch in batches:
        raw = [batch.column(name) for name, _, _ in RAW_COLUMNS] if "headers" in batch.schema.names else None
        ts = batch.column("timestamp").cast(pa.int64()).to_pylist()  # microseconds
        keys = [k.decode("utf-8", "replace") if k is not None else None for k in batch.column("key").to_pylist()]
        out = validate_records(keys, batch.column("value").to_pylist(), batch.column("partition").to_pylist(),
                               batch.column("offset").to_pylist(), ts)
        if raw is not None:
            not_duplicate = pa.array([False] * batch.num_rows, pa.bool_())
            out = pa.RecordBatch.from_arrays([*out.columns, *raw, not_duplicate],
                                             names=[*out.schema.names, *(n for _, n, _ in RAW_COLUMNS), "duplicate"])
        yield out


def _warm_up(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` function of ``start_workers``: the contract's example validated once, nothing out."""
    example = CDR.schema["examples"][0]
    value, received_us = json.dumps(example).encode(), round(parse_time(example["event_time"]) * 1e6)
    for batch in batches:
        for _ in range(batch.num_rows):
            validate_records(["warm-up"], [value], [0], [0], [received_us])
        yield pa.RecordBatch.from_pylist([], schema=pa.schema([("id", pa.int64())]))


def start_workers(spark, tasks: int) -> None:
    """Start ``tasks`` of the executors' Python workers, each with this module imported and the validator run
    once, and leave them idle for the first micro-batch's validation to reuse (Spark keeps a Python worker for the
    next Python task). A streaming job calls it beside its queries' start, whose first trigger spends seconds in
    one thread (the Kafka source's first offsets, planning, compiling the plan's code) while the other cores have
    nothing to do; otherwise the first batch's tasks would start the workers then, on cores the JIT is using."""
    spark.range(0, tasks, 1, tasks).mapInArrow(_warm_up, "id long").collect()
