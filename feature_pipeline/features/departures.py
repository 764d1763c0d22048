"""Departure events and the schedule: the inputs of the fresh window features.

A departure event is a flight's outcome as it happens: its actual departure (event time: the
actual instant) or its cancellation (event time: the scheduled instant). The stream decodes them
from the broker; history derives them from the flights group (actual departure = scheduled +
dep_delay). Both then go through :func:`departure_event_rows`, the one function that checks an
event and makes the ``departure_events`` rows, so a day replayed through the stream writes
exactly the rows the batch run writes for it.
"""

from __future__ import annotations

import polars as pl

from shared.feature_definitions import (
    DEPARTURE_EVENTS,
    DEPARTURE_SCHEDULE,
    MAX_EARLY_DEPARTURE,
    NYC_ORIGINS,
)
from shared.feature_group import UTC_TIMESTAMP

DEPARTURE = "departure"
CANCELLATION = "cancellation"
# A departure's stated delay and its two instants may disagree by rounding, never by more.
_DELAY_SLACK_S = 1.0
_MAX_DELAY_MIN = 1800.0

# The typed form of an event, whichever side it comes from.
EVENT_COLUMNS: dict[str, pl.DataType] = {
    "type": pl.String(),
    "flight_id": pl.String(),
    "origin": pl.String(),
    "carrier": pl.String(),
    "tailnum": pl.String(),
    "sched_dep": UTC_TIMESTAMP,
    "actual_dep": UTC_TIMESTAMP,
    "dep_delay": pl.Float64(),
}


def events_from_flights(flights: pl.DataFrame) -> pl.DataFrame:
    """History: each flights-group row as the event it was (actual = scheduled + delay)."""
    delay_us = (pl.col("dep_delay").cast(pl.Float64) * 60_000_000).round().cast(pl.Int64)
    return flights.select(
        pl.when(pl.col("is_cancelled"))
        .then(pl.lit(CANCELLATION))
        .otherwise(pl.lit(DEPARTURE))
        .alias("type"),
        pl.col("flight_id"),
        pl.col("origin"),
        pl.col("carrier"),
        pl.col("tailnum"),
        pl.col("sched_dep_utc").alias("sched_dep"),
        pl.when(pl.col("is_cancelled"))
        .then(None)
        .otherwise(pl.col("sched_dep_utc") + pl.duration(microseconds=delay_us))
        .alias("actual_dep"),
        pl.when(pl.col("is_cancelled"))
        .then(None)
        .otherwise(pl.col("dep_delay").cast(pl.Float64))
        .alias("dep_delay"),
    ).cast(EVENT_COLUMNS)  # type: ignore[arg-type]


def event_rules() -> pl.Expr:
    """Per event, every rule it breaks (an empty list: a valid event)."""
    departure = pl.col("type") == DEPARTURE
    stated = pl.col("dep_delay") * 60.0
    measured = (pl.col("actual_dep") - pl.col("sched_dep")).dt.total_microseconds() / 1e6
    early = -MAX_EARLY_DEPARTURE.total_seconds() / 60
    rules = [
        (~pl.col("type").is_in([DEPARTURE, CANCELLATION]), "type: not departure or cancellation"),
        (pl.col("flight_id").is_null(), "flight_id: missing"),
        (pl.col("origin").is_null(), "origin: missing"),
        (~pl.col("origin").is_in(list(NYC_ORIGINS)), "origin: not a NYC origin"),
        (pl.col("carrier").is_null(), "carrier: missing"),
        (~pl.col("carrier").str.len_chars().is_between(2, 3), "carrier: not 2-3 characters"),
        (pl.col("sched_dep").is_null(), "sched_dep: missing or not an instant"),
        (departure & pl.col("actual_dep").is_null(), "actual_dep: missing or not an instant"),
        (departure & pl.col("dep_delay").is_null(), "dep_delay: missing or not a number"),
        (
            departure & ~pl.col("dep_delay").is_between(early, _MAX_DELAY_MIN),
            f"dep_delay: outside [{early:g}, {_MAX_DELAY_MIN:g}] minutes",
        ),
        (
            departure & ((stated - measured).abs() > _DELAY_SLACK_S),
            "dep_delay: disagrees with actual_dep - sched_dep",
        ),
        (
            (pl.col("type") == CANCELLATION)
            & (pl.col("actual_dep").is_not_null() | pl.col("dep_delay").is_not_null()),
            "cancellation: has a departure",
        ),
    ]
    return pl.concat_list(
        [
            pl.when(broken.fill_null(False)).then(pl.lit(rule)).otherwise(None)
            for broken, rule in rules
        ]
    ).list.drop_nulls()


def departure_event_rows(events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed events -> (``departure_events`` rows, the events that broke a rule, with a
    ``rules`` column). Within the batch, a flight's latest event stands for it."""
    checked = events.with_columns(event_rules().alias("rules"))
    bad = checked.filter(pl.col("rules").list.len() > 0)
    good = checked.filter(pl.col("rules").list.len() == 0)
    cancelled = pl.col("type") == CANCELLATION
    rows = good.select(
        pl.col("flight_id"),
        pl.when(cancelled)
        .then(pl.col("sched_dep"))
        .otherwise(pl.col("actual_dep"))
        .alias("event_at"),
        pl.col("origin"),
        pl.col("carrier"),
        pl.col("tailnum"),
        pl.col("sched_dep").alias("sched_dep_utc"),
        pl.col("dep_delay"),
        cancelled.alias("is_cancelled"),
    )
    rows = rows.sort("event_at").unique("flight_id", keep="last", maintain_order=True)
    return DEPARTURE_EVENTS.conform(rows), bad


def departure_schedule(flights: pl.DataFrame) -> pl.DataFrame:
    """The schedule part of flights-group rows (no outcome): ``departure_schedule`` rows."""
    return DEPARTURE_SCHEDULE.conform(flights)
