"""The SQLite online store's as-of reads from memory (`online_sqlite_cache`) answer what the
file holds at the last commit: the same rows as SQL, another process's write seen by the next
read, a table renamed under it not served from memory."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import StoreUnavailable
from shared.feature_store.online_sqlite import SQLiteOnlineStore
from shared.feature_store.online_sqlite_cache import GENERATIONS_TABLE
from shared.feature_store.protocol import OnlineLookup
from tests.integration.test_online_stores import HOURLY, as_of, hourly_rows

pytestmark = pytest.mark.integration


def _temps(store: SQLiteOnlineStore, keys: list[str], times: list[int | None]) -> list[Any]:
    as_of_times = None if all(t is None for t in times) else times
    [rows] = store.read_rows([OnlineLookup(HOURLY, [(k,) for k in keys], as_of_times)])  # type: ignore[arg-type]
    return [None if row is None else (row["origin"], row["temp"]) for row in rows]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    writes=st.lists(
        st.tuples(st.sampled_from(["EWR", "JFK", "LGA"]), st.integers(0, 30)),
        min_size=1,
        max_size=20,
    ),
    reads=st.lists(
        st.tuples(st.sampled_from(["EWR", "JFK", "LGA", "SEA"]), st.floats(-3, 35)),
        min_size=1,
        max_size=8,
    ),
    max_rows=st.sampled_from([1, 3, 200_000]),
)
def test_reads_from_memory_equal_reads_with_sql(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[tuple[str, int]],
    reads: list[tuple[str, float]],
    max_rows: int,
) -> None:
    """Writes interleaved with reads, the cache small enough to start over or not: every read
    equals the same read by a store that reads every row with SQL."""
    path = tmp_path_factory.mktemp("cache") / "online.sqlite"
    with (
        closing(SQLiteOnlineStore(path, cache_rows=max_rows)) as cached,
        closing(SQLiteOnlineStore(path, cache_rows=0)) as plain,
    ):
        for origin, hour in writes:
            cached.write(HOURLY, hourly_rows([hour], origin))
            for _ in range(2):  # the second read is served from memory
                keys = [k for k, _ in reads]
                times: list[int | None] = [as_of(t) for _, t in reads]
                assert _temps(cached, keys, times) == _temps(plain, keys, times)
            assert _temps(cached, keys, [None] * len(keys)) == _temps(
                plain, keys, [None] * len(keys)
            )


def test_a_write_by_another_process_is_read_next(cached: SQLiteOnlineStore, path: Path) -> None:
    cached.write(HOURLY, hourly_rows([0, 1]))
    assert _temps(cached, ["EWR"], [as_of(5)]) == [("EWR", 1.0)]  # now held in memory
    with closing(SQLiteOnlineStore(path)) as other:  # another connection, as another process
        other.write(HOURLY, hourly_rows([2]))
    assert _temps(cached, ["EWR"], [as_of(5)]) == [("EWR", 2.0)]


def test_a_table_renamed_under_the_store_is_not_served_from_memory(
    cached: SQLiteOnlineStore, path: Path
) -> None:
    cached.write(HOURLY, hourly_rows([0]))
    assert _temps(cached, ["EWR"], [as_of(1)]) == [("EWR", 0.0)]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(f'ALTER TABLE "{HOURLY.table_name}" RENAME TO "away"')
    with pytest.raises(StoreUnavailable, match=HOURLY.table_name):
        _temps(cached, ["EWR"], [as_of(1)])


def test_a_table_without_a_generation_is_read_with_sql_every_time(
    cached: SQLiteOnlineStore, path: Path
) -> None:
    """Rows put in by hand, not through ``write``: without a generation the table is never held
    in memory, so they are read at once."""
    cached.write(HOURLY, hourly_rows([0]))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(f"DELETE FROM {GENERATIONS_TABLE}")
        assert _temps(cached, ["EWR"], [as_of(3)]) == [("EWR", 0.0)]
        db.execute(
            f'UPDATE "{HOURLY.table_name}" SET temp = 9.0 WHERE observed_at = ?', (as_of(0),)
        )
    assert _temps(cached, ["EWR"], [as_of(3)]) == [("EWR", 9.0)]


def test_a_second_read_of_the_same_keys_reads_no_row_from_the_file(
    cached: SQLiteOnlineStore,
) -> None:
    cached.write(HOURLY, hourly_rows([0, 1, 2]))
    statements: list[str] = []
    cached._conn.set_trace_callback(statements.append)
    assert _temps(cached, ["EWR", "JFK"], [as_of(1.5), as_of(9)]) == [("EWR", 1.0), None]
    assert any(HOURLY.table_name in s for s in statements)  # the first read fetched the keys
    statements.clear()
    assert _temps(cached, ["EWR", "JFK"], [as_of(2.5), as_of(0.5)]) == [("EWR", 2.0), None]
    assert statements and not any(HOURLY.table_name in s for s in statements), statements


def test_a_read_that_fills_the_bound_still_answers_the_keys_it_held(path: Path) -> None:
    """The bound starts a table's cache over; the keys of the read that crossed it, held
    before or fetched now, are all answered."""
    with (
        closing(SQLiteOnlineStore(path, cache_rows=2)) as cached,
        closing(SQLiteOnlineStore(path, cache_rows=0)) as plain,
    ):
        cached.write(HOURLY, hourly_rows([0, 1], "EWR").vstack(hourly_rows([0, 1], "JFK")))
        assert _temps(cached, ["EWR"], [as_of(5)]) == [("EWR", 1.0)]  # EWR's 2 rows held
        both = [as_of(5), as_of(0.5)]
        assert _temps(cached, ["EWR", "JFK"], both) == _temps(plain, ["EWR", "JFK"], both)
