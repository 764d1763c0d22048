"""The prediction log's records: what the service appends per answered batch decodes, in the
log writer, to exactly the rows the service built itself before (the table the monitor reads is
unchanged), whatever the windows, versions and dtypes."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest

from inference_pipeline.prediction_sink.records import (
    RecordError,
    decode_batches,
    encode_batch,
    prediction_rows,
)
from shared.prediction_log import ONLINE_SOURCE, SHADOW_SOURCE, LoggedPredictions

pytestmark = pytest.mark.unit

SCORED_AT = datetime(2026, 12, 5, 1, 2, 3, 456_789, tzinfo=UTC)
FEATURES = ["carrier", "route_delay_rate_7d", "route_flights_7d", "dep_hour", "plane_age"]


def _columns(rows: int = 3) -> dict[str, Any]:
    return {
        "flight_date": [date(2013, 12, 31)] * rows,
        "sched_dep_time": [545, 2359, 1200][:rows],
        "carrier": ["UA", 'ÄB "q"', None][:rows],
        "route_delay_rate_7d": [None, 0.10000000149011612, 1e-300][:rows],
        "route_flights_7d": [12, None, 2**40][:rows],
        "dep_hour": np.array([5.0, np.nan, 12.0][:rows]),  # on-demand: numpy, NaN missing
        "plane_age": np.array([0.1, np.nan, 33.3][:rows], dtype=np.float32),
        "unused": ["not", "logged", "!"][:rows],
    }


def _entry(
    columns: dict[str, Any],
    window: slice,
    *,
    request_id: str,
    version: str = "3",
    features: list[str] = FEATURES,
    source: str = ONLINE_SOURCE,
    test: bool = False,
) -> LoggedPredictions:
    rows = window.stop - window.start
    return LoggedPredictions(
        flight_ids=[f"{request_id}-{i}" for i in range(rows)],
        columns=columns,
        window=window,
        features=features,
        probabilities=[float(np.float32(0.1 + i / 7)) for i in range(rows)],
        missing=[["route_delay_rate_7d"] if i == 0 else [] for i in range(rows)],
        model_version=version,
        request_id=request_id,
        scored_at=SCORED_AT,
        source=source,
        latency_ms=1.25 + rows,
        test_traffic=test,
    )


def _round_trip(entries: list[LoggedPredictions]) -> pl.DataFrame:
    return prediction_rows(decode_batches(encode_batch(entries, "r-1")))


def test_a_lone_request_decodes_to_the_rows_the_service_built() -> None:
    entries = [_entry(_columns(), slice(0, 3), request_id="a")]
    decoded = _round_trip(entries)
    assert decoded.height == 3
    assert decoded.equals(prediction_rows(entries))
    assert decoded["scored_at"].to_list() == [SCORED_AT] * 3  # to the microsecond


def test_a_coalesced_batch_with_two_versions_is_one_record_of_the_same_rows() -> None:
    batch, other = _columns(), _columns(2)
    shadow_features = ["carrier", "plane_age"]
    entries = [
        _entry(batch, slice(0, 1), request_id="a"),
        _entry(batch, slice(1, 3), request_id="b", test=True),
        _entry(other, slice(1, 2), request_id="c"),
        _entry(batch, slice(1, 3), request_id="b", version="4", features=shadow_features,
               source=SHADOW_SOURCE),
    ]  # fmt: skip
    record = encode_batch(entries, "r-2")
    assert b"not" not in record  # only the columns the rows need travel
    decoded = prediction_rows(decode_batches(record))
    assert decoded.height == 6
    assert decoded.equals(prediction_rows(entries))


def test_a_window_inside_a_batch_sends_only_its_rows() -> None:
    columns = _columns()
    entries = [_entry(columns, slice(2, 3), request_id="z")]
    data = orjson.loads(encode_batch(entries, "r-3"))
    assert data["blocks"][0]["columns"]["sched_dep_time"] == [1200]
    assert _round_trip(entries).equals(prediction_rows(entries))


def test_float32_inputs_keep_the_double_the_model_was_given() -> None:
    rows = _round_trip([_entry(_columns(), slice(0, 1), request_id="f")])
    text = rows["features"][0]
    assert f'"plane_age":{float(np.float32(0.1))!r}' in text
    assert math.isclose(rows["probability"][0], 0.1, rel_tol=1e-6)


@pytest.mark.parametrize(
    "payload", [b"not json", b'{"format": 99}', b'{"format": 1, "blocks": [{}]}']
)
def test_a_record_that_is_not_one_is_refused_readably(payload: bytes) -> None:
    with pytest.raises(RecordError, match="prediction log record"):
        decode_batches(payload)
