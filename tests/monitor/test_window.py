"""Reading the logged predictions: features JSON, one row per flight, lineage windows."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from inference_pipeline.monitor.window import (
    Window,
    data_end,
    decode_features,
    latest_per_flight,
    parse_window,
)
from shared.prediction_log import features_json

pytestmark = pytest.mark.unit


def logged(*texts: str | None) -> pl.DataFrame:
    return pl.DataFrame({"features": list(texts)}, schema={"features": pl.String})


def test_features_round_trip_through_the_prediction_log() -> None:
    frame = pl.DataFrame(
        {
            "distance": pl.Series([1576, 733], dtype=pl.Int16),
            "wx_temp": pl.Series([41.0, None], dtype=pl.Float32),
            "is_weekend": pl.Series([1, 0], dtype=pl.Int8),
            "carrier": ["B6", "AA"],
            "sched_hour": pl.Series([6, 19], dtype=pl.Int8),
        }
    )
    numeric, categorical = ["distance", "wx_temp", "is_weekend"], ["carrier", "sched_hour"]
    decoded = decode_features(logged(*features_json(frame, frame.columns)), numeric, categorical)
    expected = frame.select(
        *(pl.col(n).cast(pl.Float64) for n in numeric),
        *(pl.col(c).cast(pl.String) for c in categorical),  # as the reference statistics cast
    )
    assert_frame_equal(decoded, expected)


def test_what_python_json_writes_and_polars_would_refuse() -> None:
    rows = logged(
        json.dumps({"x": float("nan"), "c": 5.0, "flag": True}),
        json.dumps({"x": "2.5", "c": "UA", "flag": False}),
        "{not json",
        None,
    )
    decoded = decode_features(rows, ["x", "flag"], ["c"])
    assert decoded["x"].to_list() == [None, 2.5, None, None]
    assert decoded["flag"].to_list() == [1.0, 0.0, None, None]
    assert decoded["c"].to_list() == ["5", "UA", None, None]


def test_a_feature_no_row_carries_is_left_out() -> None:
    decoded = decode_features(logged('{"a": 1}', '{"a": null}'), ["a", "b"], ["c"])
    assert decoded.columns == ["a"]
    assert decoded["a"].to_list() == [1.0, None]


def test_each_flight_counts_once_with_its_latest_prediction() -> None:
    at = [datetime(2013, 7, 1, h, tzinfo=UTC) for h in (4, 9, 5)]
    predictions = pl.DataFrame(
        {
            "flight_id": ["f1", "f1", "f2"],
            "request_id": ["batch-2013-07-01", "r-online", "batch-2013-07-01"],
            "scored_at": at,
            "probability": [0.1, 0.2, 0.3],
        }
    )
    latest = latest_per_flight(predictions).sort("flight_id")
    assert latest["probability"].to_list() == [0.2, 0.3]


def test_windows_and_lineage_dates() -> None:
    window = Window(end=date(2013, 7, 7), days=7)
    assert (window.start, window.describe()) == (date(2013, 7, 1), "2013-07-01..2013-07-07")
    assert parse_window("2013-01-01:2013-10-01") == (date(2013, 1, 1), date(2013, 10, 1))
    assert parse_window("garbage") is None and parse_window(None) is None
    windows = {"train": "2013-01-01:2013-10-01", "test": "2013-11-01:2014-01-01"}
    assert data_end(windows) == date(2013, 12, 31)
    assert data_end({}) is None
