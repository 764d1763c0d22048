"""Online store in one SQLite file (WAL mode): the embedded default for a single host."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from shared.errors import StoreUnavailable
from shared.feature_group import FeatureGroup
from shared.feature_store.online_codec import align_to_keys, from_storable, storable
from shared.feature_store.protocol import OnlineLookup, OnlineRow

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
# SQLite caps bound parameters per statement (32,766 since 3.32): read big key sets in chunks.
_MAX_PARAMS = 30_000
_KEPT_QUERY_KEYS = 64  # queries for up to this many keys are kept, per group and size
# How long opening waits for another process that is setting up the same file.
_SETUP_WAIT_S = 10.0


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

    def __init__(self, path: Path, timeout_s: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=timeout_s, check_same_thread=False, isolation_level=None
            )
            _set_up(self._conn, deadline=time.monotonic() + max(_SETUP_WAIT_S, timeout_s))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"online store {self.path} unusable: {exc}") from exc
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self._queries: dict[tuple[str, int], str] = {}  # (table, keys) -> SELECT

    def _ensure_table(self, group: FeatureGroup) -> None:
        if group.table_name in self._ready:
            return
        cols = ", ".join(f"{_ident(n)} {_sql_type(t)}" for n, t in group.polars_schema.items())
        pk = ", ".join(_ident(k) for k in group.primary_key)
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_ident(group.table_name)} ({cols}, PRIMARY KEY ({pk}))"
        )
        self._ready.add(group.table_name)

    def write(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Upsert one row per key; a row never replaces one with a later event time (writers
        that raced, e.g. parallel backfill windows materializing, cannot regress a key)."""
        if rows.is_empty():
            return 0
        values = storable(group, rows).rows()
        table = _ident(group.table_name)
        names = ", ".join(_ident(c) for c in group.columns)
        marks = ", ".join("?" for _ in group.columns)
        pk = ", ".join(_ident(k) for k in group.primary_key)
        updates = ", ".join(
            f"{_ident(c)} = excluded.{_ident(c)}"
            for c in group.columns
            if c not in group.primary_key
        )
        event_time = _ident(group.event_time)
        sql = (
            f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({pk}) DO UPDATE SET "
            f"{updates} WHERE excluded.{event_time} >= {table}.{event_time}"
        )
        with self._lock:
            self._ensure_table(group)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(sql, values)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreUnavailable(f"online write to {group.table_name} failed: {exc}") from exc
        return len(values)

    def read(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        pk = list(group.primary_key)
        unique_keys = keys.select(pk).unique(maintain_order=True).rows()
        with self._lock:
            found = self._select(group, unique_keys)
        return align_to_keys(group, keys, from_storable(group, found))

    def read_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Plain rows per lookup and key; one lock and one query per group."""
        results: list[list[OnlineRow]] = []
        with self._lock:
            for lookup in lookups:
                group = lookup.group
                wanted = [k for k in dict.fromkeys(lookup.keys) if None not in k]
                rows = self._select(group, wanted)
                positions = [group.columns.index(k) for k in group.primary_key]
                by_key = {tuple(r[i] for i in positions): r for r in rows}
                columns = group.columns
                results.append(
                    [
                        dict(zip(columns, row, strict=True))
                        if (row := by_key.get(key)) is not None
                        else None
                        for key in lookup.keys
                    ]
                )
        return results

    def _select(self, group: FeatureGroup, keys: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Stored rows for distinct ``keys`` (caller holds the lock), in chunks of parameters."""
        self._ensure_table(group)
        chunk = max(1, _MAX_PARAMS // len(group.primary_key))
        found: list[Any] = []
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            params = [v for key in part for v in key]
            try:
                found += self._conn.execute(self._query(group, len(part)), params).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"online read of {group.table_name} failed: {exc}") from exc
        return found

    def _query(self, group: FeatureGroup, keys: int) -> str:
        """The SELECT of ``keys`` keys of ``group``, kept for the small sizes of online requests
        (their handful of keys per group would otherwise pay for quoting every column)."""
        sql = self._queries.get((group.table_name, keys))
        if sql is None:
            per_key = len(group.primary_key)
            names = ", ".join(_ident(c) for c in group.columns)
            key_cols = ", ".join(_ident(k) for k in group.primary_key)
            row_marks = ", ".join("(" + ", ".join("?" * per_key) + ")" for _ in range(keys))
            sql = (
                f"SELECT {names} FROM {_ident(group.table_name)} "
                f"WHERE ({key_cols}) IN (VALUES {row_marks})"
            )
            if keys <= _KEPT_QUERY_KEYS:
                self._queries[(group.table_name, keys)] = sql
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
        with self._lock:
            self._ensure_table(group)
            return int(
                self._conn.execute(f"SELECT count(*) FROM {_ident(group.table_name)}").fetchone()[0]
            )

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"online store {self.path} unusable: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
