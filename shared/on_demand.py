"""On-demand features: computed from the flight request itself, at training and at serving time.

This is the ONE implementation: the training pipeline, the batch job and the online service all
call :func:`on_demand_features` on a frame holding the request fields, so the same flight always
gets the same values. Every feature is a pure Polars expression of

- ``flight_date`` (Date, local New York day of the scheduled departure),
- ``sched_dep_time`` (integer local ``hhmm``),
- the plane's ``year_built`` (nullable: unknown tail numbers get null, imputed later by the MDT).

Nothing here reads a clock, a store or a random source.
"""

from __future__ import annotations

import math

import polars as pl

# Request fields the expressions read. The plane's build year arrives from the `planes` feature
# group under the feature view's prefix; callers with another name pass it explicitly.
FLIGHT_DATE = "flight_date"
SCHED_DEP_TIME = "sched_dep_time"
PLANE_YEAR_BUILT = "plane_year_built"


def sched_hour() -> pl.Expr:
    """Local hour of the scheduled departure, 0-23."""
    return (pl.col(SCHED_DEP_TIME).cast(pl.Int32) // 100).cast(pl.Int8).alias("sched_hour")


def sched_minute_of_day() -> pl.Expr:
    """Minutes after local midnight of the scheduled departure (the finer-grained hour)."""
    hhmm = pl.col(SCHED_DEP_TIME).cast(pl.Int32)
    return ((hhmm // 100) * 60 + hhmm % 100).cast(pl.Int16).alias("sched_minute_of_day")


def weekday() -> pl.Expr:
    """ISO weekday of the local departure day: Monday = 1 ... Sunday = 7."""
    return pl.col(FLIGHT_DATE).dt.weekday().cast(pl.Int8).alias("weekday")


def month() -> pl.Expr:
    return pl.col(FLIGHT_DATE).dt.month().cast(pl.Int8).alias("month")


def day_of_year() -> pl.Expr:
    return pl.col(FLIGHT_DATE).dt.ordinal_day().cast(pl.Int16).alias("day_of_year")


def is_weekend() -> pl.Expr:
    return (pl.col(FLIGHT_DATE).dt.weekday() >= 6).cast(pl.Int8).alias("is_weekend")


def _cyclic(value: pl.Expr, period: float, name: str) -> list[pl.Expr]:
    """Sine/cosine pair so 23:59 sits next to 00:00 and 31 Dec next to 1 Jan."""
    angle = value.cast(pl.Float64) * (2.0 * math.pi / period)
    return [
        angle.sin().cast(pl.Float32).alias(f"{name}_sin"),
        angle.cos().cast(pl.Float32).alias(f"{name}_cos"),
    ]


def time_of_day_cycle() -> list[pl.Expr]:
    hhmm = pl.col(SCHED_DEP_TIME).cast(pl.Int32)
    return _cyclic((hhmm // 100) * 60 + hhmm % 100, 24 * 60, "time_of_day")


def season_cycle() -> list[pl.Expr]:
    return _cyclic(pl.col(FLIGHT_DATE).dt.ordinal_day(), 365.25, "season")


def plane_age_years(year_built: str = PLANE_YEAR_BUILT) -> pl.Expr:
    """Age of the aircraft in the year of the flight (null when the plane is unknown)."""
    age = pl.col(FLIGHT_DATE).dt.year().cast(pl.Int16) - pl.col(year_built).cast(pl.Int16)
    return age.clip(lower_bound=0).cast(pl.Float32).alias("plane_age_years")


def on_demand_features(year_built: str = PLANE_YEAR_BUILT) -> list[pl.Expr]:
    """Every on-demand feature, in a fixed order (names in :data:`ON_DEMAND_FEATURES`)."""
    return [
        sched_hour(),
        sched_minute_of_day(),
        weekday(),
        month(),
        day_of_year(),
        is_weekend(),
        *time_of_day_cycle(),
        *season_cycle(),
        plane_age_years(year_built),
    ]


ON_DEMAND_FEATURES: tuple[str, ...] = (
    "sched_hour",
    "sched_minute_of_day",
    "weekday",
    "month",
    "day_of_year",
    "is_weekend",
    "time_of_day_sin",
    "time_of_day_cos",
    "season_sin",
    "season_cos",
    "plane_age_years",
)

# The fields a request must carry for the expressions above.
REQUEST_FIELDS: tuple[str, ...] = (FLIGHT_DATE, SCHED_DEP_TIME)


def with_on_demand_features(
    frame: pl.DataFrame, year_built: str = PLANE_YEAR_BUILT
) -> pl.DataFrame:
    """``frame`` plus the on-demand features (a null plane year gives a null plane age)."""
    if year_built not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int16).alias(year_built))
    return frame.with_columns(on_demand_features(year_built))
