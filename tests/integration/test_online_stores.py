"""One contract, every online backend: SQLite (a file in tmp_path) and a real Redis server.

Redis is expected at 127.0.0.1:6379; each test gets its own namespace, deleted afterwards, so
the tests never touch other data on the server. When no server answers, the Redis cases are
skipped with the reason.
"""

from __future__ import annotations

import math
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from shared.errors import StoreUnavailable
from shared.feature_definitions import AIRPORT_WEATHER, FLIGHTS, PLANES, ROUTE_STATS
from shared.feature_group import FeatureGroup
from shared.feature_store.local import LocalFeatureStore
from shared.feature_store.offline_delta import DeltaOfflineStore
from shared.feature_store.online_codec import storable
from shared.feature_store.online_redis import RedisOnlineStore
from shared.feature_store.online_sqlite import SQLiteOnlineStore
from shared.feature_store.protocol import OnlineLookup, OnlineStore
from shared.prediction_time import epoch_us

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = datetime(2013, 3, 10, 6, 59, 59, 123_456, tzinfo=UTC)  # microseconds must survive


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL} ({exc}); start one to run these tests")
    return client


@pytest.fixture
def redis_store() -> Iterator[RedisOnlineStore]:
    client = _redis_or_skip()
    namespace = f"test-{uuid.uuid4().hex}"
    store = RedisOnlineStore(REDIS_URL, namespace=namespace, timeout_s=2.0)
    yield store
    store.close()
    doomed = list(client.scan_iter(match=f"{namespace}:*", count=1_000))
    if doomed:
        client.delete(*doomed)
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def online(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "redis":
        yield request.getfixturevalue("redis_store")
        return
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    yield store
    store.close()


# -- rows of the real groups, with nulls, extremes and non-ASCII text -----------------------


def route_rows(day: date = date(2013, 3, 10), routes: int = 3, bump: float = 0.0) -> pl.DataFrame:
    dests = ["LAX", "ORD", "SFO", "ATL", "BOS"][:routes]
    valid_from = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)
    return ROUTE_STATS.conform(
        pl.DataFrame(
            {
                "origin": ["JFK"] * routes,
                "dest": dests,
                "valid_from": [valid_from] * routes,
                "day": [day] * routes,
                "flights_7d": [0, 2_147_483_647, 12][:routes],
                "delay_rate_7d": [None, 0.1 + bump, 1.0][:routes],
                "mean_dep_delay_7d": [None, -3.3333333, 1e30][:routes],
                "cancel_rate_7d": [0.0, 1 / 3, None][:routes],
                "flights_28d": [0, 30, 70][:routes],
                "delay_rate_28d": [None, 0.25, 0.7][:routes],
                "mean_dep_delay_28d": [None, 12.5, -0.0][:routes],
                "cancel_rate_28d": [0.0, 0.01, 0.02][:routes],
            }
        )
    )


def plane_rows() -> pl.DataFrame:
    return PLANES.conform(
        pl.DataFrame(
            {
                "tailnum": ["N10156", "N102UW", "N3ÄØ"],
                "valid_from": [datetime(1970, 1, 1, tzinfo=UTC)] * 3,
                "year_built": [2004, None, 1959],
                "seats": [55, 182, None],
                "engines": [2, 2, -128],
                "plane_type": ["Fixed wing multi engine", None, 'ünïcode "quoted" ✈'],
                "manufacturer": ["EMBRAER", "AIRBUS INDUSTRIE", ""],
                "engine": ["Turbo-fan", None, "Reciprocating"],
            }
        )
    )


def weather_rows() -> pl.DataFrame:
    return AIRPORT_WEATHER.conform(
        pl.DataFrame(
            {
                "origin": ["EWR", "JFK", "LGA"],
                "observed_at": [T0, T0 - timedelta(hours=1), datetime(1969, 12, 31, tzinfo=UTC)],
                "temp": [39.02, -0.1, None],
                "dewp": [26.06, None, 3.4028235e38],
                "humid": [59.37, 100.0, 0.0],
                "wind_dir": [270.0, None, 360.0],
                "wind_speed": [10.35702, 0.0, None],
                "wind_gust": [None, 24.16, None],
                "precip": [0.0, 0.01, 1.21],
                "pressure": [1012.0, None, 1042.1],
                "visib": [10.0, 0.06, 10.0],
            }
        )
    )


def flight_rows() -> pl.DataFrame:
    """Offline-only in production, but the only group with a Boolean: the codec must cope."""
    return FLIGHTS.conform(
        pl.DataFrame(
            {
                "flight_id": ["2013-01-01-UA1545-EWR-0515", "2013-12-31-B6-745-JFK-2359"],
                "sched_dep_utc": [datetime(2013, 1, 1, 10, 15, tzinfo=UTC), T0],
                "flight_date": [date(2013, 1, 1), date(2013, 12, 31)],
                "sched_dep_time": [515, 2359],
                "carrier": ["UA", "B6"],
                "flight": [1545, 745],
                "tailnum": ["N14228", None],
                "origin": ["EWR", "JFK"],
                "dest": ["IAH", "PSE"],
                "distance": [1400, 1617],
                "dep_delay": [2.0, None],
                "is_cancelled": [False, True],
                "is_delayed": [0, None],
            }
        )
    )


def keys_of(group: FeatureGroup, rows: pl.DataFrame) -> pl.DataFrame:
    return rows.select(group.primary_key)


# -- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "make_rows"),
    [
        (ROUTE_STATS, route_rows),
        (PLANES, plane_rows),
        (AIRPORT_WEATHER, weather_rows),
        (FLIGHTS, flight_rows),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_every_dtype_round_trips_exactly(online: OnlineStore, group, make_rows) -> None:
    rows = make_rows()
    assert online.write(group, rows) == rows.height
    back = online.read(group, keys_of(group, rows).reverse())
    assert back.schema == group.polars_schema
    assert_frame_equal(back, rows.reverse())


def test_missing_keys_give_nulls_in_request_order(online: OnlineStore) -> None:
    rows = route_rows()
    online.write(ROUTE_STATS, rows)
    keys = pl.DataFrame(
        {"origin": ["JFK", "LGA", "JFK", "JFK", "EWR"], "dest": ["ORD", "ORD", "LAX", "ORD", "LAX"]}
    )
    back = online.read(ROUTE_STATS, keys)
    assert back.select("origin", "dest").equals(keys)
    present = back["valid_from"].is_not_null().to_list()
    assert present == [True, False, True, True, False]
    assert_frame_equal(back.slice(0, 1), rows.filter(pl.col("dest") == "ORD"))
    missing = back.filter(pl.col("valid_from").is_null()).drop("origin", "dest")
    assert missing.null_count().row(0) == (2,) * missing.width


def test_request_path_rows_of_several_groups_in_one_read(online: OnlineStore) -> None:
    """``read_rows`` (the online service's frame-free read) agrees with ``read`` value for value:
    stored plain values, None for unknown and null keys, request order, repeats kept."""
    online.write(ROUTE_STATS, route_rows())
    online.write(PLANES, plane_rows())
    route_keys = [("JFK", "ORD"), ("LGA", "ORD"), ("JFK", "ORD"), (None, "ORD")]
    tailnums = [(t,) for t in plane_rows()["tailnum"].to_list()] + [("N0NE",)]
    routes, planes = online.read_rows(
        [OnlineLookup(ROUTE_STATS, route_keys), OnlineLookup(PLANES, tailnums)]
    )
    assert [r is not None for r in routes] == [True, False, True, False]
    assert planes[-1] is None
    framed = storable(ROUTE_STATS, route_rows().filter(pl.col("dest") == "ORD")).to_dicts()
    assert routes[0] == routes[2] == framed[0]
    expected_planes = storable(PLANES, plane_rows()).to_dicts()
    assert planes[:-1] == expected_planes
    assert online.read_rows([OnlineLookup(PLANES, [])]) == [[]]


def test_infinities_round_trip_through_both_reads(online: OnlineStore) -> None:
    """A float column's infinities come back as written, through the frame read and the
    request path's."""
    rows = AIRPORT_WEATHER.conform(
        weather_rows().with_columns(pl.Series("temp", [float("inf"), -float("inf"), 1.5]))
    )
    online.write(AIRPORT_WEATHER, rows)
    assert_frame_equal(online.read(AIRPORT_WEATHER, keys_of(AIRPORT_WEATHER, rows)), rows)
    keys = [(o,) for o in rows["origin"].to_list()]
    (found,) = online.read_rows([OnlineLookup(AIRPORT_WEATHER, keys)])
    assert [row and row["temp"] for row in found] == [float("inf"), -float("inf"), 1.5]


def test_redis_reads_back_a_nan_as_written(redis_store: RedisOnlineStore) -> None:
    """Redis keeps rows as JSON, whose strict parsers refuse NaN (the reader then falls back
    to one that takes it). SQLite has no NaN: it stores NULL."""
    rows = AIRPORT_WEATHER.conform(
        weather_rows().with_columns(pl.Series("temp", [float("nan"), 2.5, None]))
    )
    redis_store.write(AIRPORT_WEATHER, rows)
    assert_frame_equal(redis_store.read(AIRPORT_WEATHER, keys_of(AIRPORT_WEATHER, rows)), rows)
    keys = [(o,) for o in rows["origin"].to_list()]
    (found,) = redis_store.read_rows([OnlineLookup(AIRPORT_WEATHER, keys)])
    temps = [row and row["temp"] for row in found]
    assert math.isnan(temps[0]) and temps[1:] == [2.5, None]


def test_reading_an_empty_key_set_gives_an_empty_typed_frame(online: OnlineStore) -> None:
    back = online.read(PLANES, pl.DataFrame(schema={"tailnum": pl.String}))
    assert back.is_empty()
    assert back.schema == PLANES.polars_schema


def test_writing_a_key_again_overwrites_it(online: OnlineStore) -> None:
    first = route_rows(date(2013, 3, 10))
    second = route_rows(date(2013, 3, 11), routes=2, bump=0.5)
    online.write(ROUTE_STATS, first)
    online.write(ROUTE_STATS, second)
    back = online.read(ROUTE_STATS, keys_of(ROUTE_STATS, first))
    expected = pl.concat([second, first.slice(2)])
    assert_frame_equal(back, expected)


def test_last_row_of_a_key_wins_within_one_write(online: OnlineStore) -> None:
    older, newer = route_rows(date(2013, 3, 10), 1), route_rows(date(2013, 3, 11), 1, bump=0.2)
    online.write(ROUTE_STATS, pl.concat([older, newer]))
    assert_frame_equal(online.read(ROUTE_STATS, keys_of(ROUTE_STATS, older)), newer)


def test_group_versions_never_collide(online: OnlineStore) -> None:
    from dataclasses import replace

    v2 = replace(PLANES, version=2)
    rows = plane_rows()
    online.write(PLANES, rows)
    back = online.read(v2, keys_of(PLANES, rows))
    assert back["valid_from"].null_count() == rows.height


def test_ten_thousand_keys_in_one_read(online: OnlineStore) -> None:
    n = 10_000
    rows = PLANES.conform(
        pl.DataFrame(
            {
                "tailnum": [f"N{i:05d}" for i in range(n)],
                "valid_from": [datetime(1970, 1, 1, tzinfo=UTC)] * n,
                "year_built": [1950 + i % 64 for i in range(n)],
                "seats": [i % 500 + 1 for i in range(n)],
                "engines": [i % 4 + 1 for i in range(n)],
                "plane_type": ["Fixed wing multi engine"] * n,
                "manufacturer": ["BOEING"] * n,
                "engine": ["Turbo-fan"] * n,
            }
        )
    )
    assert online.write(PLANES, rows) == n
    wanted = rows.select("tailnum").sample(fraction=1.0, shuffle=True, seed=7)
    wanted = pl.concat([wanted, pl.DataFrame({"tailnum": ["NOPE"]})])
    started = time.perf_counter()
    back = online.read(PLANES, wanted)
    elapsed = time.perf_counter() - started
    assert back.height == n + 1
    assert back["tailnum"].equals(wanted["tailnum"])
    assert_frame_equal(
        back.head(n), rows.join(wanted.head(n), on="tailnum", how="right").select(PLANES.columns)
    )
    assert back["valid_from"][-1] is None
    assert elapsed < 5.0, f"reading {n} keys took {elapsed:.2f}s"


def test_materialized_version_round_trips(online: OnlineStore) -> None:
    assert online.materialized_version(ROUTE_STATS.table_name) is None
    online.set_materialized_version(ROUTE_STATS.table_name, 3)
    online.set_materialized_version(ROUTE_STATS.table_name, 12)
    online.set_materialized_version(PLANES.table_name, 0)
    assert online.materialized_version(ROUTE_STATS.table_name) == 12
    assert online.materialized_version(PLANES.table_name) == 0
    assert online.materialized_version("never_v1") is None


def test_it_is_an_online_store_that_answers_ping(online: OnlineStore) -> None:
    assert isinstance(online, OnlineStore)
    online.ping()
    online.write(ROUTE_STATS, route_rows())
    online.check([ROUTE_STATS])


def test_sqlite_check_sees_the_file_the_next_process_would_open(tmp_path: Path) -> None:
    """One connection stays open: a missing table, a deleted file and a replaced file must
    still be seen (readiness), and reads follow a replacement."""
    path = tmp_path / "online.sqlite"
    store = SQLiteOnlineStore(path)
    with pytest.raises(StoreUnavailable, match=f"table {ROUTE_STATS.table_name} unreadable"):
        store.check([ROUTE_STATS])
    rows = route_rows()
    store.write(ROUTE_STATS, rows)
    store.check([ROUTE_STATS])
    other = SQLiteOnlineStore(tmp_path / "other.sqlite")
    other.write(ROUTE_STATS, rows.head(1))
    other.close()

    path.unlink()
    with pytest.raises(StoreUnavailable, match="is gone"):
        store.check([ROUTE_STATS])
    lookup = [OnlineLookup(ROUTE_STATS, [tuple(r) for r in rows.select("origin", "dest").rows()])]
    assert all(row is not None for row in store.read_rows(lookup)[0])  # the open file serves

    (tmp_path / "other.sqlite").rename(path)
    store.check([ROUTE_STATS])  # the new file, reopened
    found = store.read_rows(lookup)[0]
    assert found[0] is not None and found[1:] == [None] * (rows.height - 1)
    store.close()


# -- Redis specifics -------------------------------------------------------------------------


def test_redis_keeps_one_sorted_set_of_compact_rows_per_key_under_its_namespace(
    redis_store: RedisOnlineStore,
) -> None:
    rows = route_rows()
    redis_store.write(ROUTE_STATS, pl.concat([route_rows(date(2013, 3, 9)), rows]))
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"{redis_store.namespace}:asof:route_stats_v1:"
    # SCAN may repeat a key while the shared server rehashes: compare distinct keys.
    keys = sorted(set(client.scan_iter(match=prefix + "*")))
    assert keys == sorted(f'{prefix}["JFK","{d}"]'.encode() for d in rows["dest"])
    members = client.zrange(keys[0], 0, -1, withscores=True)
    assert len(members) == 2 and all(m.startswith(b'["JFK"') for m, _ in members)
    assert members[-1][1] == rows["valid_from"].dt.epoch("us")[0]  # scored by event time
    assert redis_store.row_count(ROUTE_STATS) == rows.height


def test_redis_unreachable_fails_fast_with_store_unavailable() -> None:
    store = RedisOnlineStore("redis://:s3cret@127.0.0.1:1/0", namespace="x", timeout_s=0.5)
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1") as caught:
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.read(PLANES, pl.DataFrame({"tailnum": ["N1"]}))
    with pytest.raises(StoreUnavailable):
        store.write(PLANES, plane_rows())
    assert time.perf_counter() - started < 2.0
    assert "s3cret" not in str(caught.value)


# -- the local feature store on Delta + Redis ---------------------------------------------


def test_local_store_materializes_only_changed_keys_to_redis(
    tmp_path: Path, redis_store: RedisOnlineStore
) -> None:
    store = LocalFeatureStore(DeltaOfflineStore(str(tmp_path / "offline")), redis_store)
    store.register(ROUTE_STATS)
    store.insert(ROUTE_STATS, pl.concat([route_rows(date(2013, 3, 9)), route_rows()]))

    first = store.materialize(ROUTE_STATS)
    assert (first.keys_written, first.from_version) == (3, None)  # keys, each with 2 days
    keys = keys_of(ROUTE_STATS, route_rows())
    assert_frame_equal(store.get_online_features(ROUTE_STATS, keys), route_rows())

    newer = route_rows(date(2013, 3, 11), routes=1, bump=0.4)  # only JFK-LAX moves on
    store.insert(ROUTE_STATS, newer)
    second = store.materialize(ROUTE_STATS)
    assert second.keys_written == 1
    assert second.from_version == first.to_version
    assert_frame_equal(
        store.get_online_features(ROUTE_STATS, keys), pl.concat([newer, route_rows().slice(1)])
    )

    third = store.materialize(ROUTE_STATS)
    assert third.keys_written == 0
    assert redis_store.materialized_version(ROUTE_STATS.table_name) == second.to_version


def _open_and_close(path: str) -> str | None:
    try:
        SQLiteOnlineStore(Path(path)).close()
    except StoreUnavailable as exc:
        return str(exc)
    return None


def test_processes_opening_one_fresh_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    # The ranks of a DDP training run open the same fresh store at once; switching a new file to
    # WAL is an exclusive lock that SQLite refuses without waiting, so opening retries it.
    context = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"race{i}" / "online.sqlite") for i in range(20)]
    with context.Pool(4) as pool:
        errors = pool.map(_open_and_close, [p for p in paths for _ in range(4)], chunksize=1)
    assert errors == [None] * len(errors)
    store = SQLiteOnlineStore(Path(paths[0]))
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_an_older_row_never_replaces_a_newer_one(online: OnlineStore) -> None:
    # Two writers that raced (parallel windows materializing) may write in either order.
    older, newer = route_rows(date(2013, 3, 10), 2), route_rows(date(2013, 3, 11), 2, bump=0.2)
    online.write(ROUTE_STATS, newer)
    online.write(ROUTE_STATS, older)
    assert_frame_equal(online.read(ROUTE_STATS, keys_of(ROUTE_STATS, older)), newer)
    online.write(ROUTE_STATS, pl.concat([newer, older]))  # within one write too
    assert_frame_equal(online.read(ROUTE_STATS, keys_of(ROUTE_STATS, older)), newer)
    restated = newer.with_columns(pl.col("delay_rate_7d") + 0.1)  # the same time: replaced
    online.write(ROUTE_STATS, restated)
    assert_frame_equal(online.read(ROUTE_STATS, keys_of(ROUTE_STATS, older)), restated)


# -- reads as of a prediction time T ---------------------------------------------------------


HOUR_US = 3_600_000_000
HOURLY = replace(AIRPORT_WEATHER, online_history=timedelta(hours=6))


def hourly_rows(hours: list[int], origin: str = "EWR") -> pl.DataFrame:
    """One weather row per given hour after T0, its temperature the hour (to tell them apart)."""
    return AIRPORT_WEATHER.conform(
        pl.DataFrame(
            {
                "origin": [origin] * len(hours),
                "observed_at": [T0 + timedelta(hours=h) for h in hours],
                "temp": [float(h) for h in hours],
            }
        ).with_columns(
            pl.lit(None, pl.Float32).alias(c)
            for c in AIRPORT_WEATHER.columns
            if c not in ("origin", "observed_at", "temp")
        )
    )


def as_of(hours_after_t0: float) -> int:
    return epoch_us(T0) + int(hours_after_t0 * HOUR_US)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    hours=st.lists(st.integers(0, 40), min_size=1, max_size=25, unique=True),
    batches=st.integers(1, 3),
    times=st.lists(st.floats(-5, 50, allow_nan=False), min_size=1, max_size=6),
    tolerance_h=st.one_of(st.none(), st.integers(0, 5)),
)
def test_a_read_as_of_t_is_the_offline_as_of_match_or_missing(
    online: OnlineStore,
    hours: list[int],
    batches: int,
    times: list[float],
    tolerance_h: int | None,
) -> None:
    """Against a brute-force oracle over every row ever written: the row served as of T is the
    newest with T - tolerance <= event time <= T; it is exactly the oracle's whenever that row
    is within the kept history (newest - online_history), and otherwise the oracle's or
    missing: never a later row and never a staler one."""
    origin = f"K{uuid.uuid4().hex[:6]}"  # a fresh key per example (the store is shared)
    rows = hourly_rows(sorted(hours), origin)
    for part in range(batches):  # written in time order, as runs materialize
        chunk = rows.filter(pl.int_range(pl.len()) % batches == part)
        online.write(HOURLY, chunk.sort("observed_at"))
    tolerance = None if tolerance_h is None else tolerance_h * HOUR_US
    [served] = online.read_rows(
        [OnlineLookup(HOURLY, [(origin,)] * len(times), [as_of(t) for t in times], tolerance)]
    )
    written = [as_of(h) for h in sorted(hours)]
    kept_from = written[-1] - 6 * HOUR_US
    for t, row in zip(times, served, strict=True):
        moment = as_of(t)
        valid = [
            e for e in written if e <= moment and (tolerance is None or e >= moment - tolerance)
        ]
        expected = max(valid) if valid else None
        got = None if row is None else row["observed_at"]
        if expected is None or expected >= kept_from:  # the row valid at T is still kept
            assert got == expected, (t, got, expected)
        else:
            assert got in (None, expected), (t, got, expected)
        if row is not None:
            assert row["temp"] == pytest.approx((got - epoch_us(T0)) / HOUR_US)


def test_the_newest_row_serves_every_later_t_within_its_tolerance(online: OnlineStore) -> None:
    """Live operation: T is now; the row written last is used until the tolerance says it is
    too old, then the key is missing (as offline)."""
    online.write(HOURLY, hourly_rows([0, 1, 2]))
    lookup = OnlineLookup(
        HOURLY, [("EWR",)] * 4, [as_of(2), as_of(4.5), as_of(5), as_of(5.01)], 3 * HOUR_US
    )
    [served] = online.read_rows([lookup])
    assert [None if r is None else r["temp"] for r in served] == [2.0, 2.0, 2.0, None]


def test_rows_older_than_the_history_are_dropped_on_write(online: OnlineStore) -> None:
    online.write(HOURLY, hourly_rows(list(range(0, 10))))
    online.write(HOURLY, hourly_rows([12]))
    every = [as_of(h) for h in range(0, 13)]
    [served] = online.read_rows([OnlineLookup(HOURLY, [("EWR",)] * len(every), every)])
    kept = [None if r is None else r["temp"] for r in served]
    assert kept == [None] * 6 + [6.0, 7.0, 8.0, 9.0, 9.0, 9.0, 12.0]  # from 12 - 6 hours on
    assert_frame_equal(online.read(HOURLY, pl.DataFrame({"origin": ["EWR"]})), hourly_rows([12]))


def test_zero_history_keeps_the_newest_row_only(online: OnlineStore) -> None:
    newest_only = replace(AIRPORT_WEATHER, online_history=timedelta(0))
    online.write(newest_only, hourly_rows([0, 1, 2]))
    lookup = OnlineLookup(newest_only, [("EWR",)] * 2, [as_of(1.5), as_of(2)])
    assert [None if r is None else r["temp"] for r in online.read_rows([lookup])[0]] == [None, 2.0]


def test_materialize_keeps_each_changed_keys_history(tmp_path: Path) -> None:
    store = LocalFeatureStore(
        DeltaOfflineStore(str(tmp_path / "offline")), SQLiteOnlineStore(tmp_path / "o.sqlite")
    )
    store.register(ROUTE_STATS)
    days = [date(2013, 3, d) for d in range(1, 12)]
    store.insert(ROUTE_STATS, pl.concat([route_rows(d, bump=d.day / 100) for d in days[:8]]))
    store.materialize(ROUTE_STATS)
    store.insert(ROUTE_STATS, pl.concat([route_rows(d, bump=d.day / 100) for d in days[8:]]))
    store.materialize(ROUTE_STATS)
    # As of noon of each day: the rows of the last two days before the newest are online.
    noon = [epoch_us(datetime(d.year, d.month, d.day, 12, tzinfo=UTC)) for d in days]
    [served] = store.get_online_rows(
        [OnlineLookup(ROUTE_STATS, [("JFK", "ORD")] * len(days), noon)]
    )
    assert [None if r is None else date(1970, 1, 1) + timedelta(r["day"]) for r in served] == [
        None
    ] * 8 + days[8:]
    store.close()


def test_an_older_sqlite_file_is_converted_and_refilled(tmp_path: Path) -> None:
    """A file of the newest-row-only layout (primary key alone) keeps serving its rows, and its
    materialized version is cleared so that the next materialization writes the history."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE _materialization (table_name TEXT PRIMARY KEY, offline_version INTEGER)"
    )
    conn.execute("INSERT INTO _materialization VALUES ('route_stats_v1', 7)")
    columns = ", ".join(f'"{c}"' for c in ROUTE_STATS.columns)
    conn.execute(f"CREATE TABLE route_stats_v1 ({columns}, PRIMARY KEY (origin, dest))")
    stored = storable(ROUTE_STATS, route_rows()).rows()
    marks = ", ".join("?" * len(ROUTE_STATS.columns))
    conn.executemany(f"INSERT INTO route_stats_v1 VALUES ({marks})", stored)
    conn.commit()
    conn.close()
    online = SQLiteOnlineStore(path)
    assert online.materialized_version(ROUTE_STATS.table_name) == 7
    keys = keys_of(ROUTE_STATS, route_rows())
    assert_frame_equal(online.read(ROUTE_STATS, keys), route_rows())
    assert online.materialized_version(ROUTE_STATS.table_name) is None  # refill in full
    online.write(ROUTE_STATS, route_rows(date(2013, 3, 11)))
    assert online.row_count(ROUTE_STATS) == 3
    lookup = OnlineLookup(
        ROUTE_STATS, [("JFK", "ORD")], [epoch_us(datetime(2013, 3, 10, 12, tzinfo=UTC))]
    )
    assert online.read_rows([lookup])[0][0] is not None  # the older row is still there
    online.close()


def test_a_late_older_write_keeps_the_newest_row_and_the_history_cut_from_it(
    online: OnlineStore,
) -> None:
    """Windows materializing out of order: the older window's rows stay only within the
    history of the newest stored row, so what is kept stays a suffix of the key's rows."""
    online.write(HOURLY, hourly_rows([20, 21, 22]))
    online.write(HOURLY, hourly_rows([3, 4, 15, 16]))  # a window before, written after
    every = [as_of(h) for h in (4, 15.5, 16, 22)]
    [served] = online.read_rows([OnlineLookup(HOURLY, [("EWR",)] * len(every), every)])
    assert [None if r is None else r["temp"] for r in served] == [None, None, 16.0, 22.0]
