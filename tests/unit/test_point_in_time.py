"""The point-in-time join never leaks the future, keeps every spine row, and survives shuffles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from shared.feature_definitions import CARRIER_STATS
from shared.feature_store import JoinRequest, point_in_time_join

pytestmark = pytest.mark.unit

T0 = datetime(2013, 1, 1, tzinfo=UTC)
CARRIERS = ["AA", "UA", "DL"]


def _stats(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    """carrier, hour offset, value -> a carrier_stats-shaped frame (unique key + time)."""
    frame = pl.DataFrame(
        {
            "carrier": [r[0] for r in rows],
            "valid_from": [T0 + timedelta(hours=r[1]) for r in rows],
            "flights_7d": [r[2] for r in rows],
        },
        schema={
            "carrier": pl.String,
            "valid_from": pl.Datetime("us", "UTC"),
            "flights_7d": pl.Int32,
        },
    )
    return frame.unique(subset=["carrier", "valid_from"], keep="first")


def _spine(rows: list[tuple[str, int | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "carrier": [r[0] for r in rows],
            "ts": [None if r[1] is None else T0 + timedelta(hours=r[1]) for r in rows],
        },
        schema={"carrier": pl.String, "ts": pl.Datetime("us", "UTC")},
    )


def _oracle(spine: pl.DataFrame, stats: pl.DataFrame) -> list[int | None]:
    """Brute force: the value with the latest event time <= ts for the same carrier."""
    out: list[int | None] = []
    for carrier, ts in spine.iter_rows():
        if ts is None:
            out.append(None)
            continue
        match = stats.filter((pl.col("carrier") == carrier) & (pl.col("valid_from") <= ts))
        out.append(None if match.is_empty() else match.sort("valid_from")["flights_7d"][-1])
    return out


REQUEST = JoinRequest(CARRIER_STATS, features=["flights_7d"], prefix="c_")
stat_rows = st.lists(
    st.tuples(st.sampled_from(CARRIERS), st.integers(0, 200), st.integers(0, 10_000)), max_size=60
)
spine_rows = st.lists(
    st.tuples(st.sampled_from([*CARRIERS, "ZZ"]), st.one_of(st.none(), st.integers(-5, 220))),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(stats=stat_rows, spine=spine_rows, seed=st.integers(0, 2**16))
def test_matches_brute_force_on_shuffled_input(
    stats: list[tuple[str, int, int]], spine: list[tuple[str, int | None]], seed: int
) -> None:
    right = _stats(stats).sample(fraction=1.0, shuffle=True, seed=seed)  # unsorted on purpose
    left = _spine(spine)
    joined = point_in_time_join(left, "ts", [(REQUEST, right)], keep_event_times=True)
    assert joined.height == left.height  # every spine row kept, duplicates included
    assert_frame_equal(joined.select("carrier", "ts"), left)  # in the original order
    assert joined["c_flights_7d"].to_list() == _oracle(left, _stats(stats))
    matched = joined.filter(pl.col("c_event_time").is_not_null())
    assert (matched["c_event_time"] <= matched["ts"]).all()  # never from after the timestamp


@settings(max_examples=60, deadline=None)
@given(stats=stat_rows, spine=spine_rows, hours=st.integers(0, 24))
def test_tolerance_drops_stale_matches(
    stats: list[tuple[str, int, int]], spine: list[tuple[str, int | None]], hours: int
) -> None:
    request = JoinRequest(
        CARRIER_STATS, ["flights_7d"], prefix="c_", tolerance=timedelta(hours=hours)
    )
    joined = point_in_time_join(
        _spine(spine), "ts", [(request, _stats(stats))], keep_event_times=True
    )
    matched = joined.filter(pl.col("c_event_time").is_not_null())
    assert ((matched["ts"] - matched["c_event_time"]) <= timedelta(hours=hours)).all()


def test_rows_sharing_key_and_time_are_not_collapsed() -> None:
    spine = _spine([("AA", 5), ("AA", 5), ("AA", 5)])
    joined = point_in_time_join(spine, "ts", [(REQUEST, _stats([("AA", 1, 7)]))])
    assert joined["c_flights_7d"].to_list() == [7, 7, 7]


def test_spine_keys_map_to_differently_named_group_keys() -> None:
    spine = pl.DataFrame(
        {"airline": ["UA"], "ts": [T0 + timedelta(hours=3)]},
        schema={"airline": pl.Categorical, "ts": pl.Datetime("us", "UTC")},
    )
    request = JoinRequest(CARRIER_STATS, ["flights_7d"], spine_keys=["airline"], prefix="c_")
    joined = point_in_time_join(spine, "ts", [(request, _stats([("UA", 2, 11), ("UA", 4, 12)]))])
    assert joined["c_flights_7d"].to_list() == [11]


def test_unknown_feature_is_a_clear_error() -> None:
    request = JoinRequest(CARRIER_STATS, ["no_such_feature"])
    with pytest.raises(ValueError, match="no_such_feature"):
        point_in_time_join(_spine([("AA", 1)]), "ts", [(request, _stats([("AA", 0, 1)]))])
