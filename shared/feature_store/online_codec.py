"""Conversion between feature rows and the plain values online stores keep.

Timestamps are stored as integer microseconds (UTC) and dates as integer days, so every online
backend round-trips a row exactly, whatever its own type system.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import polars as pl

from shared.feature_group import FeatureGroup


def storable(group: FeatureGroup, frame: pl.DataFrame) -> pl.DataFrame:
    """The group's columns with temporal columns as integers."""
    out = group.conform(frame)
    casts = []
    for name, dtype in group.polars_schema.items():
        if isinstance(dtype, pl.Datetime):
            casts.append(pl.col(name).dt.epoch("us").alias(name))
        elif dtype == pl.Date:
            casts.append(pl.col(name).cast(pl.Int32).alias(name))
    return out.with_columns(casts) if casts else out


def storable_schema(group: FeatureGroup) -> pl.Schema:
    schema: dict[str, pl.DataType] = {}
    for name, dtype in group.polars_schema.items():
        if isinstance(dtype, pl.Datetime):
            schema[name] = pl.Int64()
        elif dtype == pl.Date:
            schema[name] = pl.Int32()
        else:
            schema[name] = dtype
    return pl.Schema(schema)


def from_storable(group: FeatureGroup, rows: Sequence[Sequence[Any]]) -> pl.DataFrame:
    """Rebuild typed rows (in the group's column order) from stored plain values."""
    frame = pl.DataFrame(rows, schema=storable_schema(group), orient="row")
    return frame.with_columns(
        pl.col(name).cast(dtype) for name, dtype in group.polars_schema.items()
    )


def align_to_keys(group: FeatureGroup, keys: pl.DataFrame, found: pl.DataFrame) -> pl.DataFrame:
    """Rows for ``keys`` in their order; a key the store does not hold gets nulls."""
    pk = list(group.primary_key)
    typed_keys = keys.select(pl.col(k).cast(group.polars_schema[k]) for k in pk)
    return typed_keys.join(found, on=pk, how="left", maintain_order="left", nulls_equal=False)


RowToDict = Callable[[Sequence[Any]], dict[str, Any]]


@lru_cache(maxsize=64)
def row_to_dict(columns: tuple[str, ...], skip: int = 0) -> RowToDict:
    """A function from a stored row (``skip`` leading values, then one per column) to
    ``{column: value}``, for rows whose layout the store's own SELECT fixes.

    Compiled from a dict display, as ``collections.namedtuple`` compiles its class: per row of
    a departure event it takes a third of ``dict(zip(columns, row[skip:], strict=True))``'s
    time (0.6 against 2.0 us), and an online read turns a few hundred such rows into dicts
    per batch of requests (benchmarks/fresh_features.py). The names are written as literals
    (``repr``), so no column name is ever code."""
    if not all(isinstance(c, str) for c in columns):
        raise TypeError(f"column names must be strings, not {columns!r}")
    items = ", ".join(f"{name!r}: row[{skip + i}]" for i, name in enumerate(columns))
    made: RowToDict = eval(f"lambda row: {{{items}}}", {})  # the names are literals only
    return made
