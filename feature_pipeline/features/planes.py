"""Planes: static aircraft attributes, valid from the epoch (they do not change in the data)."""

from __future__ import annotations

import polars as pl

from feature_pipeline.extract import RAW_COLUMNS
from feature_pipeline.validate import parsed, raw, unparsed
from shared.feature_definitions import PLANES_VALID_FROM

PLANE_RAW_COLUMNS = list(RAW_COLUMNS["planes"])


def typed_planes(source: pl.DataFrame) -> pl.DataFrame:
    return unparsed(
        source,
        {
            "tailnum": (raw("tailnum").str.to_uppercase(), pl.lit(None, pl.String)),
            "year_built": parsed("year", raw("year").cast(pl.Int16, strict=False)),
            "seats": parsed("seats", raw("seats").cast(pl.Int16, strict=False)),
            "engines": parsed("engines", raw("engines").cast(pl.Int8, strict=False)),
            "plane_type": (raw("type"), pl.lit(None, pl.String)),
            "manufacturer": (raw("manufacturer"), pl.lit(None, pl.String)),
            "engine": (raw("engine"), pl.lit(None, pl.String)),
            "valid_from": (
                pl.lit(PLANES_VALID_FROM).cast(pl.Datetime("us", "UTC")),
                pl.lit(None, pl.String),
            ),
        },
    )
