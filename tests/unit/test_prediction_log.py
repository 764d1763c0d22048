"""The request-side flight identity equals the feature pipeline's, so predictions join labels."""

from __future__ import annotations

from datetime import date

import polars as pl
from polars.testing import assert_series_equal

from feature_pipeline.features import flights as pipeline_flights
from shared import prediction_log


def test_flight_id_and_departure_instant_match_the_feature_pipeline() -> None:
    frame = pl.DataFrame(
        {
            "flight_date": [
                date(2013, 3, 10),
                date(2013, 3, 10),
                date(2013, 11, 3),
                date(2013, 1, 1),
            ],
            "sched_dep_time": pl.Series([130, 230, 130, 5], dtype=pl.Int16),  # DST edges
            "carrier": ["UA", "B6", "9E", "AA"],
            "flight": pl.Series([1545, 7, 3393, 11], dtype=pl.Int32),
            "origin": ["EWR", "JFK", "LGA", "JFK"],
        }
    )
    ours = frame.select(prediction_log.flight_id(), prediction_log.sched_dep_utc())
    theirs = frame.select(
        pipeline_flights.flight_id().alias("flight_id"),
        pipeline_flights.sched_dep_utc().alias("sched_dep_utc"),
    )
    assert_series_equal(ours["flight_id"], theirs["flight_id"])
    assert_series_equal(ours["sched_dep_utc"], theirs["sched_dep_utc"])
