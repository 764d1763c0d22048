"""Online store in one SQLite file (WAL mode): the embedded default for a single host.

One table per group, keyed by primary key + event time: a key's newest row and the rows within
the group's ``online_history`` of it (older ones are deleted on write), so a read as of T picks
the row valid at T: per distinct (key, T), SQL seeks the key's newest row at or before T on the
primary key's index and returns that row alone (the tolerance is then checked as
``online_as_of`` does for the other stores), rather than every kept row of the key. A file
written by the older layout (the primary key alone: the newest row only) is converted on first
use, and its materialized version cleared so that the next materialization writes the history
too.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from shared.errors import StoreUnavailable
from shared.feature_group import FeatureGroup
from shared.feature_store.online_as_of import row_as_of
from shared.feature_store.online_codec import align_to_keys, from_storable, row_to_dict, storable
from shared.feature_store.online_sqlite_cache import (
    MAX_ROWS_PER_TABLE,
    AsOfCache,
    AsOfRows,
    bump_generation,
    create_generations,
    read_generations,
)
from shared.feature_store.online_sqlite_events import MAX_PARAMS, SQLiteEventTables, keep
from shared.feature_store.online_sqlite_range_cache import MAX_ROWS_PER_TABLE as RANGE_CACHE_ROWS
from shared.feature_store.online_sqlite_range_cache import RangeCache
from shared.feature_store.protocol import OnlineLookup, OnlineRange, OnlineRangeLookup, OnlineRow

log = logging.getLogger(__name__)

_SQL_TYPES = {
    pl.Int8: "INTEGER",
    pl.Int16: "INTEGER",
    pl.Int32: "INTEGER",
    pl.Int64: "INTEGER",
    pl.Float32: "REAL",
    pl.Float64: "REAL",
    pl.Boolean: "INTEGER",
    pl.String: "TEXT",
    pl.Date: "INTEGER",
}
# Statements kept (by group, size and kind; the oldest dropped first): a 100-flight request
# that built its statements anew spent a tenth of its store read quoting column names.
_KEPT_QUERIES = 512
_LATEST = 2**63 - 1  # the T of a lookup without one: a key's newest row
# How long opening waits for another process that is setting up the same file.
_SETUP_WAIT_S = 10.0
# How often reads look whether another file now stands at the store's path (one stat).
_IDENTITY_CHECK_S = 1.0


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode): which file is at ``path``; another after a replacement."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _sql_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "INTEGER"
    return _SQL_TYPES.get(dtype.base_type(), "TEXT")


def _set_up(conn: sqlite3.Connection, deadline: float) -> None:
    """WAL mode and the bookkeeping table, retried while another process sets up the same file.

    Switching a fresh file to WAL takes an exclusive lock, and SQLite answers "database is
    locked" at once (no busy wait) when two processes race for it, e.g. the ranks of a DDP
    training run opening the store together.
    """
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _materialization "
                "(table_name TEXT PRIMARY KEY, offline_version INTEGER NOT NULL)"
            )
            create_generations(conn)
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SQLiteOnlineStore:
    # A read is a few B-tree lookups in a local file, in the page cache once warm (tens of
    # microseconds per group). In WAL mode writers never block readers, and ``timeout_s`` (the
    # busy timeout) bounds the rare wait for a lock: safe on an event loop's thread.
    reads_in_process = True

    def __init__(
        self,
        path: Path,
        timeout_s: float = 1.0,
        cache_rows: int = MAX_ROWS_PER_TABLE,
        range_cache_rows: int = RANGE_CACHE_ROWS,
    ) -> None:
        """``cache_rows``: rows of each stateful group's table held in memory for as-of reads
        (`online_sqlite_cache`), ``range_cache_rows``: of each event table for range reads
        (`online_sqlite_range_cache`); 0 reads every row with SQL."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout_s = timeout_s
        self._sidecars: dict[Path, tuple[int, int]] = {}  # our WAL and shm files, by identity
        self._conn, self._identity = self._connect()
        self._next_identity_check = time.monotonic() + _IDENTITY_CHECK_S
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        # (table, keys, oldest bounded, newest bounded) or (table, pairs, "as_of") -> SELECT
        self._queries: dict[tuple[Any, ...], str] = {}
        self._events = SQLiteEventTables(_sql_type)  # event groups' tables
        self._cache = AsOfCache(cache_rows) if cache_rows > 0 else None
        self._range_cache = RangeCache(range_cache_rows) if range_cache_rows > 0 else None

    def _connect(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """A connection to the file at ``path`` now, and that file's identity."""
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout_s, check_same_thread=False, isolation_level=None
            )
            _set_up(conn, deadline=time.monotonic() + max(_SETUP_WAIT_S, self._timeout_s))
            self._sidecars = {}
            for sidecar in _sidecars(self.path):
                with contextlib.suppress(FileNotFoundError):
                    self._sidecars[sidecar] = _identity(sidecar)
            return conn, _identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"online store {self.path} unusable: {exc}") from exc

    # -- the file behind the connection ----------------------------------------------------

    def _follow_replacement(self) -> None:
        """Reopen when another file now stands at ``path`` (caller holds the lock): the one
        open connection would otherwise serve the replaced file for good. A missing file is
        left to `check` to report (the open one still serves: it was the store a moment ago)."""
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            return
        if now != self._identity:
            # Closed first: its WAL and shared-memory files are named after the path, and a
            # connection to the new file must not find the old file's there. If the new file
            # cannot be opened, reads fail (503) and the next look tries again.
            self._conn.close()
            self._ready.clear()
            self._drop_old_sidecars()
            self._conn, self._identity = self._connect()
            for cache in (self._cache, self._range_cache):
                if cache is not None:
                    cache.clear()
            log.warning("online store %s was replaced: reopened it", self.path)

    def _drop_old_sidecars(self) -> None:
        """Remove the WAL and shared-memory files the closed connection left at the path's
        names. SQLite neither checkpoints nor deletes them when the database file was moved
        or deleted under it, and opening the new file would replay the old file's WAL into
        it (seen: the old rows served from the new file). Files another process created for
        the new database since (other identities) are left alone."""
        for sidecar, identity in self._sidecars.items():
            with contextlib.suppress(FileNotFoundError):
                if _identity(sidecar) == identity:
                    sidecar.unlink()

    def check(self, groups: Sequence[FeatureGroup]) -> None:
        """Readiness: the file the next process would open is there (followed if replaced),
        and every group's table in it is readable. Raises `StoreUnavailable` naming it."""
        with self._lock:
            if not self.path.exists():
                raise StoreUnavailable(
                    f"online store {self.path} is gone (deleted or moved): the service still "
                    "reads the file it opened, a restart would find none; put the store back "
                    "or re-materialize it"
                )
            self._follow_replacement()
            self._next_identity_check = time.monotonic() + _IDENTITY_CHECK_S
            for group in groups:
                try:
                    for table in self._events.tables(group) or [group.table_name]:
                        self._conn.execute(f"SELECT 1 FROM {_ident(table)} LIMIT 1")
                except sqlite3.Error as exc:
                    raise StoreUnavailable(
                        f"online store {self.path}: table {group.table_name} unreadable "
                        f"({exc}); materialize the feature groups"
                    ) from exc

    def _ensure_table(self, group: FeatureGroup) -> None:
        if group.table_name in self._ready:
            return
        table = _ident(group.table_name)
        cols = ", ".join(f"{_ident(n)} {_sql_type(t)}" for n, t in group.polars_schema.items())
        pk = ", ".join(_ident(k) for k in (*group.primary_key, group.event_time))
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({pk}))")
        if not self._keyed_by_event_time(group):
            self._convert_layout(group, cols, pk)
        self._ready.add(group.table_name)

    def _keyed_by_event_time(self, group: FeatureGroup) -> bool:
        info = self._conn.execute(f"PRAGMA table_info({_ident(group.table_name)})").fetchall()
        return any(name == group.event_time and pk > 0 for _, name, _, _, _, pk in info)

    def _convert_layout(self, group: FeatureGroup, cols: str, pk: str) -> None:
        """A table of the older layout (newest row per key only) -> keyed by event time too,
        rows kept; its materialized version is cleared so the next materialization writes every
        key's history (until then, a read as of an earlier T finds the key missing)."""
        table, old = _ident(group.table_name), _ident(group.table_name + "__newest_only")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if not self._keyed_by_event_time(group):  # another process may have done it
                self._conn.execute(f"ALTER TABLE {table} RENAME TO {old}")
                self._conn.execute(f"CREATE TABLE {table} ({cols}, PRIMARY KEY ({pk}))")
                self._conn.execute(f"INSERT INTO {table} SELECT * FROM {old}")
                self._conn.execute(f"DROP TABLE {old}")
                self._conn.execute(
                    "DELETE FROM _materialization WHERE table_name = ?", (group.table_name,)
                )
                log.warning(
                    "online table %s converted to the as-of layout; the next materialization "
                    "refills its history",
                    group.table_name,
                )
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.execute("ROLLBACK")
            raise StoreUnavailable(f"online table {group.table_name} not converted: {exc}") from exc

    def write(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Upsert by key + event time, then drop each written key's rows older than its newest
        stored row minus ``group.online_history``. A row never replaces one of another event
        time, so writers that raced (parallel backfill windows materializing) cannot regress a
        key: the newest row stays, and the history is cut from it."""
        if rows.is_empty():
            return 0
        if group.online_indexes:
            with self._lock:
                return self._events.write(self._conn, group, rows)
        stored = storable(group, rows)
        values = stored.rows()
        keys = list(group.primary_key)
        horizon = group.online_history // timedelta(microseconds=1)
        written = [(*key, *key, horizon) for key in stored.select(keys).unique().rows()]
        table = _ident(group.table_name)
        names = ", ".join(_ident(c) for c in group.columns)
        marks = ", ".join("?" for _ in group.columns)
        key_match = " AND ".join(f"{_ident(k)} = ?" for k in keys)
        event = _ident(group.event_time)
        prune = (
            f"DELETE FROM {table} WHERE {key_match} AND {event} < "
            f"(SELECT max({event}) FROM {table} WHERE {key_match}) - ?"
        )
        with self._lock:
            self._ensure_table(group)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", values
                )
                self._conn.executemany(prune, written)
                bump_generation(self._conn, group.table_name)  # as-of caches drop the table
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreUnavailable(f"online write to {group.table_name} failed: {exc}") from exc
        return len(values)

    def read(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        pk = list(group.primary_key)
        unique_keys = keys.select(pk).unique(maintain_order=True).rows()
        with self._lock:
            by_key = self._rows_by_key(group, unique_keys, (None, None))
        newest = [rows[0] for rows in by_key.values()]
        return align_to_keys(group, keys, from_storable(group, newest))

    def read_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Plain rows per lookup and key, as of each key's T; one lock and one query per group."""
        with self._lock:
            self._begin_read()
            return self._read_rows(lookups)

    def read_ranges(self, lookups: Sequence[OnlineRangeLookup]) -> list[list[OnlineRange]]:
        with self._lock:
            self._begin_read()
            return self._read_ranges(lookups)

    def read_rows_and_ranges(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """Both reads on the local file, under one lock and one look at the generations."""
        with self._lock:
            self._begin_read()
            return self._read_rows(lookups), self._read_ranges(ranges)

    def _begin_read(self) -> None:
        """Follow a replaced file, then let the caches forget what was written since the last
        read (caller holds the lock)."""
        if time.monotonic() >= self._next_identity_check:  # a stat per second at most
            self._next_identity_check = time.monotonic() + _IDENTITY_CHECK_S
            self._follow_replacement()
        if self._cache is None and self._range_cache is None:
            return
        try:
            schema, generations = read_generations(self._conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"online read of {self.path} failed: {exc}") from exc
        if self._cache is not None:
            self._cache.sync(schema, generations)
        if self._range_cache is not None:
            self._range_cache.sync(schema, generations)

    def _read_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        results: list[list[OnlineRow]] = []
        for lookup in lookups:
            group = lookup.group
            columns = group.columns
            as_dict = row_to_dict(tuple(columns))
            event_at = columns.index(group.event_time)
            times: Sequence[int | None] = lookup.as_of or [None] * len(lookup.keys)
            tolerance = lookup.tolerance_us
            newest = self._as_of(group, lookup.keys, times, event_at)
            results.append(
                [
                    as_dict(row)
                    if (row := row_as_of(newest.get((key, t)), event_at, t, tolerance)) is not None
                    else None
                    for key, t in zip(lookup.keys, times, strict=True)
                ]
            )
        return results

    def _read_ranges(self, lookups: Sequence[OnlineRangeLookup]) -> list[list[OnlineRange]]:
        return [self._events.ranges(self._conn, lookup, self._range_cache) for lookup in lookups]

    def _rows_by_key(
        self,
        group: FeatureGroup,
        keys: Sequence[tuple[Any, ...]],
        window: tuple[int | None, int | None],
    ) -> dict[tuple[Any, ...], list[Any]]:
        """Each of ``keys``'s stored rows with event times in ``window`` (oldest, newest; None:
        unbounded), newest first (caller holds the lock), in chunks of parameters."""
        self._ensure_table(group)
        bounds = [b for b in window if b is not None]
        chunk = max(1, (MAX_PARAMS - 2) // len(group.primary_key))
        positions = [group.columns.index(k) for k in group.primary_key]
        by_key: dict[tuple[Any, ...], list[Any]] = {}
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            params = [v for key in part for v in key] + bounds
            sql = self._query(group, len(part), window[0] is not None, window[1] is not None)
            try:
                found = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"online read of {group.table_name} failed: {exc}") from exc
            for row in found:
                by_key.setdefault(tuple(row[i] for i in positions), []).append(row)
        return by_key

    def _as_of(
        self,
        group: FeatureGroup,
        keys: Sequence[tuple[Any, ...]],
        times: Sequence[int | None],
        event_at: int,
    ) -> AsOfRows:
        """`_newest_as_of`, from memory where the table is cached (caller holds the lock)."""
        if self._cache is not None:
            found = self._cache.newest_as_of(
                group.table_name,
                event_at,
                keys,
                times,
                lambda missing: self._rows_by_key(group, missing, (None, None)),
            )
            if found is not None:
                return found
        return self._newest_as_of(group, keys, times)

    def _newest_as_of(
        self,
        group: FeatureGroup,
        keys: Sequence[tuple[Any, ...]],
        times: Sequence[int | None],
    ) -> dict[tuple[tuple[Any, ...], int | None], list[tuple[Any, ...]]]:
        """Per distinct (key, T): the key's newest stored row at or before T (T None: its
        newest), found by one index seek each in SQL (caller holds the lock), as a one-row
        list for ``row_as_of``. A key's kept history (28 daily rows of a stats group) is never
        fetched just to be discarded."""
        self._ensure_table(group)
        wanted = list(
            dict.fromkeys((k, t) for k, t in zip(keys, times, strict=True) if None not in k)
        )
        per_pair = len(group.primary_key) + 1
        chunk = max(1, MAX_PARAMS // per_pair)
        found: dict[tuple[tuple[Any, ...], int | None], list[tuple[Any, ...]]] = {}
        for i in range(0, len(wanted), chunk):
            part = wanted[i : i + chunk]
            params = [v for key, t in part for v in (*key, _LATEST if t is None else t)]
            try:
                rows = self._conn.execute(self._as_of_query(group, len(part)), params).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"online read of {group.table_name} failed: {exc}") from exc
            for row in rows:  # (pair number, the row's columns...)
                found[part[row[0]]] = [row[1:]]
        return found

    def _as_of_query(self, group: FeatureGroup, pairs: int) -> str:
        """The SELECT of :meth:`_newest_as_of` for ``pairs`` (key, T) pairs: each pair's row
        is the one whose event time is the key's newest at or before T (a reverse seek on the
        primary key's index, then the row)."""
        sql = self._queries.get((group.table_name, pairs, "as_of"))
        if sql is None:
            table = _ident(group.table_name)
            event = _ident(group.event_time)
            keys = group.primary_key
            marks = ", ".join(
                f"({n}, " + ", ".join("?" * (len(keys) + 1)) + ")" for n in range(pairs)
            )
            match = " AND ".join(f"s.{_ident(k)} = q.column{i + 2}" for i, k in enumerate(keys))
            same = " AND ".join(f"t.{_ident(k)} = q.column{i + 2}" for i, k in enumerate(keys))
            t_col = f"q.column{len(keys) + 2}"
            names = ", ".join(f"t.{_ident(c)}" for c in group.columns)
            sql = (
                f"SELECT q.column1, {names} FROM (VALUES {marks}) AS q JOIN {table} AS t "
                f"ON {same} AND t.{event} = (SELECT s.{event} FROM {table} AS s "
                f"WHERE {match} AND s.{event} <= {t_col} ORDER BY s.{event} DESC LIMIT 1)"
            )
            keep(self._queries, (group.table_name, pairs, "as_of"), sql, _KEPT_QUERIES)
        return sql

    def _query(self, group: FeatureGroup, keys: int, oldest: bool, newest: bool) -> str:
        """The SELECT of ``keys`` keys of ``group`` (event times bounded below and/or above),
        newest first; kept for the small sizes of online requests (their handful of keys per
        group would otherwise pay for quoting every column)."""
        sql = self._queries.get((group.table_name, keys, oldest, newest))
        if sql is None:
            per_key = len(group.primary_key)
            names = ", ".join(_ident(c) for c in group.columns)
            key_cols = ", ".join(_ident(k) for k in group.primary_key)
            row_marks = ", ".join("(" + ", ".join("?" * per_key) + ")" for _ in range(keys))
            event = _ident(group.event_time)
            bounds = (f" AND {event} >= ?" if oldest else "") + (
                f" AND {event} <= ?" if newest else ""
            )
            sql = (
                f"SELECT {names} FROM {_ident(group.table_name)} "
                f"WHERE ({key_cols}) IN (VALUES {row_marks}){bounds} ORDER BY {event} DESC"
            )
            keep(self._queries, (group.table_name, keys, oldest, newest), sql, _KEPT_QUERIES)
        return sql

    def materialized_version(self, table_name: str) -> int | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT offline_version FROM _materialization WHERE table_name = ?", (table_name,)
            ).fetchone()
        return None if row is None else int(row[0])

    def set_materialized_version(self, table_name: str, version: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO _materialization VALUES (?, ?)", (table_name, version)
            )

    def row_count(self, group: FeatureGroup) -> int:
        """Keys held for the group (each with its newest row and its kept history)."""
        keys = ", ".join(_ident(k) for k in group.primary_key)
        with self._lock:
            if group.online_indexes:
                return self._events.row_count(self._conn, group)
            self._ensure_table(group)
            sql = f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {_ident(group.table_name)})"
            return int(self._conn.execute(sql).fetchone()[0])

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"online store {self.path} unusable: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
