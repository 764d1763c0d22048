"""Airport weather: hourly observations per NYC origin airport, typed as the group wants."""

from __future__ import annotations

import polars as pl

from feature_pipeline.extract import RAW_COLUMNS, raw_observed_at
from feature_pipeline.validate import RAW, parsed, raw, unparsed

WEATHER_RAW_COLUMNS = list(RAW_COLUMNS["weather"])
MEASUREMENTS = tuple(c for c in WEATHER_RAW_COLUMNS if c not in ("origin", "time_hour"))


def typed_weather(source: pl.DataFrame) -> pl.DataFrame:
    columns = {
        name: parsed(name, raw(name).cast(pl.Float32, strict=False)) for name in MEASUREMENTS
    }
    columns["observed_at"] = parsed("time_hour", raw_observed_at(prefix=RAW))
    columns["origin"] = (raw("origin").str.to_uppercase(), pl.lit(None, pl.String))
    return unparsed(source, columns)
