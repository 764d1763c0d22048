"""Online store on a Redis server: the production choice when several hosts serve features.

Layout: one sorted set per entity, ``<namespace>:asof:<table_name>:<json primary key>``, whose
members are the key's rows (one compact JSON array each, in the group's column order) scored by
their event time in epoch microseconds (exact in a double until the year 2255): the newest row
and those within the group's ``online_history`` of it. A read as of T is one
``ZREVRANGEBYSCORE`` per key between T - tolerance and T, every key and group (and every
event range) in one call of a read-only Lua script (one round trip, one command). The table
name carries the group version, so two versions of a group never overwrite each other's keys,
and the namespace keeps several deployments (or tests) apart on one server. The offline
version last materialized for each table lives in one hash,
``<namespace>:asof:_materialization``. (``asof`` names the layout: a server still holding the
older one-string-per-key layout is not read, and the first materialization refills in full.)

Values go through ``online_codec`` (timestamps as integer microseconds, dates as integer days),
so a row read back has exactly the types and values that were written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache, partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import polars as pl
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from shared.errors import ConfigurationError, StoreUnavailable
from shared.feature_group import FeatureGroup
from shared.feature_store.online_as_of import row_as_of, served_window
from shared.feature_store.online_codec import (
    align_to_keys,
    from_storable,
    row_to_dict,
    storable,
)
from shared.feature_store.protocol import OnlineLookup, OnlineRange, OnlineRangeLookup, OnlineRow

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rows per write script: big enough to amortise round trips, small enough that one script
# never blocks the single-threaded server for long.
WRITE_CHUNK = 5_000
_LAYOUT = "asof"  # in every key: see the module docstring


# Upsert rows into their keys' sorted sets, then cut each key's history from its newest row.
# ARGV: the history in microseconds, then per row: its key's index in KEYS, its event time (the
# score), the row (JSON). Scores are integer microseconds, exact in Lua's doubles below 2^53;
# "%.0f" writes them back without rounding.
_UPSERT_RECENT = """
local horizon = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local key, score = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  redis.call('ZREMRANGEBYSCORE', key, score, score)
  redis.call('ZADD', key, score, ARGV[i + 2])
end
for _, key in ipairs(KEYS) do
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
  if newest then
    local first_kept = string.format('%.0f', tonumber(newest) - horizon)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. first_kept)
  end
end
return #KEYS
"""


# Read many sorted sets in one command (see `RedisOnlineStore._read_sets`). KEYS: the sets;
# ARGV[1]: per set, [newest first?, from, to] as JSON. The bounds are strings ("-inf", "(123"):
# a Lua number passed to redis.call is written with 14 significant digits, and an event time in
# microseconds has 16.
_READ_SETS = """
local bounds = cjson.decode(ARGV[1])
local replies = {}
for i, key in ipairs(KEYS) do
  local b = bounds[i]
  if b[1] then
    replies[i] = redis.call('ZREVRANGEBYSCORE', key, b[2], b[3])
  else
    replies[i] = redis.call('ZRANGEBYSCORE', key, b[2], b[3])
  end
end
return replies
"""


# SET a counter to ARGV[1] unless it holds more; returns what it holds after.
_RAISE_TO = """
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
local wanted = tonumber(ARGV[1])
if wanted > held then redis.call('SET', KEYS[1], ARGV[1]); return wanted end
return held
"""
_DAY = timedelta(days=1)
_US_PER_DAY = 86_400_000_000


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=1 << 17)
def _key_name(prefix: str, key: tuple[Any, ...]) -> str:
    """``prefix`` + the key as compact JSON. Cached: a 100-flight read names ~300 keys of a
    few thousand distinct ones (airports, routes, aircraft), and ``json.dumps`` per name was a
    tenth of the read (benchmarks/request_profile.py --online redis)."""
    return prefix + _compact(list(key))


def _decode_rows(raws: Sequence[bytes]) -> list[Any]:
    """Stored rows (JSON arrays) decoded in one orjson call instead of one ``json.loads``
    each (a third of a wide read's time). A row holding a float NaN, which ``json.dumps``
    writes as the bare token ``NaN`` and strict JSON parsers refuse, sends the reply down
    the standard library's path, which reads it back as written."""
    if not raws:
        return []
    try:
        rows: list[Any] = orjson.loads(b"[" + b",".join(raws) + b"]")
    except orjson.JSONDecodeError:
        return [json.loads(raw) for raw in raws]
    return rows


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


@dataclass
class _ReadPlan:
    """One read's sorted sets, their bounds (newest first?, from, to), and per key lookup its
    distinct complete keys, in the order the script answers them."""

    sets: list[str] = field(default_factory=list)
    bounds: list[tuple[bool, str, str]] = field(default_factory=list)
    distinct: list[list[tuple[Any, ...]]] = field(default_factory=list)


class RedisOnlineStore:
    """Latest row per primary key in Redis (see the module docstring for the key layout)."""

    reads_in_process = False  # a network round trip per read: callers keep it off their loop

    def __init__(self, url: str, *, namespace: str = "fti", timeout_s: float = 1.0) -> None:
        self.url = redacted(url)
        self.namespace = namespace
        self._raw_url, self._timeout_s = url, timeout_s
        # (loop, client, read script) of the asyncio client, made in the loop that reads
        self._aio: tuple[asyncio.AbstractEventLoop, Any, AsyncScript] | None = None
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

        self._upsert_recent = self._client.register_script(_UPSERT_RECENT)
        self._read_script = self._client.register_script(_READ_SETS)
        self._raise_to = self._client.register_script(_RAISE_TO)

    # -- keys ------------------------------------------------------------------------------

    def _prefix(self, table_name: str) -> str:
        return f"{self.namespace}:{_LAYOUT}:{table_name}:"

    def _key(self, table_name: str, key: Sequence[Any]) -> str:
        return _key_name(self._prefix(table_name), tuple(key))

    @property
    def _materialization_key(self) -> str:
        return f"{self.namespace}:{_LAYOUT}:_materialization"

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one Redis exchange, turning any server or network failure into StoreUnavailable."""
        try:
            return action()
        except redis.RedisError as exc:
            raise self._unavailable(what, exc) from exc

    def _unavailable(self, what: str, exc: redis.RedisError) -> StoreUnavailable:
        return StoreUnavailable(f"Redis online store {self.url}: {what} failed: {exc}")

    # -- rows ------------------------------------------------------------------------------

    def write(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Upsert by key + event time (a row replaces the key's row of the same time, never one
        of another time: writers that raced cannot regress a key), then drop each written key's
        rows older than its newest stored row minus ``group.online_history``. One server-side
        script per chunk of rows: atomic (readers never see half a chunk), one round trip."""
        if rows.is_empty():
            return 0
        if group.online_indexes:
            return self._write_events(group, rows)
        values = storable(group, rows).rows()
        positions = [group.columns.index(k) for k in group.primary_key]
        event_at = group.columns.index(group.event_time)
        horizon = group.online_history // timedelta(microseconds=1)
        for part in _chunks(values, WRITE_CHUNK):
            names: dict[str, int] = {}  # key -> its position in KEYS (from 1, as in Lua)
            args: list[Any] = [horizon]
            for row in part:
                name = self._key(group.table_name, [row[i] for i in positions])
                args += [names.setdefault(name, len(names) + 1), row[event_at], _compact(row)]
            self._call(
                f"write to {group.table_name}",
                partial(self._upsert_recent, keys=list(names), args=args),
            )
        log.debug("wrote %d rows to %s in Redis", len(values), group.table_name)
        return len(values)

    def read(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        """Newest rows for ``keys`` in their order, nulls for unknown keys; one round trip."""
        names = [self._key(group.table_name, key) for key in storable_keys(group, keys)]
        if not names:
            return align_to_keys(group, keys, from_storable(group, []))
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.zrange(name, 0, 0, desc=True)
        replies = self._call(f"read of {group.table_name}", pipe.execute)
        found = _decode_rows([reply[0] for reply in replies if reply])
        return align_to_keys(group, keys, from_storable(group, found))

    def read_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Plain rows per lookup and key, as of each key's T: per distinct key its rows that
        can match, every key of every group in one script call (one round trip)."""
        return self.read_rows_and_ranges(lookups, [])[0]

    def read_rows_and_ranges(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """Key lookups as of T and event-group ranges in one script call: one round trip."""
        plan = self._plan_read(lookups, ranges)
        return self._answer(plan, lookups, ranges, self._read_sets(plan.sets, plan.bounds))

    async def read_rows_and_ranges_async(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """`read_rows_and_ranges` on the running event loop: the round trip is awaited on an
        asyncio client (one per loop) instead of blocking a thread, and the rest of the read
        runs on the loop. A thread per read traded the GIL with the loop: the same read made on
        the loop served 13% more requests/s at 16 connections (benchmarks/README.md, run 20).
        Bounded by the client's socket timeout; callers add their own deadline."""
        plan = self._plan_read(lookups, ranges)
        replies: list[Any] = []
        if plan.sets:
            script = self._async_script()
            try:
                replies = await script(keys=plan.sets, args=[orjson.dumps(plan.bounds)])
            except redis.RedisError as exc:
                raise self._unavailable("online read", exc) from exc
        return self._answer(plan, lookups, ranges, replies)

    def _plan_read(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> _ReadPlan:
        plan = _ReadPlan()
        for lookup in lookups:
            keys = [k for k in dict.fromkeys(lookup.keys) if None not in k]
            oldest, newest = served_window(lookup)
            low = "-inf" if oldest is None else str(oldest)
            high = "+inf" if newest is None else str(newest)
            for key in keys:
                plan.sets.append(self._key(lookup.group.table_name, key))
                plan.bounds.append((True, high, low))
            plan.distinct.append(keys)
        for range_lookup in ranges:
            table, index = range_lookup.group.table_name, range_lookup.index
            for values, start, end in zip(
                range_lookup.keys, range_lookup.start_us, range_lookup.end_us, strict=True
            ):  # [start, end)
                plan.sets.append(self._index_key(table, index, values))
                plan.bounds.append((False, str(start), f"({end}"))
        return plan

    def _answer(
        self,
        plan: _ReadPlan,
        lookups: Sequence[OnlineLookup],
        ranges: Sequence[OnlineRangeLookup],
        found: list[Any],
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """The rows and ranges from the script's replies, one per set of ``plan``."""
        replies = iter(found)
        results: list[list[OnlineRow]] = []
        for lookup, keys in zip(lookups, plan.distinct, strict=True):
            by_key = {key: _decode_rows(next(replies)) for key in keys}
            columns = lookup.group.columns
            as_dict = row_to_dict(tuple(columns))
            event_at = columns.index(lookup.group.event_time)
            times: Sequence[int | None] = lookup.as_of or [None] * len(lookup.keys)
            tolerance = lookup.tolerance_us
            results.append(
                [
                    as_dict(row)
                    if (row := row_as_of(by_key.get(key), event_at, t, tolerance)) is not None
                    else None
                    for key, t in zip(lookup.keys, times, strict=True)
                ]
            )
        return results, self._parse_ranges(ranges, replies)

    def _async_script(self) -> AsyncScript:
        """The read script on an asyncio client of the running loop (made on first use in a
        loop: an asyncio client's connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self._raw_url,
                socket_connect_timeout=self._timeout_s,
                socket_timeout=self._timeout_s,
                retry=AsyncRetry(NoBackoff(), retries=1),
                decode_responses=False,
            )
            self._aio = (loop, client, client.register_script(_READ_SETS))
        return self._aio[2]

    async def aclose(self) -> None:
        """Close the asyncio client of the running loop, if one was opened."""
        if self._aio is not None and self._aio[0] is asyncio.get_running_loop():
            await self._aio[1].aclose()
        self._aio = None

    # -- event groups: rows by index and event-time range ----------------------------------

    def _index_key(self, table_name: str, index: Sequence[str], values: Sequence[Any]) -> str:
        return _key_name(f"{self._prefix(table_name)}@{','.join(index)}:", tuple(values))

    def _write_events(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Per index value (an airport, a tail number), one sorted set of whole rows (compact
        JSON) scored by event time, added to with one ZADD per set and batch. Upserts are
        idempotent and commute (a redelivered row is the same member with the same score), so
        replicas writing at once need no coordination; a restated event is another member,
        and readers keep a flight's latest (as offline). With a horizon, rows older than the
        first kept UTC day (as in SQLite) are neither written nor kept in the sets written to,
        and a set not written to for longer than the horizon expires."""
        values = storable(group, rows).rows()
        columns = group.columns
        at = columns.index(group.event_time)
        floor = self._events_floor(group, values, at)
        if floor is not None:
            values = [row for row in values if row[at] >= floor]
        expiry = None if group.online_horizon is None else group.online_horizon + _DAY
        for part in _chunks(values, WRITE_CHUNK):
            members: dict[str, dict[str, int]] = {}
            for row in part:
                member = _compact(list(row))
                for index in group.online_indexes:
                    indexed = [row[columns.index(c)] for c in index]
                    if None not in indexed:
                        name = self._index_key(group.table_name, index, indexed)
                        members.setdefault(name, {})[member] = row[at]
            pipe = self._client.pipeline(transaction=True)
            for name, scored in members.items():
                pipe.zadd(name, scored)
                if floor is not None:
                    pipe.zremrangebyscore(name, "-inf", f"({floor}")
                if expiry is not None:
                    pipe.expire(name, expiry)
            self._call(f"write to {group.table_name}", pipe.execute)
        return len(values)

    def _events_floor(
        self, group: FeatureGroup, values: Sequence[Sequence[Any]], at: int
    ) -> int | None:
        """The first kept instant: the start of the UTC day ``online_horizon`` before the newest
        day written so far (kept in one key, raised by a script so writers never lower it)."""
        if group.online_horizon is None or not values:
            return None
        newest = max(row[at] for row in values) // _US_PER_DAY
        key = f"{self._prefix(group.table_name)}@newest_day"
        held = self._call(
            f"horizon of {group.table_name}", lambda: self._raise_to(keys=[key], args=[newest])
        )
        return (int(held) - group.online_horizon // _DAY) * _US_PER_DAY

    def read_ranges(self, lookups: Sequence[OnlineRangeLookup]) -> list[list[OnlineRange]]:
        return self.read_rows_and_ranges([], lookups)[1]

    def _read_sets(self, sets: list[str], bounds: list[tuple[bool, str, str]]) -> list[Any]:
        """Each sorted set's members between its bounds, by one call of `_READ_SETS`: as a
        pipeline, a 100-flight read was ~300 commands whose packing and reply handling in
        redis-py cost more than everything else in the read (benchmarks/request_profile.py
        --online redis)."""
        if not sets:
            return []
        args = [orjson.dumps(bounds)]
        return self._call("online read", lambda: self._read_script(keys=sets, args=args))

    @staticmethod
    def _parse_ranges(
        lookups: Sequence[OnlineRangeLookup], found: Iterator[Any]
    ) -> list[list[OnlineRange]]:
        results: list[list[OnlineRange]] = []
        for lookup in lookups:
            as_dict = row_to_dict(tuple(lookup.group.columns))
            results.append(
                [[as_dict(row) for row in _decode_rows(next(found))] for _ in lookup.keys]
            )
        return results

    def row_count(self, group: FeatureGroup) -> int:
        """Keys held for the group (a SCAN: for operators and tests, not the request path);
        for an event group, the rows under its first index."""
        if group.online_indexes:
            index = group.online_indexes[0]
            sets = _glob_escape(f"{self._prefix(group.table_name)}@{','.join(index)}:") + "*"
            return self._call(
                f"count of {group.table_name}",
                lambda: sum(
                    int(self._client.zcard(name))
                    for name in set(self._client.scan_iter(match=sets, count=1_000))
                ),
            )
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

    def check(self, groups: Sequence[FeatureGroup]) -> None:
        """The server answers (a group's keys are only key prefixes: nothing to open)."""
        self.ping()

    def close(self) -> None:
        self._client.close()


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a namespace is matched literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
