"""How a scheduled departure is identified and timed: one implementation for every pipeline.

The feature pipeline derives the `flights` group's key and event time with these expressions, and
the inference services derive the same from request fields, so a prediction always joins back to
its flight and its outcome.
"""

from __future__ import annotations

import polars as pl

from shared.feature_definitions import NYC_TZ


def flight_id() -> pl.Expr:
    """date-carrier+number-origin-hhmm: the flights group's primary key, from request fields."""
    return pl.concat_str(
        [
            pl.col("flight_date").dt.strftime("%Y%m%d"),
            pl.lit("-"),
            pl.col("carrier"),
            pl.col("flight").cast(pl.String),
            pl.lit("-"),
            pl.col("origin"),
            pl.lit("-"),
            pl.col("sched_dep_time").cast(pl.String).str.zfill(4),
        ]
    ).alias("flight_id")


def sched_dep_utc() -> pl.Expr:
    """Local wall-clock departure -> UTC instant (null for times that do not exist locally)."""
    hhmm = pl.col("sched_dep_time").cast(pl.Int64)
    local = pl.col("flight_date").cast(pl.Datetime("us")) + pl.duration(
        hours=hhmm // 100, minutes=hhmm % 100
    )
    return (
        local.dt.replace_time_zone(NYC_TZ, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
        .alias("sched_dep_utc")
    )
