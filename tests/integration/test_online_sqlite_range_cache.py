"""The SQLite online store's event-range reads from memory (`online_sqlite_range_cache`) answer
what the file holds at the last commit: the same rows as SQL through writes, restatements and
the horizon's pruning, another process's write seen by the next read, a second read inside a
held span served without touching the event table."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.feature_definitions import DEPARTURE_EVENTS
from shared.feature_store.online_sqlite import SQLiteOnlineStore
from shared.feature_store.online_sqlite_cache import GENERATIONS_TABLE
from shared.feature_store.online_sqlite_events import index_table
from shared.feature_store.protocol import HeldRows, OnlineRangeLookup
from shared.recent_departures import epoch_us
from tests.integration.test_online_event_groups import T0, by_origin, events

pytestmark = pytest.mark.integration

ORIGINS = ["EWR", "JFK", "LGA"]
TAILS = ["N1", "N2", None]
BY_ORIGIN = index_table(DEPARTURE_EVENTS, ("origin",))


def _minutes(at: int) -> int:
    return epoch_us(T0 + timedelta(minutes=at))


def _read(store: SQLiteOnlineStore, lookups: list[OnlineRangeLookup]) -> list[Any]:
    """Each lookup's ranges as (flight id, event time, delay) tuples."""
    return [
        [[(r["flight_id"], r["event_at"], r["dep_delay"]) for r in rows] for rows in ranges]
        for ranges in store.read_ranges(lookups)
    ]


def _lookups(reads: list[tuple[int, int, int]]) -> list[OnlineRangeLookup]:
    """Per read (key number, start minute, length in minutes): one range by origin and one by
    aircraft."""
    starts = [_minutes(s) for _, s, _ in reads]
    ends = [_minutes(s + n) for _, s, n in reads]
    return [
        OnlineRangeLookup(
            DEPARTURE_EVENTS, (column,), [(values[k % 3],) for k, _, _ in reads], starts, ends
        )
        for column, values in (("origin", ORIGINS), ("tailnum", TAILS))
    ]


_EVENT = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),  # flight: a restatement is a second row
    st.sampled_from(ORIGINS),
    st.sampled_from(TAILS),
    st.integers(-3 * 24 * 60, 2 * 24 * 60),  # minutes after T0: days pruned by the horizon
    st.one_of(st.none(), st.floats(-10, 120, allow_nan=False)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    writes=st.lists(st.lists(_EVENT, min_size=1, max_size=6), min_size=1, max_size=6),
    reads=st.lists(
        st.tuples(
            st.integers(0, 2), st.integers(-4 * 24 * 60, 2 * 24 * 60), st.integers(0, 36 * 60)
        ),
        min_size=1,
        max_size=6,
    ),
    max_rows=st.sampled_from([1, 4, 50_000]),
)
def test_reads_from_memory_equal_reads_with_sql(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[list[tuple[str, str, str | None, int, float | None]]],
    reads: list[tuple[int, int, int]],
    max_rows: int,
) -> None:
    """Micro-batches interleaved with reads, the cache small enough to start over or not:
    every read equals the same read by a store that reads every row with SQL."""
    path = tmp_path_factory.mktemp("ranges") / "online.sqlite"
    with (
        closing(SQLiteOnlineStore(path, range_cache_rows=max_rows)) as cached,
        closing(SQLiteOnlineStore(path, cache_rows=0, range_cache_rows=0)) as plain,
    ):
        for batch in writes:
            cached.write(DEPARTURE_EVENTS, events(*batch))
            # One read at a time (a later one may start before what a key holds), then all
            # together (served from memory), then narrower ranges inside them.
            for each in [*([read] for read in reads), reads, reads]:
                lookups = _lookups(each)
                assert _read(cached, lookups) == _read(plain, lookups)
            narrower = _lookups([(k, s + n // 3, n // 3) for k, s, n in reads])
            assert _read(cached, narrower) == _read(plain, narrower)


def test_a_write_by_another_process_is_read_next(cached: SQLiteOnlineStore, path: Path) -> None:
    cached.write(DEPARTURE_EVENTS, events(("a", "EWR", "N1", 0, 10.0)))
    assert _read(cached, [by_origin("EWR", -60, 60)]) == [[[("a", _minutes(0), 10.0)]]]
    with closing(SQLiteOnlineStore(path)) as other:  # another connection, as another process
        other.write(DEPARTURE_EVENTS, events(("b", "EWR", "N2", 5, 1.0)))
    assert _read(cached, [by_origin("EWR", -60, 60)]) == [
        [[("a", _minutes(0), 10.0), ("b", _minutes(5), 1.0)]]
    ]


def test_a_second_read_inside_the_held_span_reads_no_event_row(
    cached: SQLiteOnlineStore,
) -> None:
    cached.write(DEPARTURE_EVENTS, events(("a", "EWR", "N1", 0, 10.0), ("b", "EWR", "N1", 30, 2.0)))
    statements: list[str] = []
    cached._conn.set_trace_callback(statements.append)
    assert _read(cached, [by_origin("EWR", -60, 10)]) == [[[("a", _minutes(0), 10.0)]]]
    assert any(BY_ORIGIN in s for s in statements)  # the first read fetched EWR from -60 on
    statements.clear()
    # Later and narrower: inside what the first read held (from -60 to the newest row).
    assert _read(cached, [by_origin("EWR", 20, 60), by_origin("EWR", -30, 1)]) == [
        [[("b", _minutes(30), 2.0)]],
        [[("a", _minutes(0), 10.0)]],
    ]
    assert statements and not any(BY_ORIGIN in s for s in statements), statements
    # Earlier than what is held: read again from the new start.
    assert _read(cached, [by_origin("EWR", -120, 60)]) == [
        [[("a", _minutes(0), 10.0), ("b", _minutes(30), 2.0)]]
    ]
    assert any(BY_ORIGIN in s for s in statements)


def test_an_event_table_without_a_generation_is_read_with_sql_every_time(
    cached: SQLiteOnlineStore, path: Path
) -> None:
    """Rows put in by hand, not through ``write`` (or a file written before event tables had
    generations): the table is never held in memory, so they are read at once."""
    cached.write(DEPARTURE_EVENTS, events(("a", "EWR", "N1", 0, 10.0)))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(f"DELETE FROM {GENERATIONS_TABLE}")
        assert _read(cached, [by_origin("EWR", -60, 60)]) == [[[("a", _minutes(0), 10.0)]]]
        db.execute(f'UPDATE "{BY_ORIGIN}" SET dep_delay = 9.0')
    assert _read(cached, [by_origin("EWR", -60, 60)]) == [[[("a", _minutes(0), 9.0)]]]


def test_every_write_of_an_event_group_moves_each_index_tables_generation(
    cached: SQLiteOnlineStore, path: Path
) -> None:
    def generations() -> dict[str, int]:
        with closing(sqlite3.connect(path)) as db:
            return dict(db.execute(f"SELECT * FROM {GENERATIONS_TABLE}").fetchall())

    cached.write(DEPARTURE_EVENTS, events(("a", "EWR", "N1", 0, 10.0)))
    before = generations()
    tables = [index_table(DEPARTURE_EVENTS, index) for index in DEPARTURE_EVENTS.online_indexes]
    assert all(table in before for table in tables)
    cached.write(DEPARTURE_EVENTS, events(("b", "JFK", None, 0, 1.0)))  # no aircraft row
    after = generations()
    assert all(after[table] > before[table] for table in tables)


def test_a_read_far_before_the_held_days_scans_only_those_days(
    cached: SQLiteOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backtest's ``as_of`` months back fills the key from its instant on, but scans only the
    days the table holds, not a seek for every empty day since."""
    cached.write(DEPARTURE_EVENTS, events(("a", "EWR", "N1", 0, 10.0), ("b", "EWR", "N1", 60, 1.0)))
    spans: list[tuple[int, int]] = []
    scan = cached._events._scan

    def recorded(group: Any, index: Any, keys: Any, starts: Any, ends: Any) -> Any:
        spans.extend(zip(starts, ends, strict=True))
        return scan(group, index, keys, starts, ends)

    monkeypatch.setattr(cached._events, "_scan", recorded)
    months = 200 * 24 * 60
    assert _read(cached, [by_origin("EWR", -months, 30)]) == [[[("a", _minutes(0), 10.0)]]]
    day_us = 86_400_000_000
    assert spans and all(end - start <= day_us for start, end in spans), spans
    assert _read(cached, [by_origin("EWR", -months, 90)]) == [
        [[("a", _minutes(0), 10.0), ("b", _minutes(60), 1.0)]]
    ]


def test_a_range_read_from_memory_comes_with_the_held_rows_and_their_memo(
    cached: SQLiteOnlineStore,
) -> None:
    """`HeldRows`: the key's held rows, and one memo per held rows, shared by every read they
    answer and replaced with them (a write, or a read from before what is held)."""
    cached.write(DEPARTURE_EVENTS, events(("a", "EWR", "N1", 0, 10.0), ("b", "EWR", "N1", 30, 2.0)))
    [[first]] = cached.read_ranges([by_origin("EWR", -60, 10)])
    [[second]] = cached.read_ranges([by_origin("EWR", 20, 60)])
    assert isinstance(first, HeldRows) and isinstance(second, HeldRows)
    assert [r["flight_id"] for r in first] == ["a"] and [r["flight_id"] for r in second] == ["b"]
    assert [r["flight_id"] for r in first.held] == ["a", "b"]
    assert first.memo is second.memo
    first.memo["derived"] = 1
    [[earlier]] = cached.read_ranges([by_origin("EWR", -120, 10)])  # held again from -120
    assert earlier.memo is not first.memo and "derived" not in earlier.memo
    cached.write(DEPARTURE_EVENTS, events(("c", "EWR", "N2", 40, 1.0)))
    [[after]] = cached.read_ranges([by_origin("EWR", -120, 60)])
    assert after.memo is not earlier.memo
    assert [r["flight_id"] for r in after.held] == ["a", "b", "c"]
