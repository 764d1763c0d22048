"""Validation: each bad row is quarantined with every rule it broke; good rows pass untouched."""

from __future__ import annotations

import json

import polars as pl
import pytest

from feature_pipeline.pipeline import (
    enforce_bad_share,
    validate_flights,
    validate_planes,
    validate_weather,
)
from shared.errors import ValidationFailed

pytestmark = pytest.mark.unit

AIRPORTS = {"IAH", "MIA", "ORD"}
GOOD = {
    "year": "2013",
    "month": "1",
    "day": "1",
    "dep_time": "517",
    "sched_dep_time": "515",
    "dep_delay": "2",
    "carrier": "UA",
    "flight": "1545",
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "distance": "1400",
}


def _flights(*changes: dict[str, str | None]) -> pl.DataFrame:
    rows = []
    for i, change in enumerate(changes):
        rows.append(GOOD | {"flight": str(1000 + i)} | change)
    return pl.DataFrame(rows, schema={c: pl.String for c in GOOD})


def _rules(result_quarantine: pl.DataFrame) -> list[str]:
    return result_quarantine["rules"].to_list()


def test_good_rows_pass_with_derived_columns() -> None:
    result = validate_flights(_flights({}, {"dep_time": None, "dep_delay": None}), AIRPORTS)
    assert result.quarantine.is_empty()
    valid = result.valid
    assert valid["flight_id"].to_list() == ["20130101-UA1000-EWR-0515", "20130101-UA1001-EWR-0515"]
    assert valid["is_delayed"].to_list() == [0, None]  # the cancelled flight has no label
    assert valid["is_cancelled"].to_list() == [False, True]
    assert str(valid["sched_dep_utc"][0]) == "2013-01-01 10:15:00+00:00"


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"dest": "XXX"}, "dest: known_airport"),
        ({"origin": "BOS"}, "origin: isin"),
        ({"carrier": None}, "carrier: not_nullable"),
        ({"distance": "far"}, "distance: unparseable"),
        ({"sched_dep_time": "1275"}, "sched_dep_time: unparseable"),
        ({"month": "13"}, "day: unparseable"),
        ({"dep_delay": "5000"}, "dep_delay: in_range"),
    ],
)
def test_each_rule_quarantines_with_its_name(change: dict[str, str | None], rule: str) -> None:
    result = validate_flights(_flights({}, change), AIRPORTS)
    assert result.valid.height == 1
    assert len(_rules(result.quarantine)) == 1
    assert rule in _rules(result.quarantine)[0]


def test_quarantine_keeps_the_raw_values_exactly() -> None:
    result = validate_flights(_flights({"distance": "far"}), AIRPORTS)
    raw = json.loads(result.quarantine["raw"][0])
    assert raw["distance"] == "far"
    assert raw["flight"] == "1000"


def test_exact_duplicates_are_dropped_and_conflicting_ones_quarantined() -> None:
    frame = _flights({}, {})
    frame = pl.concat(
        [frame, frame.head(1), frame.head(1).with_columns(pl.lit("99").alias("dep_delay"))]
    )
    result = validate_flights(frame, AIRPORTS)
    assert result.deduplicated == 1
    assert result.valid.height == 2
    assert _rules(result.quarantine) == ["duplicate key: flight_id"]
    assert result.valid.filter(pl.col("flight") == 1000)["dep_delay"].to_list() == [
        2.0
    ]  # first kept


def test_quarantine_hash_is_stable_across_runs() -> None:
    bad = _flights({"dest": "XXX"})
    first = validate_flights(bad, AIRPORTS).quarantine["row_hash"]
    assert validate_flights(bad, AIRPORTS).quarantine["row_hash"].equals(first)


def test_bad_share_above_the_limit_fails_naming_the_rules() -> None:
    result = validate_flights(_flights({}, {"dest": "XXX"}, {"dest": "YYY"}), AIRPORTS)
    with pytest.raises(ValidationFailed, match=r"flights: 2 of 3 rows .*dest: known_airport"):
        enforce_bad_share(result, 0.5)
    enforce_bad_share(result, 0.7)


def test_weather_outlier_and_planes() -> None:
    weather = pl.DataFrame(
        [
            {
                "origin": "EWR",
                "time_hour": "2013-02-12T08:00:00Z",
                "temp": "39",
                "dewp": "27",
                "humid": "61",
                "wind_dir": "260",
                "wind_speed": "1048.36",
                "wind_gust": None,
                "precip": "0",
                "pressure": "1008",
                "visib": "10",
            },
            {
                "origin": "EWR",
                "time_hour": "not a time",
                "temp": "39",
                "dewp": "27",
                "humid": "61",
                "wind_dir": "260",
                "wind_speed": "5",
                "wind_gust": None,
                "precip": "0",
                "pressure": "1008",
                "visib": "10",
            },
        ]
    )
    result = validate_weather(weather)
    assert result.valid.is_empty()
    rules = _rules(result.quarantine)
    assert "wind_speed: in_range" in rules[0]
    assert "time_hour: unparseable" in rules[1]
    planes = pl.DataFrame(
        [
            {
                "tailnum": "N1",
                "year": "1850",
                "type": "t",
                "manufacturer": "m",
                "engines": "2",
                "seats": "100",
                "engine": "e",
            }
        ]
    )
    assert "year_built: in_range" in _rules(validate_planes(planes).quarantine)[0]
