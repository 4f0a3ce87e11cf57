"""Customer profiles from the operator's own extracts: mapped, validated, kept as a history, served by Feast.

``churn profiles load FILE --mapping MAP`` reads a CSV or Parquet extract, maps
its columns onto the ``customer_profile`` contract (``schemas/customer_profile.schema.json``)
with a small TOML file (format: ``feature_repo/mappings/README.md``), validates each
row with the contract and

* reports each invalid row with its reason and appends it, with the reason, to the
  lake table ``profile_quarantine``;
* appends each valid row, a version of a customer's profile, to ``profile_history``
  (Delta, append-only, keyed by ``customer_id`` + ``updated_at``: a version already
  there is skipped), as the feature columns of Feast's ``customer_profile`` view;
* materializes the newest version of every customer into the online store.

Every version is kept: training joins the profile as it was at the observation
time (``get_historical_features`` over the history, timestamp ``updated_at``), so
a later plan change cannot leak into an earlier training row.

>>> m = Mapping.from_dict({"columns": {"customer_id": "ID", "has_partner": "P"},
...                        "defaults": {"updated_at": "2026-01-01T00:00:00Z"},
...                        "booleans": {"true": ["Y"], "false": ["N"]}})
>>> m.record({"ID": "c1", "P": "Y"})
{'customer_id': 'c1', 'has_partner': True, 'updated_at': '2026-01-01T00:00:00Z'}
>>> CUSTOMER_PROFILE.validate(m.record({"ID": "c1", "P": "maybe"})).reason
'wrong_type:has_partner'
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from churn import storage
from churn.config import PROJECT_ROOT, Settings
from churn.contracts import CUSTOMER_PROFILE, _types_of, format_time, parse_time
from churn.lake import LakePaths

MAPPINGS_DIR = PROJECT_ROOT / "feature_repo" / "mappings"
#: The bundled IBM Telco sample's mapping: what ``churn features apply`` loads by default.
TELCO_MAPPING = MAPPINGS_DIR / "telco.toml"

FIELDS = CUSTOMER_PROFILE.fields
_KIND = {name: [t for t in _types_of(spec) if t != "null"][0] for name, spec in FIELDS.items()}
BOOLEAN_FIELDS = [n for n, k in _KIND.items() if k == "boolean"]

#: The history's columns: the key, the feature columns of Feast's ``customer_profile`` view (booleans as
#: 0/1, dates as YYYY-MM-DD text), and where each version came from. Explicit, so every load's file has the
#: same schema whatever it leaves null.
_ARROW = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.int64()}
FEATURE_COLUMNS = [n for n in FIELDS if n not in ("customer_id", "updated_at")]
HISTORY_SCHEMA = pa.schema(
    [pa.field("customer_id", pa.string(), nullable=False),
     pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False)]
    + [pa.field(n, _ARROW[_KIND[n]]) for n in FEATURE_COLUMNS]
    + [pa.field("source", pa.string()), pa.field("loaded_at", pa.timestamp("us", tz="UTC"))])
QUARANTINE_SCHEMA = pa.schema([
    pa.field("loaded_at", pa.timestamp("us", tz="UTC")), pa.field("source", pa.string()),
    pa.field("row", pa.int64()), pa.field("customer_id", pa.string()), pa.field("reason", pa.string()),
    pa.field("detail", pa.string()), pa.field("record", pa.string())])


class MappingError(ValueError):
    """The mapping file, or the extract's columns, do not fit: nothing is loaded."""


def history_path(settings: Settings) -> str:
    return LakePaths.of(settings).profile_history


def quarantine_path(settings: Settings) -> str:
    return LakePaths.of(settings).profile_quarantine


def telco_table(settings: Settings) -> Path | None:
    """The IBM Telco-format table the simulator, the bootstrap and ``batch telco-cv`` read (they need its
    columns, ``Churn`` included): ``profiles.source`` when it is read with the Telco mapping, else None
    (the bundled sample)."""
    p = settings.profiles
    if p.source is not None and (p.mapping is None or Path(p.mapping).resolve() == TELCO_MAPPING.resolve()):
        return Path(p.source)
    return None


def _text(value: Any) -> str:
    """A source value as the text value maps are keyed by (1.0 -> "1")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


@dataclass
class Mapping:
    """How an extract's columns become contract fields (``feature_repo/mappings/README.md``)."""

    columns: dict[str, str]
    defaults: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    booleans: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=lambda: [""])

    @classmethod
    def load(cls, path: Path) -> "Mapping":
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise MappingError(f"cannot read mapping {path}: {exc}") from exc
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, name: str = "mapping") -> "Mapping":
        unknown = set(raw) - {"columns", "defaults", "values", "booleans", "missing"}
        if unknown:
            raise MappingError(f"{name}: unknown section(s) {', '.join(sorted(unknown))}")
        m = cls(columns=dict(raw.get("columns", {})), defaults=dict(raw.get("defaults", {})),
                values={k: {str(a): b for a, b in v.items()} for k, v in raw.get("values", {}).items()},
                booleans={k: [str(x) for x in v] for k, v in raw.get("booleans", {}).items()},
                missing=[str(x) for x in raw.get("missing", [""])])
        for section in ("columns", "defaults", "values"):
            bad = set(getattr(m, section)) - set(FIELDS)
            if bad:
                raise MappingError(f"{name}: [{section}] names no field of customer_profile: {', '.join(sorted(bad))} "
                                   f"(fields: {', '.join(FIELDS)})")
        if set(m.booleans) - {"true", "false"}:
            raise MappingError(f"{name}: [booleans] takes only true = [...] and false = [...]")
        for needed in ("customer_id", "updated_at"):
            if needed not in m.columns and needed not in m.defaults:
                raise MappingError(f"{name}: {needed} is required: map a column to it (or give a default)")
        if "customer_id" not in m.columns:
            raise MappingError(f"{name}: customer_id must come from a column")
        return m

    def __post_init__(self):
        self._boolean = {**{t: True for t in self.booleans.get("true", [])},
                         **{t: False for t in self.booleans.get("false", [])}}
        self._missing = set(self.missing)

    def check_columns(self, available: Iterable[str], name: str = "the extract") -> None:
        lacking = sorted(set(self.columns.values()) - set(available))
        if lacking:
            raise MappingError(f"{name} lacks the mapped column(s) {', '.join(lacking)}")

    def record(self, row: dict) -> dict:
        """One row of the extract (column -> value) as a contract record (unknown fields left out)."""
        out: dict[str, Any] = {}
        for name, column in self.columns.items():
            value = self._value(name, row.get(column))
            if value is not None:
                out[name] = value
        for name, value in self.defaults.items():
            if out.get(name) is None:
                out[name] = value
        return out

    def _value(self, name: str, value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if _missing(value) or (isinstance(value, str) and (value in self._missing or value.strip() in self._missing)):
            return None
        kind = _KIND[name]
        if not isinstance(value, (datetime, date)):
            mapped = self.values.get(name)
            if mapped is not None:
                key = _text(value)
                return mapped.get(key, mapped.get(key.strip(), value))
            if kind == "boolean" and not isinstance(value, bool):
                key = _text(value).strip()
                if key in self._boolean:
                    return self._boolean[key]
                return {"true": True, "false": False}.get(key.lower(), value)
        return _as_kind(name, kind, value)


def _as_kind(name: str, kind: str, value: Any) -> Any:
    """``value`` as the field's JSON type where it plainly is one (text "12.5" -> 12.5); else as it is,
    for the contract to say what is wrong."""
    fmt = FIELDS[name].get("format")
    if isinstance(value, datetime):
        if fmt == "date":
            return value.date().isoformat()
        stamp = value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # a naive timestamp is UTC
        return format_time(stamp.timestamp())
    if isinstance(value, date):
        return value.isoformat() if fmt == "date" else format_time(
            datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp())
    if kind == "string":
        return value.strip() if isinstance(value, str) else (value if isinstance(value, bool) else _text(value))
    if kind in ("number", "integer") and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return int(number) if kind == "integer" and number.is_integer() else number
    return value


def read_extract(path: Path) -> pd.DataFrame:
    """A CSV (cells as text) or Parquet (typed) extract."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def months_between(start: date, end: date) -> int:
    """Whole months from ``start`` to ``end`` (0 if ``end`` is before ``start``).

    >>> months_between(date(2026, 1, 31), date(2026, 2, 28)), months_between(date(2026, 1, 15), date(2027, 1, 15))
    (0, 12)
    """
    months = (end.year - start.year) * 12 + end.month - start.month - (end.day < start.day)
    return max(months, 0)


def history_table(records: list[dict], source: str, loaded_at: datetime) -> pa.Table:
    """Valid contract records as history rows (``HISTORY_SCHEMA``): booleans 0/1, ``tenure_months`` from
    ``activation_date`` where not given."""
    cols: dict[str, list] = {n: [] for n in HISTORY_SCHEMA.names}
    for r in records:
        updated = datetime.fromtimestamp(parse_time(r["updated_at"]), tz=timezone.utc)
        row = {n: r.get(n) for n in FEATURE_COLUMNS}
        for n in BOOLEAN_FIELDS:
            if row[n] is not None:
                row[n] = int(row[n])
        if row["tenure_months"] is None and row["activation_date"] is not None:
            row["tenure_months"] = months_between(date.fromisoformat(row["activation_date"]), updated.date())
        for n in ("tenure_months",):
            if row[n] is not None:
                row[n] = int(row[n])
        row.update(customer_id=r["customer_id"], updated_at=updated, source=source, loaded_at=loaded_at)
        for n in cols:
            cols[n].append(row[n])
    return pa.table(cols, schema=HISTORY_SCHEMA)


@dataclass
class Invalid:
    row: int  # 1-based data row of the extract (the CSV's line is row + 1, after the header)
    customer_id: str | None
    reason: str
    detail: str
    record: dict


@dataclass
class Extract:
    """An extract mapped and validated: its valid records and its invalid rows."""

    source: str
    rows: int
    valid: list[dict]
    invalid: list[Invalid]


def map_and_validate(path: Path, mapping: Mapping, now: float | None = None) -> Extract:
    frame = read_extract(path)
    mapping.check_columns(frame.columns, str(path))
    valid, invalid = [], []
    for i, row in enumerate(frame.to_dict("records"), 1):
        record = mapping.record(row)
        bad = CUSTOMER_PROFILE.validate(record, now=now)
        if bad is None:
            valid.append(record)
        else:
            cid = record.get("customer_id")
            invalid.append(Invalid(i, cid if isinstance(cid, str) else None, bad.reason, bad.detail, record))
    return Extract(source=str(path), rows=len(frame), valid=valid, invalid=invalid)


def profile_frame(path: Path | None = None, mapping: Path | None = None) -> pd.DataFrame:
    """An extract's valid rows as profile features (the history's columns, without where they came from):
    by default the bundled IBM Telco sample with its mapping."""
    from churn.simulator.population import telco_csv_path

    extract = map_and_validate(path or telco_csv_path(), Mapping.load(mapping or TELCO_MAPPING))
    table = history_table(extract.valid, extract.source, datetime.now(timezone.utc))
    return table.drop_columns(["source", "loaded_at"]).to_pandas()


@dataclass
class LoadReport:
    source: str
    rows: int  # rows in the extract
    loaded: int  # new versions appended to the history
    already_loaded: int  # versions (customer_id, updated_at) the history held already, or repeated in the extract
    invalid: list[Invalid]
    history_rows: int  # versions in the history after the load
    customers: int  # customers in the history after the load
    materialized: bool

    @property
    def reasons(self) -> Counter:
        return Counter(bad.reason for bad in self.invalid)


def _history_keys(settings: Settings, path: str) -> set[tuple[str, int]]:
    if not storage.is_delta_table(settings, path):
        return set()
    t = storage.open_delta(settings, path).to_pyarrow_table(columns=["customer_id", "updated_at"])
    stamps = t.column("updated_at").cast(pa.int64()).to_pylist()
    return set(zip(t.column("customer_id").to_pylist(), stamps))


def _write_quarantine(settings: Settings, extract: Extract, loaded_at: datetime) -> None:
    import orjson

    if not extract.invalid:
        return
    rows = {"loaded_at": [loaded_at] * len(extract.invalid), "source": [extract.source] * len(extract.invalid),
            "row": [b.row for b in extract.invalid], "customer_id": [b.customer_id for b in extract.invalid],
            "reason": [b.reason for b in extract.invalid], "detail": [b.detail for b in extract.invalid],
            "record": [orjson.dumps(b.record, default=str).decode() for b in extract.invalid]}
    storage.write_delta(settings, quarantine_path(settings), pa.table(rows, schema=QUARANTINE_SCHEMA), mode="append")


def _append_new_versions(settings: Settings, table: pa.Table) -> tuple[pa.Table, set[tuple[str, int]]]:
    """Append the versions of ``table`` (``HISTORY_SCHEMA``) the history does not hold yet (by ``customer_id``
    and ``updated_at``; the first of repeats): returns what was appended and every key held afterwards."""

    target = history_path(settings)
    seen = _history_keys(settings, target)
    keys = zip(table.column("customer_id").to_pylist(), table.column("updated_at").cast(pa.int64()).to_pylist())
    new = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            new.append(i)
    table = table.take(pa.array(new, type=pa.int64()))
    if table.num_rows:
        storage.write_delta(settings, target, table, mode="append")
    ensure_history(settings)
    return table, seen


def load(settings: Settings, path: Path, mapping: Path | None = None, fs=None, materialize: bool = True,
         now: float | None = None) -> LoadReport:
    """Load an extract (``mapping``: default the Telco one): quarantine the invalid rows, append the new
    valid versions to the history, then (``materialize``) put every customer's newest version online
    through ``fs`` (default: the settings' store, with the definitions applied)."""
    loaded_at = datetime.now(timezone.utc)
    extract = map_and_validate(path, Mapping.load(mapping or TELCO_MAPPING), now=now)
    _write_quarantine(settings, extract, loaded_at)
    table, seen = _append_new_versions(settings, history_table(extract.valid, extract.source, loaded_at))
    if materialize:
        materialize_profiles(settings, fs)
    return LoadReport(source=extract.source, rows=extract.rows, loaded=table.num_rows,
                      already_loaded=len(extract.valid) - table.num_rows, invalid=extract.invalid,
                      history_rows=len(seen), customers=len({c for c, _ in seen}), materialized=materialize)


@dataclass
class TopicBatch:
    """What one batch of ``customer-profiles`` upserts did."""

    messages: int
    loaded: int  # new versions appended to the history (and written online)
    already_loaded: int  # versions the history held already (a batch replayed after a restart)
    invalid: list[Invalid]  # ``row`` is the message's offset, ``record`` its partition, offset and value


def ingest_upserts(settings: Settings, topic: str, messages: Iterable[tuple[int, int, bytes | None]], fs,
                   now: float | None = None) -> TopicBatch:
    """Upserts from the ``customer-profiles`` topic, ``(partition, offset, value)`` each, as ``load`` does
    an extract's rows: each validated with the contract; the invalid quarantined (``profile_quarantine``,
    source ``<topic>/<partition>``, row = offset; once, even when a batch is replayed) and returned for
    the dead-letter topic; the new valid versions appended to the history (idempotent by key) and
    written to the online store through ``fs``, which keeps each customer's newest version.
    Returns what happened."""
    loaded_at = datetime.now(timezone.utc)
    valid, invalid, count = [], [], 0
    for partition, offset, value in messages:
        count += 1
        record, bad = CUSTOMER_PROFILE.parse(value if value is not None else b"", now=now)
        if bad is None:
            valid.append(record)
            continue
        raw = (value or b"").decode("utf-8", errors="replace")
        invalid.append(Invalid(int(offset), _customer_of(raw), bad.reason, bad.detail,
                               {"partition": int(partition), "offset": int(offset), "value": raw}))
    _quarantine_once(settings, topic, invalid, loaded_at)
    table, _ = _append_new_versions(settings, history_table(valid, topic, loaded_at))
    if table.num_rows:
        fs.write_to_online_store("customer_profile", table.drop_columns(["source", "loaded_at"]).to_pandas())
    return TopicBatch(messages=count, loaded=table.num_rows, already_loaded=len(valid) - table.num_rows,
                      invalid=invalid)


def _customer_of(raw: str) -> str | None:
    import orjson

    try:
        cid = orjson.loads(raw).get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return cid if isinstance(cid, str) else None


def _quarantine_once(settings: Settings, topic: str, invalid: list[Invalid], loaded_at: datetime) -> None:
    """Quarantine messages of ``topic`` not quarantined before (a replayed batch brings them again)."""

    if not invalid:
        return
    path = quarantine_path(settings)
    held = set()
    if storage.is_delta_table(settings, path):
        t = storage.open_delta(settings, path).to_pyarrow_table(columns=["source", "row"])
        held = set(zip(t.column("source").to_pylist(), t.column("row").to_pylist()))
    by_source: dict[str, list[Invalid]] = {}
    for bad in invalid:
        source = f"{topic}/{bad.record['partition']}"
        if (source, bad.row) not in held:
            by_source.setdefault(source, []).append(bad)
    for source, rows in by_source.items():
        _write_quarantine(settings, Extract(source=source, rows=len(rows), valid=[], invalid=rows), loaded_at)


def ensure_history(settings: Settings) -> None:
    """Create the (empty) profile history if there is none: Feast's profile source must exist."""

    target = history_path(settings)
    if not storage.is_delta_table(settings, target):
        storage.write_delta(settings, target, HISTORY_SCHEMA.empty_table(), mode="append")


def materialize_profiles(settings: Settings, fs=None) -> None:
    """Every customer's newest profile version (up to now) into the online store."""
    from churn.feature_store import ensure_applied, store

    if fs is None:
        ensure_applied(settings, load_profiles=False)
        fs = store(settings)
    fs.materialize(start_date=datetime(1970, 1, 2, tzinfo=timezone.utc), end_date=datetime.now(timezone.utc),
                   feature_views=["customer_profile"])


def history(settings: Settings) -> pd.DataFrame:
    """The whole profile history (every version of every customer)."""

    return storage.open_delta(settings, history_path(settings)).to_pandas()


def as_of(settings: Settings, at_s: float) -> pd.DataFrame:
    """Each customer's profile version in force at ``at_s`` (the newest with ``updated_at <= at_s``): the
    history's key and feature columns, typed as the history types them (empty if there is no history)."""
    columns = ["customer_id", *FEATURE_COLUMNS]
    path = history_path(settings)
    if not storage.is_delta_table(settings, path):
        return HISTORY_SCHEMA.empty_table().select(columns).to_pandas()
    t = storage.open_delta(settings, path).to_pyarrow_table(columns=["updated_at", *columns])
    frame = t.to_pandas()
    frame = frame[frame["updated_at"] <= pd.Timestamp(at_s, unit="s", tz="UTC")]
    return frame.sort_values("updated_at").drop_duplicates("customer_id", keep="last")[columns].reset_index(drop=True)


def quarantined(settings: Settings) -> pd.DataFrame:
    """Every row a load rejected, with its reason."""
    if not storage.is_delta_table(settings, quarantine_path(settings)):
        return pd.DataFrame(columns=QUARANTINE_SCHEMA.names)
    return storage.open_delta(settings, quarantine_path(settings)).to_pandas()
