"""Online store on a Redis server: the production choice when several hosts serve features.

Layout: one string key per entity, ``<namespace>:<table_name>:<json primary key>``, holding the
row as one compact JSON array in the group's column order. The table name carries the group
version, so two versions of a group never overwrite each other's keys, and the namespace keeps
several deployments (or tests) apart on one server. The offline version last materialized for
each table lives in one hash, ``<namespace>:_materialization``.

Values go through ``online_codec`` (timestamps as integer microseconds, dates as integer days),
so a row read back has exactly the types and values that were written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import ConfigurationError, StoreUnavailable
from shared.feature_group import FeatureGroup
from shared.feature_store.online_codec import align_to_keys, from_storable, storable
from shared.feature_store.protocol import OnlineLookup, OnlineRow

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rows per MULTI/EXEC on write, keys per MGET on read: big enough to amortise round trips,
# small enough that one command never blocks the single-threaded server for long.
WRITE_CHUNK = 5_000
READ_CHUNK = 10_000


# SET each key unless it holds a row with a later event time. ARGV: the event time's position
# in a row, then per key its row (JSON) and event time.
_UPSERT_NEWER = """
local at = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local row, event_time = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  local held = redis.call('GET', key)
  if not held or tonumber(cjson.decode(held)[at]) <= event_time then
    redis.call('SET', key, row)
  end
end
return #KEYS
"""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def redacted(url: str) -> str:
    """The URL without its password, safe for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def storable_keys(group: FeatureGroup, keys: pl.DataFrame) -> list[tuple[Any, ...]]:
    """Distinct primary keys, in first-seen order, as the plain values written in Redis keys.

    Keys are cast to the group's dtypes first, so a key given as Int64 or as a timestamp in
    another time zone finds the row that was written under the group's own types.
    """
    casts = []
    for name in group.primary_key:
        dtype = group.polars_schema[name]
        column = pl.col(name).cast(dtype)
        if isinstance(dtype, pl.Datetime):
            column = column.dt.epoch("us")
        elif dtype == pl.Date:
            column = column.cast(pl.Int32)
        casts.append(column.alias(name))
    return keys.select(casts).unique(maintain_order=True).rows()


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RedisOnlineStore:
    """Latest row per primary key in Redis (see the module docstring for the key layout)."""

    reads_in_process = False  # a network round trip per read: callers keep it off their loop

    def __init__(self, url: str, *, namespace: str = "fti", timeout_s: float = 1.0) -> None:
        self.url = redacted(url)
        self.namespace = namespace
        try:
            # One immediate retry survives a pooled connection the server dropped (restart,
            # idle timeout) without turning an outage into seconds of back-off per request.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), retries=1),
                decode_responses=False,
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {self.url}: {exc}") from exc

        # Event times are integer microseconds, exact in Lua's doubles (below 2^53).
        self._upsert_newer = self._client.register_script(_UPSERT_NEWER)

    # -- keys ------------------------------------------------------------------------------

    def _prefix(self, table_name: str) -> str:
        return f"{self.namespace}:{table_name}:"

    def _key(self, table_name: str, key: Sequence[Any]) -> str:
        return self._prefix(table_name) + _compact(list(key))

    @property
    def _materialization_key(self) -> str:
        return f"{self.namespace}:_materialization"

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one Redis exchange, turning any server or network failure into StoreUnavailable."""
        try:
            return action()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis online store {self.url}: {what} failed: {exc}") from exc

    # -- rows ------------------------------------------------------------------------------

    def write(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Upsert one value per key; a row never replaces one with a later event time (as in
        SQLite), and within ``rows`` the last row of a key wins among equal times."""
        if rows.is_empty():
            return 0
        values = storable(group, rows).rows()
        positions = [group.columns.index(k) for k in group.primary_key]
        at = group.columns.index(group.event_time)
        for part in _chunks(values, WRITE_CHUNK):
            latest: dict[str, Sequence[Any]] = {}
            for row in part:
                key = self._key(group.table_name, [row[i] for i in positions])
                held = latest.get(key)
                if held is None or held[at] <= row[at]:
                    latest[key] = row
            self._call(f"write to {group.table_name}", partial(self._write_chunk, latest, at))
        log.debug("wrote %d rows to %s in Redis", len(values), group.table_name)
        return len(values)

    def _write_chunk(self, rows: dict[str, Sequence[Any]], event_time_at: int) -> None:
        """One server-side script per chunk: atomic, and one round trip."""
        args: list[Any] = [event_time_at + 1]  # Lua arrays count from 1
        for row in rows.values():
            args += [_compact(list(row)), row[event_time_at]]
        self._upsert_newer(keys=list(rows), args=args)

    def read(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        """Rows for ``keys`` in their order, nulls for unknown keys; one round trip in all."""
        names = [self._key(group.table_name, key) for key in storable_keys(group, keys)]
        found = [json.loads(raw) for raw in self._mget(group.table_name, names) if raw is not None]
        return align_to_keys(group, keys, from_storable(group, found))

    def read_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Plain rows per lookup and key: every group's MGET in one pipeline, one round trip."""
        pipe = self._client.pipeline(transaction=False)
        counts = []
        for lookup in lookups:
            names = [self._key(lookup.group.table_name, key) for key in lookup.keys]
            for part in _chunks(names, READ_CHUNK):
                pipe.mget(part)
            counts.append(len(names))
        replies = iter(self._call("online read", pipe.execute) if any(counts) else [])
        results: list[list[OnlineRow]] = []
        for lookup, count in zip(lookups, counts, strict=True):
            raw: list[bytes | None] = []
            while len(raw) < count:
                raw += next(replies)
            columns = lookup.group.columns
            results.append(
                [
                    dict(zip(columns, json.loads(value), strict=True))
                    if value is not None
                    else None
                    for value in raw
                ]
            )
        return results

    def _mget(self, table_name: str, names: list[str]) -> list[bytes | None]:
        if not names:
            return []
        pipe = self._client.pipeline(transaction=False)
        for part in _chunks(names, READ_CHUNK):
            pipe.mget(part)
        replies = self._call(f"read of {table_name}", pipe.execute)
        return [value for reply in replies for value in reply]

    def row_count(self, group: FeatureGroup) -> int:
        """Keys held for the group (a SCAN: for operators and tests, not the request path)."""
        pattern = _glob_escape(self._prefix(group.table_name)) + "*"
        return self._call(
            f"count of {group.table_name}",
            # SCAN may return a key more than once (while the server rehashes): count distinct.
            lambda: len(set(self._client.scan_iter(match=pattern, count=1_000))),
        )

    # -- bookkeeping -----------------------------------------------------------------------

    def materialized_version(self, table_name: str) -> int | None:
        raw = self._call(
            "read of the materialized version",
            lambda: self._client.hget(self._materialization_key, table_name),
        )
        return None if raw is None else int(raw)

    def set_materialized_version(self, table_name: str, version: int) -> None:
        self._call(
            "write of the materialized version",
            lambda: self._client.hset(self._materialization_key, table_name, str(version)),
        )

    def ping(self) -> None:
        self._call("ping", self._client.ping)

    def close(self) -> None:
        self._client.close()


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a namespace is matched literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
