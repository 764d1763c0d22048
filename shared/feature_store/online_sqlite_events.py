"""Event groups in the SQLite online store: one clustered table per online index.

An event group (``FeatureGroup.online_indexes``, e.g. departure events by origin and by tail
number) is read by event-time range, never by primary key. Each index gets a table ``WITHOUT
ROWID`` keyed by (UTC day of the event, index columns, event time, primary key) and holding the
whole row, so a range read is one ordered scan of adjacent pages per day it spans, and the
stream's events, arriving in time order, all land among the current day's few pages: keyed by
tail number first, a micro-batch's events touched a page per aircraft (thousands), and each
commit rewrote them all into the WAL. Two B-trees for the departure events instead of the four
of a keyed table with two secondary indexes.

Upserts are idempotent and commute (``INSERT OR REPLACE`` on the full key): a redelivered event
changes nothing, and replicas writing at once need no coordination. An event restated with
another time or index value is a second row; readers keep a flight's latest event
(``shared.recent_departures``), as the offline path does with the offline rows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import polars as pl

from shared.errors import StoreUnavailable
from shared.feature_group import FeatureGroup
from shared.feature_store.online_codec import row_to_dict, storable
from shared.feature_store.online_sqlite_cache import bump_generation
from shared.feature_store.online_sqlite_range_cache import RangeCache
from shared.feature_store.protocol import OnlineRange, OnlineRangeLookup

_CHUNK = 2_000  # rows per write transaction: other writers wait at most for one
# SQLite caps bound parameters per statement (32,766 since 3.32): read big key sets in chunks.
MAX_PARAMS = 30_000
_KEPT_SELECTS = 256  # statements kept, by index and number of scans (the oldest dropped first)
_DAY = "__day"  # UTC day of the event time: the first part of every key
_US_PER_DAY = 86_400_000_000
# How long a writer waits for another process's write transaction (readers keep the store's
# short busy timeout: a request never waits long).
_WRITER_WAIT_S = 30.0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def keep(cache: dict[Any, str], key: Any, sql: str, limit: int) -> None:
    """Keep a built statement, dropping the oldest one kept when ``limit`` are."""
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = sql


def index_table(group: FeatureGroup, index: Sequence[str]) -> str:
    return f"{group.table_name}__by_{'_'.join(index)}"


class SQLiteEventTables:
    """The event-group part of `SQLiteOnlineStore`; the caller holds the store's lock."""

    def __init__(self, sql_type: Any) -> None:
        self._sql_type = sql_type
        self._conn: sqlite3.Connection | None = None  # the store's, passed in by every call
        self._ready: set[str] = set()
        self._inserts: dict[tuple[str, tuple[str, ...]], str] = {}
        self._selects: dict[tuple[str, tuple[str, ...], int], str] = {}  # ... scans

    def tables(self, group: FeatureGroup) -> list[str]:
        """The tables an event group lives in (none for another group)."""
        return [index_table(group, index) for index in group.online_indexes]

    def _use(self, conn: sqlite3.Connection) -> None:
        """The store reopens its file when another one replaced it: tables are checked anew."""
        if conn is not self._conn:
            self._conn = conn
            self._ready.clear()

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "a store method passes its connection first"
        return self._conn

    def _ensure(self, group: FeatureGroup) -> None:
        if group.table_name in self._ready:
            return
        columns = ", ".join(
            f"{_ident(n)} {self._sql_type(t)}" for n, t in group.polars_schema.items()
        )
        names = ", ".join(_ident(c) for c in (_DAY, *group.columns))
        marks = ", ".join("?" for _ in (_DAY, *group.columns))
        for index in group.online_indexes:
            key = ", ".join(_ident(c) for c in (_DAY, *index, group.event_time, *group.primary_key))
            table = _ident(index_table(group, index))
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ({_ident(_DAY)} INTEGER, {columns}, "
                f"PRIMARY KEY ({key})) WITHOUT ROWID"
            )
            self._inserts[(group.table_name, index)] = (
                f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"
            )
        self._ready.add(group.table_name)

    def _select(self, group: FeatureGroup, index: tuple[str, ...], scans: int) -> str:
        """The rows of ``scans`` (lookup number, UTC day, key, start, end) tuples, bound as a
        VALUES table and joined on the clustered key: one ordered range scan per tuple, all
        in one statement (one per key cost a statement's overhead each: a 100-flight request
        reads the ranges of about a hundred aircraft). Each row comes with its lookup number,
        in (lookup, event time) order."""
        sql = self._selects.get((group.table_name, index, scans))
        if sql is None:
            names = ", ".join(f"t.{_ident(c)}" for c in group.columns)
            width = len(index) + 4
            marks = ", ".join("(" + ", ".join("?" * width) + ")" for _ in range(scans))
            keys = " AND ".join(f"t.{_ident(c)} = q.column{i + 3}" for i, c in enumerate(index))
            event = f"t.{_ident(group.event_time)}"
            pk = ", ".join(f"t.{_ident(c)}" for c in group.primary_key)
            sql = (
                f"SELECT q.column1, {names} FROM (VALUES {marks}) AS q "
                f"JOIN {_ident(index_table(group, index))} AS t "
                f"ON t.{_ident(_DAY)} = q.column2 AND {keys} "
                f"AND {event} >= q.column{width - 1} AND {event} < q.column{width} "
                # the primary key breaks ties: the range cache's slices equal these reads
                f"ORDER BY q.column1, {event}, {pk}"
            )
            keep(self._selects, (group.table_name, index, scans), sql, _KEPT_SELECTS)
        return sql

    def write(self, conn: sqlite3.Connection, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """The rows into every index table (rows whose index columns are null have nothing to
        be found by there), each table's rows in its key order, in transactions of at most
        ``_CHUNK`` rows: readers and other writers (parallel backfills materializing) wait
        for one short transaction at a time, never for a whole backfill. With a horizon, only
        the days within it of the newest stored or written day are kept (older ones deleted,
        whole days at a time: the day leads the key). Returns the rows kept."""
        self._use(conn)
        self._ensure(group)
        stored = storable(group, rows).with_columns(
            (pl.col(group.event_time) // _US_PER_DAY).alias(_DAY)
        )
        floor = self._floor(group, stored)
        if floor is not None:
            stored = stored.filter(pl.col(_DAY) >= floor)
        for index in group.online_indexes:
            part = stored.drop_nulls(list(index)).select(_DAY, *group.columns)
            part = part.sort([_DAY, *index, group.event_time])
            insert = self._inserts[(group.table_name, index)]
            for start in range(0, part.height, _CHUNK):
                self._transaction(group, [(insert, part.slice(start, _CHUNK).rows())])
        if floor is not None:
            prune = f"DELETE FROM {{}} WHERE {_ident(_DAY)} < ?"
            self._transaction(
                group,
                [
                    (prune.format(_ident(index_table(group, index))), [(floor,)])
                    for index in group.online_indexes
                ],
            )
        return stored.height

    def _floor(self, group: FeatureGroup, stored: pl.DataFrame) -> int | None:
        """The first UTC day kept online (None: no horizon, or nothing to keep)."""
        if group.online_horizon is None or stored.is_empty():
            return None
        table = _ident(index_table(group, group.online_indexes[0]))
        held = self._db.execute(f"SELECT max({_ident(_DAY)}) FROM {table}").fetchone()[0]
        newest = max(int(stored[_DAY].max()), int(held) if held is not None else 0)  # type: ignore[arg-type]
        return newest - group.online_horizon // timedelta(days=1)

    def _transaction(
        self, group: FeatureGroup, statements: list[tuple[str, list[tuple[Any, ...]]]]
    ) -> None:
        deadline = time.monotonic() + _WRITER_WAIT_S
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:  # another process writes: wait our turn
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"online write to {group.table_name} failed: {exc}"
                    ) from exc
                time.sleep(0.01)
        try:
            for sql, values in statements:
                self._db.executemany(sql, values)
            for table in self.tables(group):  # range caches drop the tables (all: one prunes)
                bump_generation(self._db, table)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreUnavailable(f"online write to {group.table_name} failed: {exc}") from exc

    def ranges(
        self,
        conn: sqlite3.Connection,
        lookup: OnlineRangeLookup,
        cache: RangeCache | None = None,
    ) -> list[OnlineRange]:
        """Each key's rows in its range, oldest first: from ``cache`` where it holds the table
        (`online_sqlite_range_cache`), else one ordered scan per key and UTC day of its range,
        all in one statement (or one per chunk of bound parameters)."""
        self._use(conn)
        group = lookup.group
        self._ensure(group)
        if cache is not None:
            found = cache.ranges(
                index_table(group, lookup.index),
                group.event_time,
                lookup.keys,
                lookup.start_us,
                lookup.end_us,
                lambda missing: self._since(group, lookup.index, missing),
            )
            if found is not None:
                return found
        return self._scan(group, lookup.index, lookup.keys, lookup.start_us, lookup.end_us)

    def _since(
        self, group: FeatureGroup, index: tuple[str, ...], missing: list[tuple[Any, int]]
    ) -> dict[Any, OnlineRange]:
        """Each key's rows from its instant to the newest stored one (the range cache's fill),
        scanning only the days the table holds: an ``as_of`` months back would otherwise scan
        every empty day since (a seek each, per key)."""
        table = _ident(index_table(group, index))
        day = _ident(_DAY)
        try:
            oldest, newest = self._db.execute(
                # two subqueries: SQLite answers a lone min() or max() from the key's ends
                f"SELECT (SELECT min({day}) FROM {table}), (SELECT max({day}) FROM {table})"
            ).fetchone()
        except sqlite3.Error as exc:
            failed = f"online range read of {group.table_name} failed: {exc}"
            raise StoreUnavailable(failed) from exc
        if newest is None:
            return {}
        first = oldest * _US_PER_DAY
        keys = [key for key, _ in missing]
        starts = [max(since, first) for _, since in missing]
        ends = [(newest + 1) * _US_PER_DAY] * len(missing)
        return dict(zip(keys, self._scan(group, index, keys, starts, ends), strict=True))

    def _scan(
        self,
        group: FeatureGroup,
        index: tuple[str, ...],
        keys: Sequence[tuple[Any, ...]],
        starts: Sequence[int],
        ends: Sequence[int],
    ) -> list[OnlineRange]:
        as_dict = row_to_dict(tuple(group.columns), skip=1)  # after the lookup number
        scans = [
            (number, day, *values, start, end)
            for number, (values, start, end) in enumerate(zip(keys, starts, ends, strict=True))
            if None not in values and start < end
            for day in range(start // _US_PER_DAY, (end - 1) // _US_PER_DAY + 1)
        ]
        found: list[OnlineRange] = [[] for _ in keys]
        chunk = MAX_PARAMS // (len(index) + 4)
        try:
            for first in range(0, len(scans), chunk):
                part = scans[first : first + chunk]
                select = self._select(group, index, len(part))
                params = [value for scan in part for value in scan]
                for row in self._db.execute(select, params).fetchall():
                    found[row[0]].append(as_dict(row))
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"online range read of {group.table_name} failed: {exc}"
            ) from exc
        return found

    def row_count(self, conn: sqlite3.Connection, group: FeatureGroup) -> int:
        """Rows under the group's first index (every row, unless its index value is null)."""
        self._use(conn)
        self._ensure(group)
        table = _ident(index_table(group, group.online_indexes[0]))
        return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
