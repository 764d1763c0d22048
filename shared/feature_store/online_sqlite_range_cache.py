"""The SQLite online store's event-range reads from memory, exact to the last commit.

A prediction with the fresh window features reads three event ranges (its origin's departures
of the last hours, its aircraft's of the day, its origin's schedule): one SQL scan each, the
largest part of a one-flight request's store read. Between two writes of an event table every
request at an airport reads nearly the same rows again, so the store keeps, per index key, the
rows from the earliest instant a read asked for onwards (``since``, to the newest stored row),
in time order, and answers a range inside that span by bisection.

Exactness is the as-of cache's (`online_sqlite_cache`): every write of an event group bumps the
generation of its index tables in the transaction that writes or prunes them, and each read
starts from the generations read in one statement; a table whose generation moved is forgotten.
With the stream writing, a generation holds for one micro-batch: the first read of a key after
a write reads it again (what every read cost without this cache), the reads after it until the
next write are served from memory. A table with no generation (written by an older version of
this code, or by hand) is never cached.

The rows handed out are the cache's own dicts, shared between reads: callers read them only.
Each range comes as `HeldRows`: with the key's held rows and a memo dict for what a caller
derives from them, both replaced (never changed) when the key's rows are read again.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.feature_store.online_sqlite_cache import CachedTable, GenerationCache
from shared.feature_store.protocol import HeldRows

# Bounds the memory (a departure event is a dict of 8 values, about 1 KiB): past this many rows,
# a table's cache starts over. A day of 2013 departures is about 1,000 rows per index table.
MAX_ROWS_PER_TABLE = 50_000

Key = tuple[Any, ...]
# [(key, since)] -> {key: its rows at or after since, oldest first}
ReadSince = Callable[[list[tuple[Key, int]]], dict[Key, list[dict[str, Any]]]]


@dataclass(slots=True)
class _Span:
    since: int  # every stored row of the key at or after this instant is held
    instants: list[int]
    rows: list[dict[str, Any]]
    memo: dict[Any, Any] = field(default_factory=dict)  # HeldRows.memo


class RangeCache(GenerationCache[_Span]):
    def __init__(self, max_rows_per_table: int = MAX_ROWS_PER_TABLE) -> None:
        super().__init__(max_rows_per_table)

    @staticmethod
    def _size(held: _Span) -> int:
        return len(held.rows)

    def ranges(
        self,
        table_name: str,
        event_at: str,
        keys: Sequence[Key],
        starts: Sequence[int],
        ends: Sequence[int],
        read_since: ReadSince,
    ) -> list[list[dict[str, Any]]] | None:
        """Per lookup, the key's rows with ``start <= event_at < end``, oldest first, like the
        SQL read (as `HeldRows`, where the key is held); ``read_since`` fetches what is not
        held yet. None: the table is not cached (no generation), read it with SQL."""
        table = self._table(table_name)
        if table is None:
            return None
        wanted = [
            (key, start, end)
            for key, start, end in zip(keys, starts, ends, strict=True)
            if None not in key and start < end
        ]
        missing: dict[Key, int] = {}
        for key, start, _ in wanted:
            span = table.keys.get(key)
            if span is None or span.since > start:
                missing[key] = min(start, missing.get(key, start))
        if missing:
            self._hold(table, {key for key, _, _ in wanted}, missing, read_since, event_at)
        found: list[list[dict[str, Any]]] = []
        for key, start, end in zip(keys, starts, ends, strict=True):
            span = table.keys.get(key) if None not in key and start < end else None
            if span is None:
                found.append([])
                continue
            instants = span.instants
            rows = span.rows[bisect_left(instants, start) : bisect_left(instants, end)]
            found.append(HeldRows(rows, span.rows, span.memo))
        return found

    def _hold(
        self,
        table: CachedTable[_Span],
        wanted: set[Key],
        missing: dict[Key, int],
        read_since: ReadSince,
        event_at: str,
    ) -> None:
        """Hold the ``missing`` keys' rows from their ``since`` on (within the bound:
        `GenerationCache._make_room`)."""
        stored = read_since(list(missing.items()))
        self._make_room(table, sum(len(rows) for rows in stored.values()), wanted)
        for key, since in missing.items():
            old = table.keys.get(key)
            rows = stored.get(key, [])
            table.keys[key] = _Span(since, [row[event_at] for row in rows], rows)
            table.rows += len(rows) - (len(old.rows) if old is not None else 0)
