"""The SQLite online store's as-of reads from memory, exact to the last commit.

A prediction reads, per stateful group (route and carrier stats, weather, planes, the stream's
watermark), each key's newest row at or before T: one SQL statement per group and batch, about
a fifth of a one-flight request's store read. Those tables change only when something writes
them (the nightly run materializing, the stream's watermark), so the store keeps every kept row
of the keys it has read (a key's history: 28 daily rows at most), oldest first, and answers "as
of T" by bisection.

Exactness comes from a generation per table: every write through `SQLiteOnlineStore.write`
bumps the table's row in ``_generations`` in the transaction that writes the rows, in whatever
process. Each read first reads all generations and the schema version in one statement; a table
whose generation moved (or any table, when the schema changed: a table renamed, dropped or
rebuilt) is forgotten and read from the file again. A read that races a write sees the data as of
some instant between its two statements, as an uncached read would; rows cached under a
generation that has moved since are dropped by the next read. A table with no generation
(written by an older version of this code, or by hand) is never cached. Rows written into the
file by anything other than the store's ``write`` are not seen until the next write of the table:
write through the store.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

GENERATIONS_TABLE = "_generations"
# Bounds the memory: past this many rows, a table's cache starts over (the stats groups of the
# 2013 data hold about 10,000 rows in all).
MAX_ROWS_PER_TABLE = 200_000

_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {GENERATIONS_TABLE} "
    "(table_name TEXT PRIMARY KEY, generation INTEGER NOT NULL)"
)
_BUMP = (
    f"INSERT INTO {GENERATIONS_TABLE} (table_name, generation) VALUES (?, 1) "
    "ON CONFLICT (table_name) DO UPDATE SET generation = generation + 1"
)
# One statement: every table's generation, and the schema version under the empty name.
_STATE = (
    f"SELECT table_name, generation FROM {GENERATIONS_TABLE} "
    "UNION ALL SELECT '', schema_version FROM pragma_schema_version"
)
_SCHEMA = ""

# (key, T) -> the key's newest row at or before T, as a one-row list (see `row_as_of`)
AsOfRows = dict[tuple[tuple[Any, ...], int | None], list[tuple[Any, ...]]]
# keys -> {key: its stored rows, newest first}
ReadKeys = Callable[[Sequence[tuple[Any, ...]]], dict[tuple[Any, ...], list[Any]]]


def create_generations(conn: sqlite3.Connection) -> None:
    conn.execute(_CREATE)


def read_generations(conn: sqlite3.Connection) -> tuple[int, dict[str, int]]:
    """The schema version and every table's generation, in one statement."""
    state = dict(conn.execute(_STATE).fetchall())
    return state.pop(_SCHEMA), state


def bump_generation(conn: sqlite3.Connection, table: str) -> None:
    """Inside the transaction that writes ``table``'s rows."""
    conn.execute(_BUMP, (table,))


V = TypeVar("V")


@dataclass
class CachedTable(Generic[V]):
    """What a cache holds of one table, under the generation it was read at."""

    generation: int
    keys: dict[tuple[Any, ...], V] = field(default_factory=dict)
    rows: int = 0


class GenerationCache(Generic[V]):
    """Tables held in memory per generation: the state every read starts from (`sync`), the
    table a read may use (`_table`) and the memory bound (`_make_room`). Subclasses say what
    they hold per key and how many rows that is (`_size`)."""

    def __init__(self, max_rows_per_table: int) -> None:
        self._max_rows = max_rows_per_table
        self._tables: dict[str, CachedTable[V]] = {}
        self._generations: dict[str, int] = {}
        self._schema: int | None = None

    def sync(self, schema: int, generations: dict[str, int]) -> None:
        """Forget what moved since the last read, from the state just read
        (`read_generations`, first in every read, under the store's lock): any table whose
        generation moved, and every table when the schema changed (a table renamed, dropped or
        rebuilt)."""
        if schema != self._schema:
            self._tables.clear()
            self._schema = schema
        for name, table in list(self._tables.items()):
            if generations.get(name) != table.generation:
                del self._tables[name]
        self._generations = generations

    def clear(self) -> None:
        """Forget everything (another file now stands at the store's path)."""
        self._tables.clear()
        self._generations = {}
        self._schema = None

    def _table(self, name: str) -> CachedTable[V] | None:
        """The table's cache at its current generation; None: the table has no generation
        (never cached, read it with SQL)."""
        generation = self._generations.get(name)
        if generation is None:
            return None
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = CachedTable(generation)
        return table

    def _make_room(self, table: CachedTable[V], added: int, wanted: Collection[Any]) -> None:
        """Past the bound with ``added`` more rows, start over with the keys of this read
        (``wanted``) only, so that every key it asks for is held."""
        if table.rows + added > self._max_rows:
            table.keys = {k: v for k, v in table.keys.items() if k in wanted}
            table.rows = sum(self._size(v) for v in table.keys.values())

    @staticmethod
    def _size(held: V) -> int:
        raise NotImplementedError


class AsOfCache(GenerationCache[tuple[list[int], list[tuple[Any, ...]]]]):
    def __init__(self, max_rows_per_table: int = MAX_ROWS_PER_TABLE) -> None:
        super().__init__(max_rows_per_table)

    @staticmethod
    def _size(held: tuple[list[int], list[tuple[Any, ...]]]) -> int:
        return len(held[1])

    def newest_as_of(
        self,
        table_name: str,
        event_at: int,
        keys: Sequence[tuple[Any, ...]],
        times: Sequence[int | None],
        read_keys: ReadKeys,
    ) -> AsOfRows | None:
        """Per distinct (key, T) (T None: the newest), the key's newest row at or before T,
        like the SQL read; ``read_keys`` fetches the keys not held yet. None: the table is not
        cached (no generation), read it with SQL."""
        table = self._table(table_name)
        if table is None:
            return None
        wanted = [k for k in dict.fromkeys(keys) if None not in k]
        missing = [k for k in wanted if k not in table.keys]
        if missing:
            self._hold(table, wanted, missing, read_keys(missing), event_at)
        held = table.keys
        found: AsOfRows = {}
        for key, t in zip(keys, times, strict=True):
            entry = held.get(key)
            if entry is None:  # a key with a null part: never stored, never found
                continue
            instants, rows = entry
            at = bisect_right(instants, t) - 1 if t is not None else len(rows) - 1
            if at >= 0:
                found[(key, t)] = [rows[at]]
        return found

    def _hold(
        self,
        table: CachedTable[tuple[list[int], list[tuple[Any, ...]]]],
        wanted: list[tuple[Any, ...]],
        missing: list[tuple[Any, ...]],
        stored: dict[tuple[Any, ...], list[Any]],
        event_at: int,
    ) -> None:
        """Hold ``missing``'s ``stored`` rows (within the bound: `_make_room`)."""
        self._make_room(table, sum(len(stored.get(k, ())) for k in missing), set(wanted))
        for key in missing:
            rows = stored.get(key, [])[::-1]  # oldest first
            table.keys[key] = ([row[event_at] for row in rows], rows)
            table.rows += len(rows)
