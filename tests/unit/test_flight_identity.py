"""The one implementation of a flight's key and departure instant, across DST edges."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from shared.flight_identity import flight_id, sched_dep_utc

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
