"""How a scheduled departure is identified and timed: one implementation for every pipeline.

The feature pipeline derives the `flights` group's key and event time with these expressions, and
the inference services derive the same from request fields, so a prediction always joins back to
its flight and its outcome.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

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


def flight_id_of(
    flight_date: date, carrier: str, flight: int, origin: str, sched_dep_time: int
) -> str:
    """:func:`flight_id` for one request, without a frame (the online request path); a test
    checks it against the expression on every flight of the year."""
    # The date's fields, not strftime: 0.9 against 2.3 us, once per flight of every request.
    d = flight_date
    return f"{d.year:04d}{d.month:02d}{d.day:02d}-{carrier}{flight}-{origin}-{sched_dep_time:04d}"


def sched_dep_utc_of(flight_date: date, sched_dep_time: int) -> datetime | None:
    """:func:`sched_dep_utc` for one flight, without a frame: clients and scripts that send
    ``as_of = departure - lead`` for past flights compute the departure with it (a test checks
    it against the expression). None for a local time that does not exist (the DST gap)."""
    local = datetime.combine(
        flight_date, time(sched_dep_time // 100, sched_dep_time % 100), ZoneInfo(NYC_TZ)
    )  # fold=0: the earlier of an ambiguous time, as ``ambiguous="earliest"``
    instant = local.astimezone(UTC)
    if instant.astimezone(ZoneInfo(NYC_TZ)).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None  # the wall-clock time was skipped (spring forward)
    return instant


def as_of_before_departure(flight_date: date, sched_dep_time: int, lead_minutes: int) -> datetime:
    """The prediction time T a model trained at ``lead_minutes`` was trained for: the scheduled
    departure minus the lead, as the ``as_of`` of a replayed request (ISO 8601 with its offset
    via ``isoformat()``)."""
    departure = sched_dep_utc_of(flight_date, sched_dep_time)
    if departure is None:
        raise ValueError(f"{flight_date} {sched_dep_time:04d} does not exist in New York")
    return departure - timedelta(minutes=lead_minutes)


def local_day_start_utc(day: date) -> datetime:
    """The UTC instant of local (New York) midnight starting ``day``."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(NYC_TZ)).astimezone(UTC)
