"""Flights: parsing and the model-independent transforms (MIT) of raw departures.

Produces the `flights` feature group: a stable flight id, the scheduled departure as a UTC
instant (the event time), the cancelled flag and the label (departure delayed > 15 minutes).
"""

from __future__ import annotations

import polars as pl

from feature_pipeline.extract import RAW_COLUMNS, raw_flight_date
from feature_pipeline.validate import RAW, parsed, raw, unparsed
from shared.feature_definitions import DELAY_THRESHOLD_MIN
from shared.flight_identity import flight_id, sched_dep_utc

FLIGHT_RAW_COLUMNS = list(RAW_COLUMNS["flights"])


def _number(column: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    return parsed(column, raw(column).cast(dtype, strict=False))


def _code(column: str) -> tuple[pl.Expr, pl.Expr]:
    """Codes are upper-cased; they cannot fail to parse."""
    return raw(column).str.to_uppercase(), pl.lit(None, pl.String)


def sched_dep_time() -> pl.Expr:
    """Local hhmm; a minute of 60 or more is not a time."""
    hhmm = raw("sched_dep_time").cast(pl.Int16, strict=False)
    return pl.when((hhmm % 100) < 60).then(hhmm).otherwise(None)


def is_cancelled() -> pl.Expr:
    return raw("dep_time").is_null()


def is_delayed() -> pl.Expr:
    """The label; unknown (null) for cancelled flights, which never departed."""
    return (
        pl.when(pl.col("is_cancelled"))
        .then(None)
        .otherwise((pl.col("dep_delay") > DELAY_THRESHOLD_MIN).cast(pl.Int8))
    )


def typed_flights(source: pl.DataFrame) -> pl.DataFrame:
    """Raw string rows -> raw__ columns + typed columns + parse errors + derived columns."""
    typed = unparsed(
        source,
        {
            "flight_date": parsed("day", raw_flight_date(prefix=RAW)),
            "sched_dep_time": parsed("sched_dep_time", sched_dep_time()),
            "flight": _number("flight", pl.Int32()),
            "distance": _number("distance", pl.Int16()),
            "dep_delay": _number("dep_delay", pl.Float32()),
            "dep_time": _number("dep_time", pl.Int16()),
            "carrier": _code("carrier"),
            "tailnum": _code("tailnum"),
            "origin": _code("origin"),
            "dest": _code("dest"),
        },
    )
    return typed.with_columns(
        sched_dep_utc(),
        flight_id(),
        is_cancelled().alias("is_cancelled"),
    ).with_columns(is_delayed().alias("is_delayed"))
