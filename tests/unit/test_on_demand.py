"""On-demand features: the one implementation training, batch and online all call."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from shared.on_demand import ON_DEMAND_FEATURES, on_demand_columns, with_on_demand_features

pytestmark = pytest.mark.unit


def _requests(**columns: list[object]) -> pl.DataFrame:
    return pl.DataFrame(
        columns,
        schema_overrides={
            "flight_date": pl.Date,
            "sched_dep_time": pl.Int16,
            "plane_year_built": pl.Int16,
        },
    )


def test_known_values() -> None:
    frame = _requests(
        flight_date=[date(2013, 1, 5), date(2013, 12, 31)],
        sched_dep_time=[515, 2359],
        plane_year_built=[2004, None],
    )
    out = with_on_demand_features(frame)
    expected = pl.DataFrame(
        {
            "sched_hour": [5, 23],
            "sched_minute_of_day": [315, 1439],
            "weekday": [6, 2],  # Saturday, Tuesday
            "month": [1, 12],
            "day_of_year": [5, 365],
            "is_weekend": [1, 0],
            "plane_age_years": [9.0, None],
        },
        schema={
            "sched_hour": pl.Int8,
            "sched_minute_of_day": pl.Int16,
            "weekday": pl.Int8,
            "month": pl.Int8,
            "day_of_year": pl.Int16,
            "is_weekend": pl.Int8,
            "plane_age_years": pl.Float32,
        },
    )
    assert_frame_equal(out.select(expected.columns), expected)
    assert list(out.columns[-len(ON_DEMAND_FEATURES) :]) == list(ON_DEMAND_FEATURES)


def test_cyclic_features_wrap_around_midnight() -> None:
    out = with_on_demand_features(
        _requests(flight_date=[date(2013, 3, 1)] * 2, sched_dep_time=[0, 2359])
    )
    sin, cos = out["time_of_day_sin"].to_list(), out["time_of_day_cos"].to_list()
    assert abs(sin[0] - sin[1]) < 0.01 and abs(cos[0] - cos[1]) < 0.01


def test_missing_plane_year_column_gives_null_age() -> None:
    out = with_on_demand_features(_requests(flight_date=[date(2013, 3, 1)], sched_dep_time=[600]))
    assert out["plane_age_years"].to_list() == [None]


@settings(max_examples=50, deadline=None)
@given(
    day=st.dates(min_value=date(2013, 1, 1), max_value=date(2013, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
)
def test_one_row_equals_the_same_row_in_a_batch(day: date, hour: int, minute: int) -> None:
    """Online (one request's columns) and batch (a frame of many rows) get identical values."""
    batch = _requests(
        flight_date=[date(2013, 6, 1), day, date(2013, 2, 1)],
        sched_dep_time=[1200, hour * 100 + minute, 5],
        plane_year_built=[1999, 2001, None],
    )
    online = on_demand_columns(
        np.array([day], dtype="datetime64[D]"), np.array([hour * 100 + minute]), np.array([2001.0])
    )
    row = with_on_demand_features(batch).slice(1, 1)
    for name in ON_DEMAND_FEATURES:
        assert row[name].to_list() == online[name].tolist(), name


def test_calendar_features_agree_with_polars_calendar() -> None:
    """weekday/month/day of year from day arithmetic match Polars' calendar over 70 years."""
    days = pl.date_range(date(1960, 1, 1), date(2030, 12, 31), eager=True)
    out = with_on_demand_features(
        pl.DataFrame({"flight_date": days, "sched_dep_time": [600] * len(days)})
    )
    assert (out["weekday"] == days.dt.weekday()).all()
    assert (out["month"] == days.dt.month()).all()
    assert (out["day_of_year"] == days.dt.ordinal_day()).all()


def test_missing_flight_date_is_refused() -> None:
    frame = _requests(flight_date=[None], sched_dep_time=[600])
    with pytest.raises(ValueError, match="flight_date"):
        with_on_demand_features(frame)
