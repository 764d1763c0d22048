"""Route and carrier statistics: rolling 7- and 28-day delay rate, mean delay, volume and
cancellation rate, valid from local midnight of each day and computed from days *strictly before*
it (the day itself is never included: its flights have not all happened at midnight).
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from shared.feature_definitions import NYC_TZ, ROLLING_WINDOWS_DAYS

LOOKBACK_DAYS = max(ROLLING_WINDOWS_DAYS)
_COUNTS = ("flights", "cancelled", "delayed", "departed", "delay_sum", "delay_n")


def daily_outcomes(flights: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """One row per key and local day with the counts the rolling statistics add up."""
    return flights.group_by([*keys, "flight_date"]).agg(
        pl.len().cast(pl.Int32).alias("flights"),
        pl.col("is_cancelled").sum().cast(pl.Int32).alias("cancelled"),
        pl.col("is_delayed").sum().cast(pl.Int32).alias("delayed"),
        pl.col("is_delayed").count().cast(pl.Int32).alias("departed"),
        pl.col("dep_delay").cast(pl.Float64).sum().alias("delay_sum"),
        pl.col("dep_delay").count().cast(pl.Int32).alias("delay_n"),
    )


def _dense_calendar(daily: pl.DataFrame, keys: list[str], first: date, last: date) -> pl.DataFrame:
    """Every key x every day in [first, last]: a day without flights counts as zero."""
    days = pl.DataFrame({"flight_date": pl.date_range(first, last, "1d", eager=True)})
    grid = daily.select(keys).unique().join(days, how="cross")
    return (
        grid.join(daily, on=[*keys, "flight_date"], how="left")
        .with_columns(pl.col(c).fill_null(0) for c in _COUNTS)
        .sort([*keys, "flight_date"])
    )


def _before(column: str, days: int, keys: list[str]) -> pl.Expr:
    """Sum of ``column`` over the ``days`` days strictly before each row's day."""
    return pl.col(column).shift(1).rolling_sum(days, min_samples=1).over(keys)


def _ratio(numerator: str, denominator: str) -> pl.Expr:
    return (
        pl.when(pl.col(denominator) > 0)
        .then(pl.col(numerator) / pl.col(denominator))
        .otherwise(None)
    ).cast(pl.Float32)


def local_midnight_utc(day: pl.Expr) -> pl.Expr:
    return day.cast(pl.Datetime("us")).dt.replace_time_zone(NYC_TZ).dt.convert_time_zone("UTC")


def rolling_stats(flights: pl.DataFrame, keys: list[str], first: date, last: date) -> pl.DataFrame:
    """Statistics valid for each day in [first, last] per key.

    ``flights`` must cover at least the LOOKBACK_DAYS before ``first``; a key with no departure
    in the longest window is left out (it has nothing to say).
    """
    daily = daily_outcomes(flights, keys)
    if daily.is_empty():
        return pl.DataFrame()
    dense = _dense_calendar(daily, keys, first - timedelta(days=LOOKBACK_DAYS), last)
    windows = []
    for days in ROLLING_WINDOWS_DAYS:
        sums = {c: _before(c, days, keys).alias(f"{c}_{days}") for c in _COUNTS}
        windows.append(sums)
    dense = dense.with_columns(e for sums in windows for e in sums.values())
    stats = []
    for days in ROLLING_WINDOWS_DAYS:
        stats += [
            pl.col(f"flights_{days}").fill_null(0).cast(pl.Int32).alias(f"flights_{days}d"),
            _ratio(f"delayed_{days}", f"departed_{days}").alias(f"delay_rate_{days}d"),
            _ratio(f"delay_sum_{days}", f"delay_n_{days}").alias(f"mean_dep_delay_{days}d"),
            _ratio(f"cancelled_{days}", f"flights_{days}").alias(f"cancel_rate_{days}d"),
        ]
    longest = f"flights_{LOOKBACK_DAYS}d"
    return (
        dense.filter(pl.col("flight_date").is_between(first, last))
        .select(
            *keys,
            local_midnight_utc(pl.col("flight_date")).alias("valid_from"),
            pl.col("flight_date").alias("day"),
            *stats,
        )
        .filter(pl.col(longest) > 0)
    )
