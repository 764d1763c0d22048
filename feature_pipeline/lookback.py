"""The lookback history of the rolling statistics: which days come from the source, which from
the store, and which are missing.

A daily run is fed only its own day's raw data (an upstream extract), yet the route and carrier
statistics it writes sum the 28 days before. Those days come from the source where it holds
them (the source wins: a source that holds the history works as it always did, and a restated
day in the source is what the statistics see) and from the store's `flights` group otherwise: it
holds every past flight with its outcome. A day is taken whole from one side.

History begins at the earliest day the source or the store holds: before it there is nothing to
miss (the first days of 2013 have no history, and a first-ever backfill starts there). After it,
a lookback day that neither holds is missing, and the run stops before writing anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

import polars as pl

from feature_pipeline.extract import Window
from feature_pipeline.features.daily_stats import LOOKBACK_DAYS
from shared.feature_definitions import FLIGHTS

# What the rolling statistics add up, in the flights group's stored dtypes: rows from the source
# and rows read back from the store then sum to the same values.
OUTCOME_COLUMNS = (
    "flight_date",
    "origin",
    "dest",
    "carrier",
    "is_cancelled",
    "dep_delay",
    "is_delayed",
)


def outcomes(flights: pl.DataFrame) -> pl.DataFrame:
    return flights.select(pl.col(c).cast(FLIGHTS.polars_schema[c]) for c in OUTCOME_COLUMNS)


def lookback_window(window: Window) -> Window:
    """The LOOKBACK_DAYS days before ``window``: the history its rolling statistics need."""
    return window.before(LOOKBACK_DAYS)


def days_of(window: Window) -> list[date]:
    return [window.start + timedelta(days=i) for i in range(window.days)]


def days_held(flights: pl.DataFrame) -> set[date]:
    return set(flights["flight_date"].unique().to_list()) if flights.height else set()


def unheld_days(lookback: Window, *held: Iterable[date]) -> list[date]:
    have = set().union(*held)
    return [d for d in days_of(lookback) if d not in have]


def missing_days(unheld: list[date], history_begins: date | None) -> list[date]:
    """Unheld days after the beginning of history (the earliest day anyone holds)."""
    if history_begins is None:
        return []
    return [d for d in unheld if d > history_begins]


def describe_days(days: list[date]) -> str:
    """Consecutive days as ranges: '2013-02-01..2013-02-27, 2013-03-02 (28 days)'."""
    runs: list[tuple[date, date]] = []
    for day in sorted(days):
        if runs and day == runs[-1][1] + timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    text = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)
    return f"{text} ({len(days)} day{'s' if len(days) != 1 else ''})"
