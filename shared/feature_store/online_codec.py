"""Conversion between feature rows and the plain values online stores keep.

Timestamps are stored as integer microseconds (UTC) and dates as integer days, so every online
backend round-trips a row exactly, whatever its own type system.
"""

from __future__ import annotations

from collections.abc import Sequence
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
