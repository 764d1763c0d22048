"""The fresh window features from the indexes kept with the SQLite store's held rows
(`recent_departure_held`) equal the row path's on the rows the batch read, bit for bit, through
micro-batches of events and schedule, restatements, cancellations and the horizon's pruning;
an index is built once per held rows and declines what the row path would."""

from __future__ import annotations

from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.recent_departure_rows as rows_module
from shared.feature_definitions import DEPARTURE_EVENTS, DEPARTURE_SCHEDULE
from shared.feature_store.online_sqlite import SQLiteOnlineStore
from shared.feature_store.protocol import HeldRows
from shared.fresh_features import (
    FreshFeatures,
    FreshReads,
    held_fresh_values,
    online_fresh_columns,
    online_fresh_reads,
)
from shared.prediction_time import epoch_us
from shared.recent_departure_rows import recent_departure_held

pytestmark = pytest.mark.integration

T0 = datetime(2013, 12, 31, 14, 0, tzinfo=UTC)
ORIGINS = ["EWR", "JFK", "LGA"]
CARRIERS = ["UA", "AA"]
TAILS = ["N1", "N2", "N3", None]
FRESH = FreshFeatures()

# (flight number, origin, carrier, tail, scheduled minute after T0, delay: whole minutes,
# a fraction, or None for a cancellation)
_FLIGHT = st.tuples(
    st.integers(0, 30),
    st.sampled_from(ORIGINS),
    st.sampled_from(CARRIERS),
    st.sampled_from(TAILS),
    st.integers(-26 * 60, 12 * 60),
    st.one_of(
        st.none(),
        st.integers(-120, 300).map(float),
        st.integers(-120, 300).map(float),
        st.floats(-10, 60, allow_nan=False).filter(lambda d: not d.is_integer()),
    ),
)
# (origin, carrier, tail, minute after T0 of T)
_QUERY = st.tuples(
    st.sampled_from([*ORIGINS, *ORIGINS, None]),
    st.sampled_from([*CARRIERS, None]),
    st.sampled_from(TAILS),
    st.integers(-24 * 60, 14 * 60),
)


def _at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def _events(flights: list[tuple[Any, ...]]) -> pl.DataFrame:
    """One departure event per flight (the last spec of a flight number wins: a restatement
    within the micro-batch would be two rows of one key)."""
    latest = {f[0]: f for f in flights}.values()
    return DEPARTURE_EVENTS.conform(
        pl.DataFrame(
            {
                "flight_id": [f"f{n}-{o}" for n, o, *_ in latest],
                "event_at": [_at(s + (d if d is not None else 0)) for *_, s, d in latest],
                "origin": [f[1] for f in latest],
                "carrier": [f[2] for f in latest],
                "tailnum": [f[3] for f in latest],
                "sched_dep_utc": [_at(f[4]) for f in latest],
                "dep_delay": [f[5] for f in latest],
                "is_cancelled": [f[5] is None for f in latest],
            }
        )
    )


def _schedule(flights: list[tuple[Any, ...]]) -> pl.DataFrame:
    latest = {f[0]: f for f in flights}.values()
    return DEPARTURE_SCHEDULE.conform(
        pl.DataFrame(
            {
                "flight_id": [f"f{n}-{o}" for n, o, *_ in latest],
                "sched_dep_utc": [_at(f[4]) for f in latest],
                "origin": [f[1] for f in latest],
                "carrier": [f[2] for f in latest],
            }
        )
    )


def _reads(queries: list[tuple[Any, ...]]) -> FreshReads:
    requests = [
        {"origin": o, "carrier": c, "tailnum": t, "flight_date": _at(m).date()}
        for o, c, t, m in queries
    ]
    return online_fresh_reads(requests, [epoch_us(_at(m)) for *_, m in queries])


def _both_paths(
    store: SQLiteOnlineStore, reads: FreshReads, watermark: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """(the features as the store answered, the features from plain copies of the same rows,
    whether the held indexes answered)."""
    found = store.read_ranges(list(reads.ranges))
    progress = [{"watermark": watermark}]
    plain = [[list(rows) for rows in ranges] for ranges in found]
    held = held_fresh_values(FRESH, reads, found, watermark, None) is not None
    return (
        online_fresh_columns(FRESH, reads, progress, found),
        online_fresh_columns(FRESH, reads, progress, plain),
        held,
    )


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    writes=st.lists(st.lists(_FLIGHT, min_size=1, max_size=12), min_size=1, max_size=5),
    batches=st.lists(st.lists(_QUERY, min_size=1, max_size=8), min_size=1, max_size=4),
    watermark_min=st.integers(-6 * 60, 14 * 60),
    fractions=st.booleans(),
)
def test_the_held_indexes_give_the_row_paths_numbers_through_writes(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[list[tuple[Any, ...]]],
    batches: list[list[tuple[Any, ...]]],
    watermark_min: int,
    fractions: bool,
) -> None:
    if not fractions:  # most examples: whole minutes, as the data hold, where the held path runs
        writes = [
            [(*f[:5], f[5] if f[5] is None else float(round(f[5]))) for f in w] for w in writes
        ]
    path = tmp_path_factory.mktemp("held") / "online.sqlite"
    watermark = epoch_us(_at(watermark_min))
    with closing(SQLiteOnlineStore(path)) as store:
        for flights in writes:
            store.write(DEPARTURE_SCHEDULE, _schedule(flights))
            store.write(DEPARTURE_EVENTS, _events(flights))
            # Each batch twice: the second from the indexes the first built.
            for queries in [*batches, *batches]:
                reads = _reads(queries)
                held, plain, _ = _both_paths(store, reads, watermark)
                assert list(held) == list(plain) == list(FRESH.features)
                for name in FRESH.features:
                    assert held[name].dtype == plain[name].dtype, name
                    np.testing.assert_array_equal(held[name], plain[name], err_msg=name)


def _write_day(store: SQLiteOnlineStore, delays: dict[int, float | None]) -> None:
    flights = [
        (n, "EWR", "UA", "N1" if n % 2 else "N2", n * 20 - 200, d) for n, d in delays.items()
    ]
    store.write(DEPARTURE_SCHEDULE, _schedule(flights))
    store.write(DEPARTURE_EVENTS, _events(flights))


def test_an_origin_index_is_built_once_per_held_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[int] = []
    index = rows_module._index_origin

    def counted(events: Any, schedule: Any) -> Any:
        built.append(1)
        return index(events, schedule)

    monkeypatch.setattr(rows_module, "_index_origin", counted)
    with closing(SQLiteOnlineStore(tmp_path / "online.sqlite")) as store:
        _write_day(store, {n: float(n) for n in range(12)})
        queries = [("EWR", "UA", "N1", 10), ("EWR", "AA", None, 40)]
        for _ in range(3):
            assert _both_paths(store, _reads(queries), epoch_us(T0))[2]
        assert len(built) == 1
        _write_day(store, {12: 5.0})  # the events move: a new index from the new held rows
        held, plain, used = _both_paths(store, _reads(queries), epoch_us(T0))
        assert used and len(built) == 2
        np.testing.assert_array_equal(
            held["origin_departures_120m"], plain["origin_departures_120m"]
        )


def test_a_delay_the_row_path_declines_sends_the_batch_down_the_row_path(
    tmp_path: Path,
) -> None:
    """A fractional delay among the origin's held departures, or among an aircraft's at a
    query's origin: the held path declines, and the batch gets the row path's numbers."""
    with closing(SQLiteOnlineStore(tmp_path / "online.sqlite")) as store:
        _write_day(store, {0: 5.0, 1: 7.5, 2: 3.0})
        reads = _reads([("EWR", "UA", "N1", 10)])
        held, plain, used = _both_paths(store, reads, epoch_us(T0))
        assert not used
        for name in FRESH.features:
            np.testing.assert_array_equal(held[name], plain[name], err_msg=name)


def test_an_index_declines_a_second_row_of_a_flight_or_a_departure_the_schema_refuses() -> None:
    """The held rows are exact only for what the departure groups admit: one row per flight,
    no departure more than two hours early. Rows that break either are left to the row path."""
    at = epoch_us(T0)
    minute = 60_000_000

    def event(flight: str, moment: int, sched: int) -> dict[str, Any]:
        return {
            "flight_id": flight,
            "event_at": moment,
            "is_cancelled": 0,
            "origin": "EWR",
            "carrier": "UA",
            "tailnum": "N1",
            "dep_delay": float((moment - sched) // minute),
            "sched_dep_utc": sched,
        }

    fine = [event("a", at, at), event("b", at + minute, at)]
    twice = [*fine, event("a", at + 2 * minute, at)]
    early = [event("c", at - 121 * minute, at)]
    queries = _reads([("EWR", "UA", "N1", 30)]).queries

    def held(rows: list[dict[str, Any]]) -> dict[str, np.ndarray] | None:
        events = HeldRows(rows, rows, {})
        schedule = HeldRows([], [], {})
        return recent_departure_held(
            {"EWR": events},
            {"EWR": schedule},
            {"N1": HeldRows(rows, rows, {})},
            queries,
            covered_until=at + 60 * minute,
            tolerance_us=0,
        )

    assert held(fine) is not None
    assert held(twice) is None
    assert held(early) is None


def test_a_query_whose_aircraft_range_is_empty_still_takes_the_held_path(tmp_path: Path) -> None:
    """T before the flight's local midnight: nothing is read for its aircraft (the range is
    empty), and no departure of today can count."""
    with closing(SQLiteOnlineStore(tmp_path / "online.sqlite")) as store:
        _write_day(store, {n: float(n) for n in range(6)})
        requests = [
            {"origin": "EWR", "carrier": "UA", "tailnum": "N1", "flight_date": date(2014, 1, 1)}
        ]
        reads = online_fresh_reads(requests, [epoch_us(T0)])
        held, plain, used = _both_paths(store, reads, epoch_us(T0))
        assert used
        assert np.isnan(held["tail_last_dep_delay"][0])
        for name in FRESH.features:
            np.testing.assert_array_equal(held[name], plain[name], err_msg=name)
