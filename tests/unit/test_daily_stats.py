"""Rolling route/carrier statistics describe days strictly before the day they are valid for."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_pipeline.features.daily_stats import rolling_stats

pytestmark = pytest.mark.unit

FIRST = date(2013, 3, 1)
LAST = date(2013, 3, 20)


def _flights(rows: list[tuple[str, int, float | None]]) -> pl.DataFrame:
    """carrier, day offset from FIRST (may be negative: lookback), dep_delay (None: cancelled)."""
    return pl.DataFrame(
        {
            "carrier": [r[0] for r in rows],
            "flight_date": [FIRST + timedelta(days=r[1]) for r in rows],
            "dep_delay": [r[2] for r in rows],
            "is_cancelled": [r[2] is None for r in rows],
            "is_delayed": [None if r[2] is None else int(r[2] > 15) for r in rows],
        },
        schema={
            "carrier": pl.String,
            "flight_date": pl.Date,
            "dep_delay": pl.Float32,
            "is_cancelled": pl.Boolean,
            "is_delayed": pl.Int8,
        },
    )


flight_rows = st.lists(
    st.tuples(
        st.sampled_from(["AA", "UA"]),
        st.integers(-30, 20),
        st.one_of(st.none(), st.floats(-20, 300, width=32)),
    ),
    min_size=1,
    max_size=80,
)


def _oracle(flights: pl.DataFrame, carrier: str, day: date, days: int) -> tuple[int, float | None]:
    window = flights.filter(
        (pl.col("carrier") == carrier)
        & (pl.col("flight_date") < day)
        & (pl.col("flight_date") >= day - timedelta(days=days))
    )
    departed = window.filter(~pl.col("is_cancelled"))
    rate = None if departed.is_empty() else float(departed["is_delayed"].mean())  # type: ignore[arg-type]
    return window.height, rate


@settings(max_examples=80, deadline=None)
@given(rows=flight_rows)
def test_matches_brute_force_and_excludes_the_day_itself(
    rows: list[tuple[str, int, float | None]],
) -> None:
    flights = _flights(rows)
    stats = rolling_stats(flights, ["carrier"], FIRST, LAST)
    for row in stats.iter_rows(named=True):
        for days in (7, 28):
            volume, rate = _oracle(flights, row["carrier"], row["day"], days)
            assert row[f"flights_{days}d"] == volume
            if rate is None:
                assert row[f"delay_rate_{days}d"] is None
            else:
                assert row[f"delay_rate_{days}d"] == pytest.approx(rate, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(rows=flight_rows, cut=st.integers(0, 19), delay=st.floats(0, 500, width=32))
def test_changing_the_day_or_later_never_changes_that_days_stats(
    rows: list[tuple[str, int, float | None]], cut: int, delay: float
) -> None:
    """No leakage: rewrite every outcome on or after day `cut`; stats up to `cut` are unchanged."""
    flights = _flights(rows)
    boundary = FIRST + timedelta(days=cut)
    later = pl.col("flight_date") >= boundary
    changed = flights.with_columns(
        pl.when(later)
        .then(pl.lit(delay, pl.Float32))
        .otherwise(pl.col("dep_delay"))
        .alias("dep_delay"),
        pl.when(later)
        .then(pl.lit(int(delay > 15), pl.Int8))
        .otherwise(pl.col("is_delayed"))
        .alias("is_delayed"),
        pl.when(later).then(False).otherwise(pl.col("is_cancelled")).alias("is_cancelled"),
    )
    before = rolling_stats(flights, ["carrier"], FIRST, LAST)
    after = rolling_stats(changed, ["carrier"], FIRST, LAST)
    upto = pl.col("day") <= boundary
    if before.is_empty():
        return
    assert (
        before.filter(upto)
        .sort("carrier", "day")
        .equals(after.filter(upto).sort("carrier", "day").select(before.columns))
    )


def test_valid_from_is_local_midnight_in_utc() -> None:
    stats = rolling_stats(_flights([("AA", -1, 30.0)]), ["carrier"], FIRST, FIRST)
    assert stats["valid_from"].to_list() == [datetime(2013, 3, 1, 5, tzinfo=UTC)]  # EST = UTC-5
    assert stats["delay_rate_7d"].to_list() == [1.0]


def test_keys_without_departures_in_the_longest_window_are_left_out() -> None:
    stats = rolling_stats(_flights([("AA", -29, 0.0)]), ["carrier"], FIRST, LAST)
    assert stats.is_empty()
