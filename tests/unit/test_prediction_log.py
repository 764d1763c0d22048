"""Rows the online service logs: queued predictions become PREDICTIONS rows at a flush, with the
features JSON as Python's json would write the values the model was given."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import polars as pl
import pytest

from shared.prediction_log import (
    ONLINE_SOURCE,
    PREDICTIONS,
    SHADOW_SOURCE,
    LoggedPredictions,
    features_json,
    logged_prediction_rows,
)

pytestmark = pytest.mark.unit

SCORED_AT = datetime(2013, 12, 31, 12, 0, 1, 250_000, tzinfo=UTC)


def _logged(
    features: list[str], columns: dict[str, Any], version: str = "3", source: str = ONLINE_SOURCE
) -> LoggedPredictions:
    rows = len(columns["flight_date"])
    return LoggedPredictions(
        flight_ids=[f"f{i}-{version}" for i in range(rows)],
        columns=columns,
        window=slice(0, rows),
        features=features,
        probabilities=[0.25 + i / 10 for i in range(rows)],
        missing=[["route_delay_rate_7d"] if i == 0 else [] for i in range(rows)],
        model_version=version,
        request_id=f"req-{version}",
        scored_at=SCORED_AT,
        source=source,
        latency_ms=2.5,
    )


def _one_flight(
    features: list[str], columns: dict[str, Any], row: int, *, flight_id: str, request_id: str
) -> LoggedPredictions:
    """A one-flight request's predictions: ``row`` of a scored batch's ``columns``."""
    return LoggedPredictions(
        flight_ids=[flight_id],
        columns=columns,
        window=slice(row, row + 1),
        features=features,
        probabilities=[0.5],
        missing=[[]],
        model_version="3",
        request_id=request_id,
        scored_at=SCORED_AT,
        source=ONLINE_SOURCE,
        latency_ms=1.0,
    )


def _columns() -> dict[str, Any]:
    return {
        "flight_date": [date(2013, 12, 31), date(2013, 12, 31)],
        "sched_dep_time": [545, 2359],
        "carrier": ["UA", 'ÄB "q"'],
        "route_delay_rate_7d": [None, 0.10000000149011612],
        "route_flights_7d": [12, None],
        "dep_hour": np.array([5.0, np.nan]),  # an on-demand feature: numpy, NaN when missing
    }


def test_rows_carry_every_prediction_with_its_request_fields() -> None:
    features = ["route_delay_rate_7d", "carrier", "route_flights_7d", "dep_hour"]
    rows = logged_prediction_rows([_logged(features, _columns())])
    assert rows.schema == PREDICTIONS.polars_schema
    assert rows["flight_id"].to_list() == ["f0-3", "f1-3"]
    assert rows["flight_date"].to_list() == [date(2013, 12, 31)] * 2
    assert rows["sched_dep_utc"].to_list() == [
        datetime(2013, 12, 31, 10, 45, tzinfo=UTC),  # 05:45 in New York (EST)
        datetime(2014, 1, 1, 4, 59, tzinfo=UTC),
    ]
    assert rows["probability"].to_list() == pytest.approx([0.25, 0.35])
    assert rows["missing_features"].to_list() == ["route_delay_rate_7d", ""]
    assert rows["scored_at"].to_list() == [SCORED_AT] * 2
    assert rows["request_id"].unique().to_list() == ["req-3"]
    assert rows["latency_ms"].to_list() == [2.5, 2.5]


def test_features_json_is_what_pythons_json_writes_of_the_model_inputs() -> None:
    features = ["route_delay_rate_7d", "carrier", "route_flights_7d", "dep_hour"]
    rows = logged_prediction_rows([_logged(features, _columns())])
    first, second = (json.loads(text) for text in rows["features"])
    assert first == {
        "carrier": "UA",
        "dep_hour": 5.0,
        "route_delay_rate_7d": None,
        "route_flights_7d": 12,
    }
    assert second == {
        "carrier": 'ÄB "q"',
        "dep_hour": None,  # NaN is no JSON value: null, as for any missing input
        "route_delay_rate_7d": 0.10000000149011612,
        "route_flights_7d": None,
    }
    assert list(first) == sorted(first)  # keys sorted, as json.dumps(sort_keys=True)
    assert "flight_date" not in first  # only the model's inputs


def test_versions_with_different_features_in_one_flush() -> None:
    champion = _logged(["carrier", "route_flights_7d"], _columns(), version="3")
    shadow = _logged(["carrier", "dep_hour"], _columns(), version="4", source=SHADOW_SOURCE)
    rows = logged_prediction_rows([champion, shadow, champion])
    assert rows.height == 6
    by_version = {
        v: [set(json.loads(t)) for t in rows.filter(pl.col("model_version") == v)["features"]]
        for v in ("3", "4")
    }
    assert by_version["3"] == [{"carrier", "route_flights_7d"}] * 4
    assert by_version["4"] == [{"carrier", "dep_hour"}] * 2
    assert set(rows.filter(pl.col("model_version") == "4")["source"]) == {SHADOW_SOURCE}


def test_nothing_queued_gives_no_rows() -> None:
    rows = logged_prediction_rows([])
    assert rows.height == 0
    assert rows.schema == PREDICTIONS.polars_schema


def test_float32_features_are_written_as_the_double_the_model_was_given() -> None:
    frame = pl.DataFrame({"b": pl.Series([0.1, math.nan], dtype=pl.Float32), "a": [1, None]})
    texts = features_json(frame, ["b", "a"]).to_list()
    assert texts[0] == json.dumps({"a": 1, "b": float(np.float32(0.1))}, separators=(",", ":"))
    assert json.loads(texts[1]) == {"a": None, "b": None}


def test_requests_of_one_scored_batch_log_their_own_rows_of_its_columns() -> None:
    features = ["carrier", "dep_hour"]
    shared_columns = _columns()
    first, second = (
        _one_flight(features, shared_columns, i, flight_id=f"f{i}", request_id=f"req-{i}")
        for i in (0, 1)
    )
    rows = logged_prediction_rows([second, first])
    assert rows["request_id"].to_list() == ["req-1", "req-0"]
    assert [t.hour for t in rows["sched_dep_utc"]] == [4, 10]  # 23:59 and 05:45 in New York
    assert [json.loads(t)["carrier"] for t in rows["features"]] == ['ÄB "q"', "UA"]
    assert [json.loads(t)["dep_hour"] for t in rows["features"]] == [None, 5.0]


def test_consecutive_windows_of_one_batch_give_the_rows_each_gives_alone() -> None:
    features = ["carrier", "route_delay_rate_7d", "dep_hour"]
    batch, other = _columns(), _columns()
    other["carrier"] = ["AA", "B6"]

    def request(columns: dict[str, Any], row: int, name: str) -> LoggedPredictions:
        return _one_flight(features, columns, row, flight_id=name, request_id=name)

    # Rows 0 and 1 of one batch (one span), then another batch's row 1, then the first's
    # row 1 again (not contiguous with what precedes it: a span of its own).
    queued = [
        request(batch, 0, "a"),
        request(batch, 1, "b"),
        request(other, 1, "c"),
        request(batch, 1, "d"),
    ]
    together = logged_prediction_rows(queued)
    alone = pl.concat([logged_prediction_rows([q]) for q in queued])
    assert together.equals(alone)
    assert [json.loads(t)["carrier"] for t in together["features"]] == [
        "UA",
        'ÄB "q"',
        "B6",
        'ÄB "q"',
    ]
    assert [t.hour for t in together["sched_dep_utc"]] == [10, 4, 4, 4]
