"""Event groups online (SQLite file and a real Redis): rows read back by index and event-time
range, in time order, idempotent and order-independent upserts, one read with key lookups."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis

from shared.errors import StoreUnavailable
from shared.feature_definitions import DEPARTURE_EVENTS, STREAM_PROGRESS
from shared.feature_store.online_redis import RedisOnlineStore
from shared.feature_store.online_sqlite import SQLiteOnlineStore
from shared.feature_store.protocol import (
    AsyncOnlineReads,
    OnlineLookup,
    OnlineRangeLookup,
    OnlineStore,
)
from shared.recent_departures import DepartureLog, epoch_us

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = datetime(2013, 12, 31, 14, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "redis"])
def online(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        store = SQLiteOnlineStore(tmp_path / "online.sqlite")
        yield store
        store.close()
        return
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL} ({exc})")
    namespace = f"test-events-{uuid.uuid4().hex}"
    redis_store = RedisOnlineStore(REDIS_URL, namespace=namespace, timeout_s=2.0)
    yield redis_store
    redis_store.close()
    doomed = list(client.scan_iter(match=f"{namespace}:*", count=1_000))
    if doomed:
        client.delete(*doomed)
    client.close()


def events(*specs: tuple[str, str, str | None, int, float | None]) -> pl.DataFrame:
    """(flight id, origin, tailnum, minutes after T0, delay or None for a cancellation)."""
    return DEPARTURE_EVENTS.conform(
        pl.DataFrame(
            {
                "flight_id": [s[0] for s in specs],
                "event_at": [T0 + timedelta(minutes=s[3]) for s in specs],
                "origin": [s[1] for s in specs],
                "carrier": ["UA"] * len(specs),
                "tailnum": [s[2] for s in specs],
                "sched_dep_utc": [T0 + timedelta(minutes=s[3] - (s[4] or 0)) for s in specs],
                "dep_delay": [s[4] for s in specs],
                "is_cancelled": [s[4] is None for s in specs],
            }
        )
    )


def by_origin(origin: str, start_min: int, end_min: int) -> OnlineRangeLookup:
    return OnlineRangeLookup(
        DEPARTURE_EVENTS,
        ("origin",),
        [(origin,)],
        [epoch_us(T0 + timedelta(minutes=start_min))],
        [epoch_us(T0 + timedelta(minutes=end_min))],
    )


def test_ranges_return_the_rows_in_time_order_with_exact_bounds(online: OnlineStore) -> None:
    online.write(
        DEPARTURE_EVENTS,
        events(
            ("c", "EWR", "N2", 30, 5.0),
            ("a", "EWR", "N1", 0, 10.0),
            ("b", "EWR", None, 10, None),
            ("d", "JFK", "N1", 20, -3.0),
        ),
    )
    [[ewr], [jfk]] = online.read_ranges([by_origin("EWR", 0, 30), by_origin("JFK", 0, 60)])
    assert [r["flight_id"] for r in ewr] == ["a", "b"]  # start inclusive, end exclusive
    assert ewr[0]["event_at"] == epoch_us(T0) and ewr[0]["dep_delay"] == 10.0
    assert ewr[1]["dep_delay"] is None and ewr[1]["tailnum"] is None
    assert [r["flight_id"] for r in jfk] == ["d"]
    tails = OnlineRangeLookup(
        DEPARTURE_EVENTS,
        ("tailnum",),
        [("N1",), ("N9",), (None,)],
        [epoch_us(T0)] * 3,
        [epoch_us(T0 + timedelta(hours=1))] * 3,
    )
    [[n1, n9, unknown]] = online.read_ranges([tails])
    assert [r["flight_id"] for r in n1] == ["a", "d"]
    assert n9 == [] and unknown == []


def test_upserts_are_idempotent_and_a_restated_event_is_read_as_the_latest(
    online: OnlineStore,
) -> None:
    first = events(("a", "EWR", "N1", 0, 10.0), ("b", "EWR", "N1", 5, 1.0))
    online.write(DEPARTURE_EVENTS, first)
    online.write(DEPARTURE_EVENTS, first)  # a redelivered micro-batch
    online.write(DEPARTURE_EVENTS, first.reverse())
    [[rows]] = online.read_ranges([by_origin("EWR", -60, 60)])
    assert [r["flight_id"] for r in rows] == ["a", "b"]
    assert online.row_count(DEPARTURE_EVENTS) == 2  # type: ignore[attr-defined]
    # b restated: it left from JFK, later. Both rows are kept; readers take a flight's latest.
    online.write(DEPARTURE_EVENTS, events(("b", "JFK", "N1", 7, 3.0)))
    [[ewr], [jfk]] = online.read_ranges([by_origin("EWR", -60, 60), by_origin("JFK", -60, 60)])
    log = DepartureLog.from_rows([*ewr, *jfk])
    assert sorted(zip(log.flight_id, log.origin, strict=True)) == [("a", "EWR"), ("b", "JFK")]


def test_key_lookups_and_ranges_in_one_read(online: OnlineStore) -> None:
    online.write(DEPARTURE_EVENTS, events(("a", "LGA", "N1", 0, 10.0)))
    online.write(
        STREAM_PROGRESS,
        STREAM_PROGRESS.conform(
            pl.DataFrame(
                {"stream": ["departures"], "watermark": [T0], "committed_at": [T0], "events": [1]}
            )
        ),
    )
    rows, ranges = online.read_rows_and_ranges(
        [OnlineLookup(STREAM_PROGRESS, [("departures",), ("other",)])],
        [by_origin("LGA", 0, 1)],
    )
    assert rows[0][0] is not None and rows[0][0]["watermark"] == epoch_us(T0)
    assert rows[0][1] is None
    assert [r["flight_id"] for r in ranges[0][0]] == ["a"]


def test_the_asyncio_read_answers_as_the_blocking_one(online: OnlineStore) -> None:
    """Redis's asyncio read (what the service awaits on its loop) gives the blocking read's
    rows and ranges, value for value; SQLite has none (its reads stay on the loop's thread)."""
    online.write(DEPARTURE_EVENTS, events(("a", "LGA", "N1", 0, 10.0), ("b", "LGA", "N2", 5, None)))
    lookups = [OnlineLookup(STREAM_PROGRESS, [("departures",)])]
    ranges = [by_origin("LGA", 0, 10), by_origin("EWR", 0, 10)]
    if not isinstance(online, AsyncOnlineReads):
        assert isinstance(online, SQLiteOnlineStore)
        return

    async def read_twice() -> list[object]:
        try:
            # twice: the second reuses the loop's client and its loaded script
            return [await online.read_rows_and_ranges_async(lookups, ranges) for _ in range(2)]
        finally:
            await online.aclose()

    expected = online.read_rows_and_ranges(lookups, ranges)
    assert asyncio.run(read_twice()) == [expected, expected]
    assert [r["flight_id"] for r in expected[1][0][0]] == ["a", "b"]
    # A new loop (another run) gets a client of its own.
    assert asyncio.run(read_twice())[0] == expected


def test_both_reads_survive_a_redis_restart(online: OnlineStore) -> None:
    """What a Redis restart or failover does to a serving process's clients: their pooled
    connections are closed by the server, and the server forgets the loaded read script. The
    next read, blocking or on the loop, answers as before (one reconnect, the script loaded
    again), with no error to serve."""
    if not isinstance(online, RedisOnlineStore):
        return
    admin = redis.Redis.from_url(REDIS_URL)
    before = {client["id"] for client in admin.client_list()}  # the store has none yet
    online.write(DEPARTURE_EVENTS, events(("a", "LGA", "N1", 0, 10.0)))
    ranges = [by_origin("LGA", 0, 10)]

    def restart() -> None:
        """The store's connections dropped and every script forgotten, as on a restart."""
        opened = {client["id"] for client in admin.client_list()} - before
        assert opened, "the store holds no connection of its own"
        for client_id in opened:
            admin.client_kill_filter(_id=client_id)
        admin.script_flush()

    async def read_across_a_restart() -> list[object]:
        try:
            answers = [await online.read_rows_and_ranges_async([], ranges)]
            restart()
            answers.append(await online.read_rows_and_ranges_async([], ranges))
            return answers
        finally:
            await online.aclose()

    try:
        expected = online.read_rows_and_ranges([], ranges)
        restart()
        assert online.read_rows_and_ranges([], ranges) == expected
        assert asyncio.run(read_across_a_restart()) == [expected, expected]
    finally:
        admin.close()


def test_an_unreachable_redis_fails_the_asyncio_read_with_store_unavailable() -> None:
    store = RedisOnlineStore("redis://127.0.0.1:1/0", namespace="nowhere", timeout_s=0.5)

    async def read() -> None:
        try:
            await store.read_rows_and_ranges_async([], [by_origin("LGA", 0, 10)])
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailable, match="Redis online store"):
        asyncio.run(read())
    store.close()


def test_a_lookup_on_an_index_the_group_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="no online index"):
        OnlineRangeLookup(DEPARTURE_EVENTS, ("carrier",), [("UA",)], [0], [1])


def test_only_the_days_within_the_horizon_are_kept(online: OnlineStore) -> None:
    """Ten days of events, written a day at a time: the store keeps the UTC days within
    the group's horizon of the newest, and a late batch of older days is not written back."""
    horizon_days = DEPARTURE_EVENTS.online_horizon.days  # type: ignore[union-attr]
    day = 24 * 60
    for d in range(10):
        online.write(DEPARTURE_EVENTS, events((f"f{d}", "EWR", "N1", d * day, 1.0)))
    [[kept]] = online.read_ranges([by_origin("EWR", -day, 11 * day)])
    newest_day = (epoch_us(T0) // 86_400_000_000) + 9
    first_kept = newest_day - horizon_days
    assert [r["flight_id"] for r in kept] == [f"f{d}" for d in range(10) if d >= 9 - horizon_days]
    assert all(r["event_at"] // 86_400_000_000 >= first_kept for r in kept)
    online.write(DEPARTURE_EVENTS, events(("late", "EWR", "N1", 0, 1.0)))  # day 0, too old
    [[after]] = online.read_ranges([by_origin("EWR", -day, 11 * day)])
    assert "late" not in [r["flight_id"] for r in after]
