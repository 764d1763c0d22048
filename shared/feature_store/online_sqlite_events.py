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
from shared.feature_store.online_codec import storable
from shared.feature_store.protocol import OnlineRange, OnlineRangeLookup

_CHUNK = 2_000  # rows per write transaction: other writers wait at most for one
_DAY = "__day"  # UTC day of the event time: the first part of every key
_US_PER_DAY = 86_400_000_000
# How long a writer waits for another process's write transaction (readers keep the store's
# short busy timeout: a request never waits long).
_WRITER_WAIT_S = 30.0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def index_table(group: FeatureGroup, index: Sequence[str]) -> str:
    return f"{group.table_name}__by_{'_'.join(index)}"


class SQLiteEventTables:
    """The event-group part of `SQLiteOnlineStore`; the caller holds the store's lock."""

    def __init__(self, sql_type: Any) -> None:
        self._sql_type = sql_type
        self._conn: sqlite3.Connection | None = None  # the store's, passed in by every call
        self._ready: set[str] = set()
        self._inserts: dict[tuple[str, tuple[str, ...]], str] = {}
        self._selects: dict[tuple[str, tuple[str, ...], int], str] = {}  # ... days read

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

    def _select(self, group: FeatureGroup, index: tuple[str, ...], days: int) -> str:
        """Rows of one key in an event-time range that spans ``days`` UTC days: equality on
        each day and the key, then the range (one ordered scan per day)."""
        sql = self._selects.get((group.table_name, index, days))
        if sql is None:
            names = ", ".join(_ident(c) for c in group.columns)
            match = " AND ".join(f"{_ident(c)} = ?" for c in index)
            event = _ident(group.event_time)
            sql = (
                f"SELECT {names} FROM {_ident(index_table(group, index))} "
                f"WHERE {_ident(_DAY)} IN ({', '.join('?' * days)}) AND {match} "
                f"AND {event} >= ? AND {event} < ? ORDER BY {event}"
            )
            self._selects[(group.table_name, index, days)] = sql
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
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreUnavailable(f"online write to {group.table_name} failed: {exc}") from exc

    def ranges(self, conn: sqlite3.Connection, lookup: OnlineRangeLookup) -> list[OnlineRange]:
        """One ordered scan per key and UTC day of its range."""
        self._use(conn)
        group = lookup.group
        self._ensure(group)
        columns = group.columns
        found: list[OnlineRange] = []
        try:
            for values, start, end in zip(lookup.keys, lookup.start_us, lookup.end_us, strict=True):
                if None in values or start >= end:
                    found.append([])
                    continue
                days = list(range(start // _US_PER_DAY, (end - 1) // _US_PER_DAY + 1))
                select = self._select(group, lookup.index, len(days))
                rows = self._db.execute(select, (*days, *values, start, end)).fetchall()
                found.append([dict(zip(columns, row, strict=True)) for row in rows])
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
