"""Compress: the group's tight dtypes (Int8/Int16/Float32...), exact duplicates removed.

Low-cardinality codes (carrier, origin, dest) are written as strings: Delta Lake has no dictionary
type, and Parquet dictionary-encodes them on disk anyway.
"""

from __future__ import annotations

import polars as pl

from shared.feature_group import FeatureGroup


def compress(group: FeatureGroup, rows: pl.DataFrame) -> pl.DataFrame:
    return group.conform(rows).unique(maintain_order=True)
