"""The point-in-time join never leaks the future, keeps every spine row, and survives shuffles.

Every test runs against both methods (``FTI_PIT_JOIN``): Polars ``join_asof`` after an explicit
sort, and the hand-written join, so neither rots.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from shared.feature_definitions import CARRIER_STATS
from shared.feature_group import FeatureGroup
from shared.feature_store import (
    JoinRequest,
    PitJoinMethod,
    open_feature_store,
    point_in_time_join,
    point_in_time_native,
)
from shared.feature_store.local import LocalFeatureStore
from shared.settings import FeatureStoreSettings

pytestmark = pytest.mark.unit

T0 = datetime(2013, 1, 1, tzinfo=UTC)
UTC_US = pl.Datetime("us", "UTC")
CARRIERS = ["AA", "UA", "DL"]
METHODS = pytest.mark.parametrize("method", list(PitJoinMethod))


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


@METHODS
@settings(max_examples=150, deadline=None)
@given(stats=stat_rows, spine=spine_rows, seed=st.integers(0, 2**16))
def test_matches_brute_force_on_shuffled_input(
    method: PitJoinMethod,
    stats: list[tuple[str, int, int]],
    spine: list[tuple[str, int | None]],
    seed: int,
) -> None:
    right = _stats(stats).sample(fraction=1.0, shuffle=True, seed=seed)  # unsorted on purpose
    left = _spine(spine)
    joined = point_in_time_join(
        left, "ts", [(REQUEST, right)], keep_event_times=True, method=method
    )
    assert joined.height == left.height  # every spine row kept, duplicates included
    assert_frame_equal(joined.select("carrier", "ts"), left)  # in the original order
    assert joined["c_flights_7d"].to_list() == _oracle(left, _stats(stats))
    matched = joined.filter(pl.col("c_event_time").is_not_null())
    assert (matched["c_event_time"] <= matched["ts"]).all()  # never from after the timestamp


@METHODS
@settings(max_examples=60, deadline=None)
@given(stats=stat_rows, spine=spine_rows, hours=st.integers(0, 24))
def test_tolerance_drops_stale_matches(
    method: PitJoinMethod,
    stats: list[tuple[str, int, int]],
    spine: list[tuple[str, int | None]],
    hours: int,
) -> None:
    request = JoinRequest(
        CARRIER_STATS, ["flights_7d"], prefix="c_", tolerance=timedelta(hours=hours)
    )
    joined = point_in_time_join(
        _spine(spine), "ts", [(request, _stats(stats))], keep_event_times=True, method=method
    )
    matched = joined.filter(pl.col("c_event_time").is_not_null())
    assert ((matched["ts"] - matched["c_event_time"]) <= timedelta(hours=hours)).all()


@METHODS
def test_rows_sharing_key_and_time_are_not_collapsed(method: PitJoinMethod) -> None:
    spine = _spine([("AA", 5), ("AA", 5), ("AA", 5)])
    joined = point_in_time_join(spine, "ts", [(REQUEST, _stats([("AA", 1, 7)]))], method=method)
    assert joined["c_flights_7d"].to_list() == [7, 7, 7]


@METHODS
def test_spine_keys_map_to_differently_named_group_keys(method: PitJoinMethod) -> None:
    spine = pl.DataFrame(
        {"airline": ["UA"], "ts": [T0 + timedelta(hours=3)]},
        schema={"airline": pl.Categorical, "ts": pl.Datetime("us", "UTC")},
    )
    request = JoinRequest(CARRIER_STATS, ["flights_7d"], spine_keys=["airline"], prefix="c_")
    joined = point_in_time_join(
        spine, "ts", [(request, _stats([("UA", 2, 11), ("UA", 4, 12)]))], method=method
    )
    assert joined["c_flights_7d"].to_list() == [11]


@METHODS
def test_unknown_feature_is_a_clear_error(method: PitJoinMethod) -> None:
    request = JoinRequest(CARRIER_STATS, ["no_such_feature"])
    with pytest.raises(ValueError, match="no_such_feature"):
        point_in_time_join(
            _spine([("AA", 1)]), "ts", [(request, _stats([("AA", 0, 1)]))], method=method
        )


def test_the_setting_chooses_the_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTI_PIT_JOIN", "library")
    store = open_feature_store(FeatureStoreSettings(data_root=tmp_path))
    try:
        assert isinstance(store, LocalFeatureStore)
        assert store.pit_join is PitJoinMethod.library
    finally:
        store.close()
    monkeypatch.setenv("FTI_PIT_JOIN", "fastest")
    with pytest.raises(ValidationError, match="'library' or 'native'"):
        FeatureStoreSettings(data_root=tmp_path)


# -- the algorithm's own edge cases, against a brute-force oracle ---------------------------------
#
# The native method encodes keys as integers, turns event times into ranks, and reads each match
# from a (key, rank) table (or a binary search when the table would be too sparse; or renumbered
# keys when a multi-column key has too many combinations); its paths are forced in turn (the
# library method ignores them). Both methods are checked on: one- and
# two-column keys of text, categorical and integer types, keys only in the spine, null keys on
# both sides, null timestamps on both sides, rows sharing key and event time in the group,
# instants before 1970, tolerances, and shuffled input.


def _keyed_group(dtype: pl.DataType, n_keys: int) -> FeatureGroup:
    keys = [f"k{i}" for i in range(n_keys)]
    schema = pa.DataFrameSchema(
        {
            **{k: pa.Column(dtype, nullable=True) for k in keys},
            "valid_from": pa.Column(pl.Datetime("us", "UTC"), nullable=True),
            "value": pa.Column(pl.Int32),
        }
    )
    return FeatureGroup(
        name="keyed",
        version=1,
        primary_key=tuple(keys),
        event_time="valid_from",
        schema=schema,
        online=False,
        description="test group",
    )


# Text keys: short (read from their Arrow views), up to 7 bytes (a value that differs only by a
# trailing NUL byte must not match), and longer (coded by an Enum cast instead).
KEY_VALUES: dict[str, list[str] | list[int]] = {
    "text": ["a", "b"],
    "7-byte text": ["N14228", "N1422"],
    "long text": ["a-very-long-key", "a"],
    "integer": [-3, 7],
}
SPINE_ONLY = {
    "text": "z",
    "7-byte text": "N14228\x00",
    "long text": "a-very-long-kez",
    "integer": 99,
}
BASES = [datetime(2013, 1, 1, tzinfo=UTC), datetime(1955, 6, 1, tzinfo=UTC)]  # before 1970 too

Row = tuple[tuple[object, ...], int | None, int]  # keys, minute offset (None: null time), value


@st.composite
def join_cases(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "7-byte text", "long text", "categorical", "integer"]))
    values = KEY_VALUES["text" if kind == "categorical" else kind]
    only = SPINE_ONLY["text" if kind == "categorical" else kind]
    n_keys = draw(st.sampled_from([1, 2]))
    group_key = st.sampled_from([*values, None])
    spine_key = st.sampled_from([*values, only, None])
    # Whole hours in a narrow range (many shared event times, an hourly grid), or any minute of
    # the first two hours (times between grid points, no grid coarser than a minute).
    minutes = st.one_of(st.none(), st.integers(0, 30).map(lambda h: 60 * h), st.integers(0, 120))
    group_rows = st.tuples(st.tuples(*[group_key] * n_keys), minutes, st.integers(0, 10_000))
    spine_rows = st.tuples(st.tuples(*[spine_key] * n_keys), st.one_of(minutes, st.just(-120)))
    return {
        "kind": kind,
        "n_keys": n_keys,
        "base": draw(st.sampled_from(BASES)),
        "group": draw(st.lists(group_rows, max_size=40)),
        "spine": [(*row, 0) for row in draw(st.lists(spine_rows, max_size=40))],
        "tolerance": draw(st.one_of(st.none(), st.integers(0, 600).map(timedelta_minutes))),
        "path": draw(st.sampled_from(["table", "search", "renumbered keys"])),
        "threads": draw(st.sampled_from([1, 3])),  # spine rows matched in 1 or 3 ranges
        "seed": draw(st.integers(0, 2**16)),
    }


def timedelta_minutes(minutes: int) -> timedelta:
    return timedelta(minutes=minutes)


def _frame(case: dict[str, Any], rows: list[Row], time_column: str) -> pl.DataFrame:
    dtype = {"categorical": pl.Categorical, "integer": pl.Int64}.get(case["kind"], pl.String)
    base = case["base"]
    columns: dict[str, list[Any]] = {
        f"k{i}": [r[0][i] for r in rows] for i in range(case["n_keys"])
    }
    columns[time_column] = [None if r[1] is None else base + timedelta(minutes=r[1]) for r in rows]
    columns["value"] = [r[2] for r in rows]
    schema = {
        **{f"k{i}": dtype for i in range(case["n_keys"])},
        time_column: pl.Datetime("us", "UTC"),
        "value": pl.Int32,
    }
    return pl.DataFrame(columns, schema=schema)


def _brute_force(case: dict[str, Any]) -> list[int | None]:
    """Per spine row: among group rows with equal, non-null keys and a non-null event time at or
    before the spine's (within the tolerance), the latest; of those, the last one given."""
    tolerance = case["tolerance"]
    out: list[int | None] = []
    for keys, minute, _ in case["spine"]:
        best: tuple[int, int] | None = None  # (event minute, position)
        for position, (group_keys, event, _) in enumerate(case["group"]):
            if minute is None or event is None or None in keys or group_keys != keys:
                continue
            if event <= minute and (best is None or (event, position) >= best):
                best = (event, position)
        stale = tolerance is not None and best is not None
        if stale and timedelta(minutes=minute - best[0]) > tolerance:  # type: ignore[index,operator]
            best = None
        out.append(None if best is None else case["group"][best[1]][2])
    return out


def _force_path(patch: pytest.MonkeyPatch, path: str, threads: int = 1) -> None:
    patch.setattr(point_in_time_native, "_THREADS", threads)
    patch.setattr(point_in_time_native, "_MIN_PART_ROWS", 1)
    if path in ("search", "renumbered keys"):
        patch.setattr(point_in_time_native, "_TABLE_SLOTS_PER_ROW", 0)
    if path == "renumbered keys":
        patch.setattr(point_in_time_native, "_MAX_KEY_CODES", 1)


@METHODS
@settings(max_examples=400, deadline=None)
@given(case=join_cases())
def test_every_path_matches_brute_force(method: PitJoinMethod, case: dict[str, Any]) -> None:
    group = _keyed_group(pl.String, case["n_keys"])
    request = JoinRequest(group, ["value"], prefix="g_", tolerance=case["tolerance"])
    spine = _frame(case, case["spine"], "ts").drop("value")
    rows = _frame(case, case["group"], "valid_from")
    shuffled = rows.sample(fraction=1.0, shuffle=True, seed=case["seed"])
    with pytest.MonkeyPatch.context() as patch:
        _force_path(patch, case["path"], case["threads"])
        joined = point_in_time_join(
            spine, "ts", [(request, rows)], keep_event_times=True, method=method
        )
        on_shuffled = point_in_time_join(spine, "ts", [(request, shuffled)], method=method)
    assert_frame_equal(joined.select(spine.columns), spine)  # every row, in order, untouched
    assert joined["g_value"].to_list() == _brute_force(case)
    matched = joined.filter(pl.col("g_event_time").is_not_null())
    assert (matched["g_event_time"] <= matched["ts"]).all()
    if not case["group"] or len({(k, h) for k, h, _ in case["group"]}) == len(case["group"]):
        # Without rows sharing key and event time, the order of the group's rows is irrelevant.
        assert_frame_equal(on_shuffled, joined.drop("g_event_time"))


@METHODS
def test_rows_sharing_key_and_event_time_in_a_group_give_the_last_one(
    method: PitJoinMethod,
) -> None:
    stats = pl.DataFrame(
        {"carrier": ["AA", "AA", "AA"], "valid_from": [T0, T0, T0], "flights_7d": [1, 2, 3]},
        schema={
            "carrier": pl.String,
            "valid_from": pl.Datetime("us", "UTC"),
            "flights_7d": pl.Int32,
        },
    )
    joined = point_in_time_join(
        _spine([("AA", 1), ("AA", 0)]), "ts", [(REQUEST, stats)], method=method
    )
    assert joined["c_flights_7d"].to_list() == [3, 3]


@METHODS
def test_null_keys_never_match_not_even_a_null_key(method: PitJoinMethod) -> None:
    stats = pl.DataFrame(
        {"carrier": [None, "AA"], "valid_from": [T0, None], "flights_7d": [1, 2]},
        schema={
            "carrier": pl.String,
            "valid_from": pl.Datetime("us", "UTC"),
            "flights_7d": pl.Int32,
        },
    )
    joined = point_in_time_join(
        _spine([(None, 5), ("AA", 5)]), "ts", [(REQUEST, stats)], method=method
    )
    assert joined["c_flights_7d"].to_list() == [None, None]  # a null event time never matches


@METHODS
def test_output_has_spine_columns_then_prefixed_features_with_group_dtypes(
    method: PitJoinMethod,
) -> None:
    stats = _stats([("AA", 1, 7)]).with_columns(pl.lit(0.5, pl.Float32).alias("delay_rate_7d"))
    request = JoinRequest(CARRIER_STATS, ["delay_rate_7d", "flights_7d"], prefix="c_")
    spine = _spine([("AA", 3), ("UA", 3)]).with_columns(pl.lit("x").alias("flight_id"))
    joined = point_in_time_join(
        spine, "ts", [(request, stats)], keep_event_times=True, method=method
    )
    assert joined.schema == pl.Schema(
        {
            **spine.schema,
            "c_event_time": pl.Datetime("us", "UTC"),
            "c_delay_rate_7d": pl.Float32,
            "c_flights_7d": pl.Int32,
        }
    )
    assert joined.row(1)[3:] == (None, None, None)


@METHODS
def test_empty_spine_and_empty_group(method: PitJoinMethod) -> None:
    empty_spine = _spine([]).clear()
    assert (
        point_in_time_join(
            empty_spine, "ts", [(REQUEST, _stats([("AA", 1, 7)]))], method=method
        ).height
        == 0
    )
    joined = point_in_time_join(_spine([("AA", 3)]), "ts", [(REQUEST, _stats([]))], method=method)
    assert joined["c_flights_7d"].to_list() == [None]


@METHODS
def test_date_spine_with_a_tolerance_in_days(method: PitJoinMethod) -> None:
    spine = pl.DataFrame(
        {"carrier": ["AA", "AA"], "day": [date(2013, 1, 10), date(2013, 1, 20)]},
        schema={"carrier": pl.String, "day": pl.Date},
    )
    stats = _stats([("AA", 24 * 5, 7)])  # valid from 2013-01-06
    request = JoinRequest(CARRIER_STATS, ["flights_7d"], prefix="c_", tolerance=timedelta(days=7))
    joined = point_in_time_join(spine, "day", [(request, stats)], method=method)
    assert joined["c_flights_7d"].to_list() == [7, None]


@METHODS
def test_tolerance_on_a_non_temporal_timestamp_is_a_clear_error(method: PitJoinMethod) -> None:
    spine = pl.DataFrame({"carrier": ["AA"], "ts": [5]})
    request = JoinRequest(CARRIER_STATS, ["flights_7d"], tolerance=timedelta(hours=1))
    with pytest.raises(ValueError, match="tolerance needs a Date or Datetime"):
        point_in_time_join(spine, "ts", [(request, _stats([("AA", 1, 7)]))], method=method)


@METHODS
def test_missing_spine_key_is_a_clear_error(method: PitJoinMethod) -> None:
    with pytest.raises(ValueError, match="spine has no key columns"):
        point_in_time_join(
            _spine([("AA", 1)]).drop("carrier"), "ts", [(REQUEST, _stats([]))], method=method
        )


@METHODS
def test_times_between_event_times_see_the_earlier_one_on_and_off_a_grid(
    method: PitJoinMethod,
) -> None:
    minute = timedelta(minutes=1)
    stats = pl.DataFrame(
        {
            "carrier": ["AA", "AA", "UA", "UA"],
            "valid_from": [T0, T0 + 30 * minute, T0, T0 + 60 * minute],  # off / on the hour
            "flights_7d": [1, 2, 3, 4],
        },
        schema={"carrier": pl.String, "valid_from": UTC_US, "flights_7d": pl.Int32},
    )
    spine = pl.DataFrame(
        {
            "carrier": ["AA", "AA", "UA", "UA"],
            "ts": [T0 + 10 * minute, T0 + 40 * minute, T0 + 59 * minute, T0 + 60 * minute],
        },
        schema={"carrier": pl.String, "ts": UTC_US},
    )
    joined = point_in_time_join(spine, "ts", [(REQUEST, stats)], method=method)
    assert joined["c_flights_7d"].to_list() == [1, 2, 3, 4]


@METHODS
def test_many_short_text_keys_and_unknown_ones(method: PitJoinMethod) -> None:
    """Thousands of tail-number-like keys (a hash table where some keys sit past their first
    slot), spine keys no group has, keys differing only by length or a trailing NUL, nulls."""
    known = [f"N{i}" for i in range(3000)]
    unknown = [f"X{i}" for i in range(500)] + ["N1\x00", "N12345\x00", "", "N"]
    stats = pl.DataFrame(
        {"carrier": known, "valid_from": [T0] * len(known), "flights_7d": range(len(known))},
        schema={"carrier": pl.String, "valid_from": UTC_US, "flights_7d": pl.Int32},
    )
    keys = [*known[::-1], *unknown, None]
    spine = _spine([(k, 1) for k in keys])  # type: ignore[misc]
    joined = point_in_time_join(spine, "ts", [(REQUEST, stats)], method=method)
    number = {k: i for i, k in enumerate(known)}
    assert joined["c_flights_7d"].to_list() == [number.get(k) for k in keys]  # type: ignore[arg-type]


@METHODS
def test_spine_slices_and_chunks_are_read_in_place_correctly(method: PitJoinMethod) -> None:
    """Short texts are read from the Arrow views: a sliced or many-chunk spine column too."""
    stats = _stats([("AA", 0, 1), ("UA", 0, 2), ("DL", 0, 3)])
    parts = [_spine([("UA", 1), ("AA", 1)]), _spine([("DL", 1), ("ZZ", 1), ("UA", 1)])]
    spine = pl.concat(parts, rechunk=False).slice(1, 4)
    assert spine["carrier"].n_chunks() == 2
    joined = point_in_time_join(spine, "ts", [(REQUEST, stats)], method=method)
    assert joined["c_flights_7d"].to_list() == [1, 3, None, 2]


@METHODS
def test_tolerance_is_exact_to_the_unit_between_event_times(method: PitJoinMethod) -> None:
    """The tolerance holds to the time unit, between a group's event times (here one hour
    apart, a tolerance 2 us short of it) and at them."""
    us, hour = timedelta(microseconds=1), T0 + timedelta(hours=1)
    stats = pl.DataFrame(
        {"carrier": ["AA", "UA"], "valid_from": [T0, hour], "flights_7d": [1, 2]},
        schema={"carrier": pl.String, "valid_from": UTC_US, "flights_7d": pl.Int32},
    )
    spine = pl.DataFrame(
        {"carrier": ["AA"] * 5, "ts": [T0, hour - 3 * us, hour - 2 * us, hour - us, hour]},
        schema={"carrier": pl.String, "ts": UTC_US},
    )
    request = JoinRequest(
        CARRIER_STATS, ["flights_7d"], prefix="c_", tolerance=timedelta(hours=1) - 2 * us
    )
    joined = point_in_time_join(spine, "ts", [(request, stats)], method=method)
    assert joined["c_flights_7d"].to_list() == [1, 1, 1, None, None]
