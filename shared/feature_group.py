"""Declarative feature group definitions.

A feature group is a versioned table of features keyed by a primary key and an event time. Its
pandera schema is the single source of its columns, dtypes, value checks and per-feature
descriptions: the feature pipeline validates against it, the store creates tables from it, and
the catalog documents it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

import pandera.polars as pa
import polars as pl

UTC_TIMESTAMP = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class FeatureGroup:
    name: str
    version: int
    primary_key: tuple[str, ...]
    event_time: str
    schema: pa.DataFrameSchema
    online: bool
    description: str
    # Columns stored offline (for lineage, labels, monitoring) but never served as features.
    non_features: tuple[str, ...] = field(default=())
    # An event group's online rows are read by time range rather than by primary key: each
    # index names columns (e.g. ``("origin",)``) whose rows the online store returns for an
    # event-time range, in time order (see `OnlineRangeLookup`). Empty: key lookups only.
    online_indexes: tuple[tuple[str, ...], ...] = field(default=())
    # An event group keeps online only the events within this of its newest one (None: all):
    # serving reads the last hours; older questions (as_of far back) go to the offline store.
    online_horizon: timedelta | None = None
    # How far behind a key's newest row the online store keeps the key's older rows, so that a
    # read as of a past instant T within it (a replay, an ``as_of`` request) is answered with
    # the row valid at T, as the offline join would. Zero: the newest row only.
    online_history: timedelta = timedelta(0)
    # Columns added to the group after its tables were created: nullable, never keys. A
    # stored table without them gains them on registration (old rows read null) instead of
    # being refused as a schema change: additive evolution, without a new group version.
    added_columns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        indexed = [c for index in self.online_indexes for c in index]
        missing = [
            c
            for c in (*self.primary_key, self.event_time, *indexed)
            if c not in self.schema.columns
        ]
        if missing:
            raise ValueError(f"feature group {self.name}: key columns {missing} not in its schema")
        keys = {*self.primary_key, self.event_time}
        wrong = [
            c
            for c in self.added_columns
            if c not in self.schema.columns or c in keys or not self.schema.columns[c].nullable
        ]
        if wrong:
            raise ValueError(
                f"feature group {self.name}: added columns {wrong} must be nullable, non-key "
                "columns of its schema"
            )

    @property
    def table_name(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def columns(self) -> list[str]:
        return list(self.schema.columns)

    @property
    def feature_names(self) -> list[str]:
        keys = {*self.primary_key, self.event_time, *self.non_features}
        return [c for c in self.schema.columns if c not in keys]

    @cached_property
    def polars_schema(self) -> pl.Schema:
        """Column -> Polars dtype (cached: the online request path asks for it per request)."""
        return pl.Schema({name: col.dtype.type for name, col in self.schema.columns.items()})

    def descriptions(self) -> dict[str, str]:
        return {name: col.description or "" for name, col in self.schema.columns.items()}

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Select the group's columns in order and cast them to its dtypes (no value checks)."""
        return frame.select(
            [pl.col(name).cast(dtype) for name, dtype in self.polars_schema.items()]
        )

    def conform_for_write(self, frame: pl.DataFrame, action: str) -> pl.DataFrame:
        """`conform`, refusing rows that share a primary key + event time (which one would a
        store keep?); ``action`` names the write in the error ("inserting", "appending")."""
        rows = self.conform(frame)
        keys = [*self.primary_key, self.event_time]
        duplicated = rows.select(keys).is_duplicated().sum()
        if duplicated:
            raise ValueError(
                f"{self.table_name}: {duplicated} rows share a primary key + event time; "
                f"deduplicate before {action}"
            )
        return rows

    def metadata(self) -> dict[str, Any]:
        """What the offline table remembers about its definition (stored in the Delta table)."""
        return {
            "name": self.name,
            "version": self.version,
            "primary_key": list(self.primary_key),
            "event_time": self.event_time,
            "online": self.online,
            "description": self.description,
            "columns": {n: str(t) for n, t in self.polars_schema.items()},
        }

    def metadata_json(self) -> str:
        return json.dumps(self.metadata(), sort_keys=True)


def schema_differences(stored: dict[str, Any], group: FeatureGroup) -> list[str]:
    """Human-readable differences between a stored definition and the code's definition (a
    missing ``added_columns`` column is none: see `columns_to_add`)."""
    wanted = group.metadata()
    diffs: list[str] = []
    for key in ("primary_key", "event_time"):
        if stored.get(key) != wanted[key]:
            diffs.append(f"{key}: stored {stored.get(key)!r}, defined {wanted[key]!r}")
    stored_cols: dict[str, str] = stored.get("columns", {})
    for name, dtype in wanted["columns"].items():
        if name not in stored_cols and name in group.added_columns:
            continue
        if name not in stored_cols:
            diffs.append(f"column {name!r} ({dtype}) is new")
        elif stored_cols[name] != dtype:
            diffs.append(f"column {name!r}: stored {stored_cols[name]}, defined {dtype}")
    diffs += [f"column {n!r} was removed" for n in stored_cols if n not in wanted["columns"]]
    return diffs


def columns_to_add(stored_columns: Iterable[str], group: FeatureGroup) -> list[str]:
    """The group's ``added_columns`` a stored table does not have yet, in schema order."""
    have = set(stored_columns)
    return [c for c in group.columns if c in group.added_columns and c not in have]
