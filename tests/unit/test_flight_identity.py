"""The one implementation of a flight's key and departure instant, across DST edges."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.flight_identity import (
    as_of_before_departure,
    flight_id,
    flight_id_of,
    sched_dep_utc,
    sched_dep_utc_of,
)

pytestmark = pytest.mark.unit


def test_flight_id_and_departure_instant_across_dst() -> None:
    frame = pl.DataFrame(
        {
            "flight_date": [
                date(2013, 3, 10),
                date(2013, 3, 10),
                date(2013, 11, 3),
                date(2013, 1, 1),
            ],
            "sched_dep_time": pl.Series([130, 230, 130, 5], dtype=pl.Int16),
            "carrier": ["UA", "B6", "9E", "AA"],
            "flight": pl.Series([1545, 7, 3393, 11], dtype=pl.Int32),
            "origin": ["EWR", "JFK", "LGA", "JFK"],
        }
    )
    out = frame.select(flight_id(), sched_dep_utc())
    assert out["flight_id"].to_list() == [
        "20130310-UA1545-EWR-0130",
        "20130310-B67-JFK-0230",
        "20131103-9E3393-LGA-0130",
        "20130101-AA11-JFK-0005",
    ]
    assert out["sched_dep_utc"].to_list() == [
        datetime(2013, 3, 10, 6, 30, tzinfo=UTC),  # EST, before the spring-forward gap
        None,  # 02:30 does not exist on 2013-03-10 in New York
        datetime(2013, 11, 3, 5, 30, tzinfo=UTC),  # ambiguous 01:30: the earlier (EDT) instant
        datetime(2013, 1, 1, 5, 5, tzinfo=UTC),
    ]


@settings(max_examples=200, deadline=None)
@given(
    day=st.dates(min_value=date(1990, 1, 1), max_value=date(2040, 12, 31)),
    carrier=st.from_regex(r"[A-Z0-9]{2,3}", fullmatch=True),
    number=st.integers(1, 9999),
    origin=st.from_regex(r"[A-Z0-9]{3,4}", fullmatch=True),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
)
def test_request_flight_id_equals_the_expression(
    day: date, carrier: str, number: int, origin: str, hour: int, minute: int
) -> None:
    """The online path's frame-free flight id is the feature pipeline's, for any flight."""
    hhmm = hour * 100 + minute
    frame = pl.DataFrame(
        {
            "flight_date": [day],
            "sched_dep_time": pl.Series([hhmm], dtype=pl.Int16),
            "carrier": [carrier],
            "flight": pl.Series([number], dtype=pl.Int32),
            "origin": [origin],
        }
    )
    expected = frame.select(flight_id())["flight_id"].item()
    assert flight_id_of(day, carrier, number, origin, hhmm) == expected


@settings(max_examples=300, deadline=None)
@given(
    day=st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
)
def test_request_departure_instant_equals_the_expression(day: date, hour: int, minute: int) -> None:
    """The frame-free departure instant (for ``as_of`` = departure - lead) is the feature
    pipeline's, DST gaps and ambiguous hours included."""
    hhmm = hour * 100 + minute
    frame = pl.DataFrame(
        {"flight_date": [day], "sched_dep_time": pl.Series([hhmm], dtype=pl.Int16)}
    )
    assert sched_dep_utc_of(day, hhmm) == frame.select(sched_dep_utc()).item()


def test_as_of_before_departure() -> None:
    assert as_of_before_departure(date(2013, 12, 31), 1700, 60) == datetime(
        2013, 12, 31, 21, tzinfo=UTC
    )
    assert as_of_before_departure(date(2013, 11, 3), 130, 0) == datetime(
        2013, 11, 3, 5, 30, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="does not exist"):
        as_of_before_departure(date(2013, 3, 10), 230, 60)
