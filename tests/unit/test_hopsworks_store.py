"""The Hopsworks backend against the installed SDK's real signatures.

No cluster can be reached from here, so the SDK objects are ``create_autospec`` mocks of the real
classes (``spec_set=True``): a call with a wrong name or argument fails as it would on a cluster.
What they return is shaped like what the SDK's Python engine returns (Polars frames with naive
UTC timestamps and 32-bit integers), so the mapping back to our dtypes is exercised too.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from unittest import mock

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import SecretStr

from shared.errors import FeatureGroupNotFound, SchemaMismatch, StoreUnavailable
from shared.feature_definitions import AIRPORT_WEATHER, FLIGHTS, PLANES, ROUTE_STATS
from shared.feature_group import FeatureGroup
from shared.feature_store.hopsworks_store import (
    HopsworksFeatureStore,
    hopsworks_features,
    hopsworks_type,
)
from shared.feature_store.point_in_time import point_in_time_join
from shared.feature_store.protocol import FeatureStore, JoinRequest, OnlineLookup
from shared.prediction_time import epoch_us
from shared.settings import FeatureStoreSettings, PitJoinMethod, StoreBackend

# The SDK is an optional extra (`.[hopsworks]`): without it these tests cannot check anything.
pytest.importorskip("hopsworks", reason="the hopsworks extra is not installed")

import requests  # a dependency of hopsworks
from hopsworks_common.project import Project
from hsfs.constructor.query import Query
from hsfs.feature_group import FeatureGroup as SdkFeatureGroup
from hsfs.feature_store import FeatureStore as SdkFeatureStore
from hsfs.feature_view import FeatureView as SdkFeatureView

pytestmark = pytest.mark.unit

COMMIT_1 = 1_736_000_000_000  # commit ids are epoch milliseconds
COMMIT_2 = 1_736_000_060_000


def autospec(cls: type) -> Any:
    return mock.create_autospec(cls, instance=True, spec_set=True)


def sdk_group(group: FeatureGroup, *, commits: list[int] | None = None) -> Any:
    """An SDK feature group that exists on the cluster with ``group``'s schema."""
    handle = autospec(SdkFeatureGroup)
    handle.name = group.name
    handle.version = group.version
    handle.primary_key = list(group.primary_key)
    handle.event_time = group.event_time
    handle.online_enabled = group.online
    handle.features = hopsworks_features(group)
    handle.commit_details.return_value = commit_details(commits or [])
    return handle


def commit_details(ids: list[int]) -> dict[int, dict[str, Any]]:
    return {
        i: {"committedOn": str(i), "rowsUpdated": 0, "rowsInserted": 1, "rowsDeleted": 0}
        for i in ids
    }


def sdk_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` as the SDK returns it: naive UTC timestamps, narrow integers widened."""
    return frame.with_columns(
        [
            pl.col(n).dt.replace_time_zone(None)
            for n, t in frame.schema.items()
            if t == pl.Datetime("us", "UTC")
        ]
        + [pl.col(n).cast(pl.Int32) for n, t in frame.schema.items() if t in (pl.Int8, pl.Int16)]
    )


def route_rows(
    day: date, dests: tuple[str, ...] = ("LAX", "ORD"), rate: float = 0.25
) -> pl.DataFrame:
    n = len(dests)
    midnight = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)
    return ROUTE_STATS.conform(
        pl.DataFrame(
            {
                "origin": ["JFK"] * n,
                "dest": list(dests),
                "valid_from": [midnight] * n,
                "day": [day] * n,
                "flights_7d": [70] * n,
                "delay_rate_7d": [rate] * n,
                "mean_dep_delay_7d": [None] * n,
                "cancel_rate_7d": [0.0] * n,
                "flights_28d": [280] * n,
                "delay_rate_28d": [0.5] * n,
                "mean_dep_delay_28d": [12.5] * n,
                "cancel_rate_28d": [0.01] * n,
            }
        )
    )


def plane_rows() -> pl.DataFrame:
    return PLANES.conform(
        pl.DataFrame(
            {
                "tailnum": ["N10156", "N102UW"],
                "valid_from": [datetime(1970, 1, 1, tzinfo=UTC)] * 2,
                "year_built": [2004, None],
                "seats": [55, 182],
                "engines": [2, 2],
                "plane_type": ["Fixed wing multi engine", None],
                "manufacturer": ["EMBRAER", "AIRBUS INDUSTRIE"],
                "engine": ["Turbo-fan", "Turbo-fan"],
            }
        )
    )


@pytest.fixture
def sdk() -> Any:
    return autospec(SdkFeatureStore)


@pytest.fixture
def store(sdk: Any) -> HopsworksFeatureStore:
    return HopsworksFeatureStore(sdk, host="c.hopsworks.test:443", online_timeout_s=0.25)


def with_query(handle: Any, result: pl.DataFrame) -> tuple[Any, Any]:
    """Wire ``handle.select(...)`` to a query whose reads (plain or as of a commit) give result."""
    query, pinned = autospec(Query), autospec(Query)
    handle.select.return_value = query
    query.as_of.return_value = pinned
    query.read.return_value = result
    pinned.read.return_value = result
    return query, pinned


# -- definition ------------------------------------------------------------------------------


def test_it_satisfies_the_feature_store_protocol(store: HopsworksFeatureStore) -> None:
    assert isinstance(store, FeatureStore)


def test_register_creates_a_delta_group_with_keys_event_time_and_documented_features(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    sdk.get_feature_group.return_value = None
    created = autospec(SdkFeatureGroup)
    sdk.create_feature_group.return_value = created

    store.register(ROUTE_STATS)

    sdk.get_feature_group.assert_called_once_with("route_stats", version=1)
    kwargs = sdk.create_feature_group.call_args.kwargs
    assert kwargs["name"] == "route_stats" and kwargs["version"] == 1
    assert kwargs["primary_key"] == ["origin", "dest"]
    assert kwargs["event_time"] == "valid_from"
    assert kwargs["online_enabled"] is True
    assert kwargs["time_travel_format"] == "DELTA"
    assert kwargs["description"] == ROUTE_STATS.description
    features = {f.name: f for f in kwargs["features"]}
    assert list(features) == ROUTE_STATS.columns
    assert (features["valid_from"].type, features["day"].type) == ("timestamp", "date")
    assert (features["flights_7d"].type, features["delay_rate_7d"].type) == ("int", "float")
    assert [n for n, f in features.items() if f.primary] == ["origin", "dest"]
    assert features["dest"].description == "destination FAA code"
    created.save.assert_called_once_with()


def test_register_of_an_existing_group_checks_schema_and_refreshes_descriptions(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    handle = sdk_group(PLANES)
    handle.features[2].description = "stale words"  # year_built
    sdk.get_feature_group.return_value = handle

    store.register(PLANES)

    sdk.create_feature_group.assert_not_called()
    handle.update_feature_description.assert_called_once_with("year_built", "year manufactured")


def test_register_refuses_a_changed_schema(store: HopsworksFeatureStore, sdk: Any) -> None:
    handle = sdk_group(PLANES)
    handle.features = [f for f in handle.features if f.name != "seats"]
    handle.features[2].type = "double"  # year_built
    sdk.get_feature_group.return_value = handle

    with pytest.raises(SchemaMismatch, match="different schema") as caught:
        store.register(PLANES)
    assert "'seats' (int) is new" in str(caught.value)
    assert "'year_built': stored double, defined int" in str(caught.value)


def test_types_without_a_faithful_hopsworks_type_are_refused() -> None:
    with pytest.raises(NotImplementedError, match=r"'tags'.*List"):
        hopsworks_type("tags", pl.List(pl.String))
    with pytest.raises(NotImplementedError, match="'local'"):
        hopsworks_type("local", pl.Datetime("us", "America/New_York"))
    assert {hopsworks_type(n, t) for n, t in FLIGHTS.polars_schema.items()} == {
        "string",
        "timestamp",
        "date",
        "int",
        "float",
        "boolean",
    }


# -- writes ----------------------------------------------------------------------------------


def test_first_insert_sends_every_row_and_waits_for_online_ingestion(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    handle = sdk_group(ROUTE_STATS)
    handle.commit_details.side_effect = [commit_details([]), commit_details([COMMIT_1])]
    sdk.get_feature_group.return_value = handle
    rows = route_rows(date(2013, 3, 10))

    result = store.insert(ROUTE_STATS, rows.with_columns(pl.col("flights_7d").cast(pl.Int64)))

    (sent,), kwargs = handle.insert.call_args
    assert_frame_equal(sent, rows)
    assert kwargs["write_options"] == {
        "wait_for_job": True,
        "wait_for_online_ingestion": True,
        "online_ingestion_options": {"upsert_if_newer": True},
    }
    handle.select.assert_not_called()  # an empty table is not read
    assert (result.inserted, result.updated, result.table_version) == (2, 0, COMMIT_1)


def test_reinserting_stored_rows_sends_nothing_and_changed_rows_alone_go(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    stored = route_rows(date(2013, 3, 10))
    handle = sdk_group(ROUTE_STATS, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    query, _ = with_query(handle, sdk_frame(stored))

    same = store.insert(ROUTE_STATS, stored)
    handle.insert.assert_not_called()
    assert (same.inserted, same.updated, same.table_version) == (0, 0, COMMIT_1)
    assert query.read.call_args.kwargs == {
        "dataframe_type": "polars",
        "start_time": datetime(2013, 3, 10, 5, tzinfo=UTC),
        "end_time": datetime(2013, 3, 10, 5, 0, 1, tzinfo=UTC),  # whole seconds around [t, t]
    }

    changed = pl.concat([stored.slice(0, 1), route_rows(date(2013, 3, 10), ("ORD",), rate=0.75)])
    result = store.insert(ROUTE_STATS, changed)
    (sent,), _ = handle.insert.call_args
    assert_frame_equal(sent, changed.slice(1))
    assert (result.inserted, result.updated) == (0, 1)


def test_offline_only_groups_are_written_without_online_options(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    handle = sdk_group(FLIGHTS)
    handle.commit_details.side_effect = [commit_details([]), commit_details([COMMIT_1])]
    sdk.get_feature_group.return_value = handle
    rows = FLIGHTS.conform(
        pl.DataFrame(
            {
                "flight_id": ["2013-01-01-UA1545-EWR-0515"],
                "sched_dep_utc": [datetime(2013, 1, 1, 10, 15, tzinfo=UTC)],
                "flight_date": [date(2013, 1, 1)],
                "sched_dep_time": [515],
                "carrier": ["UA"],
                "flight": [1545],
                "tailnum": ["N14228"],
                "origin": ["EWR"],
                "dest": ["IAH"],
                "distance": [1400],
                "dep_delay": [2.0],
                "is_cancelled": [False],
                "is_delayed": [0],
            }
        )
    )
    store.insert(FLIGHTS, rows)
    assert handle.insert.call_args.kwargs["write_options"] == {"wait_for_job": True}


def test_append_is_the_upsert_on_hopsworks(store: HopsworksFeatureStore, sdk: Any) -> None:
    handle = sdk_group(ROUTE_STATS)
    handle.commit_details.side_effect = [commit_details([]), commit_details([COMMIT_1])]
    sdk.get_feature_group.return_value = handle
    rows = route_rows(date(2013, 3, 10))

    result = store.append(ROUTE_STATS, rows)

    (sent,), _ = handle.insert.call_args
    assert_frame_equal(sent, rows)
    assert (result.inserted, result.table_version) == (rows.height, COMMIT_1)


def test_duplicate_keys_in_one_insert_are_refused(store: HopsworksFeatureStore, sdk: Any) -> None:
    rows = route_rows(date(2013, 3, 10))
    with pytest.raises(ValueError, match="share a primary key"):
        store.insert(ROUTE_STATS, pl.concat([rows, rows]))
    sdk.get_feature_group.assert_not_called()


def test_insert_into_an_unknown_group_raises_not_found(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    sdk.get_feature_group.return_value = None
    with pytest.raises(FeatureGroupNotFound, match="route_stats v1"):
        store.insert(ROUTE_STATS, route_rows(date(2013, 3, 10)))


# -- reads -----------------------------------------------------------------------------------


def test_read_as_of_a_version_trims_to_exact_bounds_and_restores_dtypes(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    weather = AIRPORT_WEATHER.conform(
        pl.DataFrame(
            {
                "origin": ["EWR", "EWR", "EWR"],
                "observed_at": [
                    datetime(2013, 1, 1, 5, 0, 0, 400_000, tzinfo=UTC) + timedelta(microseconds=m)
                    for m in (0, 300_000, 700_000)
                ],
                **{c: [1.5, None, 3.25] for c in AIRPORT_WEATHER.columns[2:]},
            }
        )
    )
    handle = sdk_group(AIRPORT_WEATHER, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    query, pinned = with_query(handle, sdk_frame(weather))
    start = datetime(2013, 1, 1, 5, 0, 0, 500_000, tzinfo=UTC)
    end = datetime(2013, 1, 1, 5, 0, 1, 50_000, tzinfo=UTC)

    out = store.read(AIRPORT_WEATHER, start, end, version=COMMIT_1, columns=["origin", "temp"])

    handle.commit_details.assert_called_with(wallclock_time=COMMIT_1, limit=1)
    handle.select.assert_called_once_with(["origin", "temp", "observed_at"])
    query.as_of.assert_called_once_with(COMMIT_1)
    query.read.assert_not_called()
    assert pinned.read.call_args.kwargs == {
        "dataframe_type": "polars",
        "start_time": datetime(2013, 1, 1, 5, 0, 0, tzinfo=UTC),
        "end_time": datetime(2013, 1, 1, 5, 0, 2, tzinfo=UTC),
    }
    assert_frame_equal(out, weather.slice(1, 1).select("origin", "temp"))


def test_read_returns_the_groups_exact_dtypes(store: HopsworksFeatureStore, sdk: Any) -> None:
    handle = sdk_group(PLANES, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    with_query(handle, sdk_frame(plane_rows()).to_pandas())  # a pandas answer maps back too
    assert_frame_equal(store.read(PLANES), plane_rows())


def test_reading_an_unknown_version_raises_not_found(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    handle = sdk_group(PLANES, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    with pytest.raises(FeatureGroupNotFound, match=f"no table version {COMMIT_1 + 1}"):
        store.read(PLANES, version=COMMIT_1 + 1)


def test_a_registered_but_empty_group_reads_as_an_empty_typed_frame(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    sdk.get_feature_group.return_value = sdk_group(PLANES)
    assert store.read(PLANES).schema == PLANES.polars_schema
    assert store.table_version(PLANES) is None


def test_table_version_is_the_newest_commit(store: HopsworksFeatureStore, sdk: Any) -> None:
    handle = sdk_group(PLANES, commits=[COMMIT_2, COMMIT_1])
    sdk.get_feature_group.return_value = handle
    assert store.table_version(PLANES) == COMMIT_2
    sdk.get_feature_group.return_value = None
    assert store.table_version(ROUTE_STATS) is None


# -- online ----------------------------------------------------------------------------------


def test_online_features_come_from_one_feature_vector_call_in_key_order(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    handle = sdk_group(ROUTE_STATS, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    serving_query = autospec(Query)
    handle.select.return_value = serving_query
    view = autospec(SdkFeatureView)
    sdk.get_or_create_feature_view.return_value = view
    stored = route_rows(date(2013, 3, 10))
    nulls = [pl.lit(None).alias(c) for c in ROUTE_STATS.columns[2:]]
    missing = ROUTE_STATS.conform(
        pl.DataFrame({"origin": ["EWR"], "dest": ["SFO"]}).with_columns(nulls)
    )
    vectors = sdk_frame(pl.concat([stored.slice(1), missing, stored.slice(0, 1)]))
    view.get_feature_vectors.return_value = vectors
    keys = pl.DataFrame(
        {"origin": ["JFK", "EWR", "JFK", "JFK"], "dest": ["ORD", "SFO", "LAX", "ORD"]}
    )

    out = store.get_online_features(ROUTE_STATS, keys)
    store.get_online_features(ROUTE_STATS, keys.head(1))

    handle.select.assert_called_once_with(ROUTE_STATS.columns)
    sdk.get_or_create_feature_view.assert_called_once_with(
        name="route_stats_online",
        version=1,
        query=serving_query,
        description=mock.ANY,
    )
    view.init_serving.assert_called_once_with()
    first_call = view.get_feature_vectors.call_args_list[0]
    assert first_call == mock.call(
        entry=[
            {"origin": "JFK", "dest": "ORD"},
            {"origin": "EWR", "dest": "SFO"},
            {"origin": "JFK", "dest": "LAX"},
        ],
        return_type="polars",
        allow_missing=True,
        timeout=0.25,
    )
    expected = pl.concat([stored.slice(1), missing, stored.slice(0, 1), stored.slice(1)])
    assert_frame_equal(out, expected)


def test_request_path_rows_mark_keys_without_a_vector_as_missing(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    handle = sdk_group(ROUTE_STATS, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    handle.select.return_value = autospec(Query)
    view = autospec(SdkFeatureView)
    sdk.get_or_create_feature_view.return_value = view
    stored = route_rows(date(2013, 3, 10))
    nulls = [pl.lit(None).alias(c) for c in ROUTE_STATS.columns[2:]]
    missing = ROUTE_STATS.conform(
        pl.DataFrame({"origin": ["EWR"], "dest": ["SFO"]}).with_columns(nulls)
    )
    view.get_feature_vectors.return_value = sdk_frame(pl.concat([missing, stored.slice(0, 1)]))

    (rows,) = store.get_online_rows(
        [OnlineLookup(ROUTE_STATS, [("JFK", "LAX"), ("EWR", "SFO"), ("JFK", "LAX")])]
    )

    view.get_feature_vectors.assert_called_once()
    assert rows[1] is None
    assert rows[0] == rows[2] == stored.slice(0, 1).to_dicts()[0]


def test_request_path_rows_as_of_t_use_the_newest_row_only_when_valid_at_t(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    """RonDB keeps the newest row per key: as of T it serves that row when T - tolerance <=
    its event time <= T, and nothing otherwise (never a row from after T)."""
    handle = sdk_group(ROUTE_STATS, commits=[COMMIT_1])
    sdk.get_feature_group.return_value = handle
    handle.select.return_value = autospec(Query)
    view = autospec(SdkFeatureView)
    sdk.get_or_create_feature_view.return_value = view
    stored = route_rows(date(2013, 3, 10)).slice(0, 1)
    view.get_feature_vectors.return_value = sdk_frame(stored)
    valid_from = epoch_us(stored["valid_from"][0])
    day = 86_400_000_000
    times = [valid_from - 1, valid_from, valid_from + 2 * day, valid_from + 3 * day]
    key = tuple(stored.select(ROUTE_STATS.primary_key).row(0))

    (rows,) = store.get_online_rows([OnlineLookup(ROUTE_STATS, [key] * 4, times, 2 * day)])

    assert [r is not None for r in rows] == [False, True, True, False]
    assert rows[1] == stored.to_dicts()[0]


def test_materialize_has_nothing_to_push(store: HopsworksFeatureStore, sdk: Any) -> None:
    sdk.get_feature_group.return_value = sdk_group(ROUTE_STATS, commits=[COMMIT_2])
    result = store.materialize(ROUTE_STATS)
    assert (result.keys_written, result.from_version, result.to_version) == (0, COMMIT_2, COMMIT_2)
    with pytest.raises(ValueError, match="offline-only"):
        store.materialize(FLIGHTS)


# -- training and batch data -------------------------------------------------------------------


@pytest.mark.parametrize("method", list(PitJoinMethod))
def test_point_in_time_join_reads_pinned_versions_and_joins_like_the_local_backend(
    sdk: Any, method: PitJoinMethod
) -> None:
    store = HopsworksFeatureStore(sdk, host="c.hopsworks.test:443", pit_join=method)
    routes = pl.concat([route_rows(date(2013, 3, 9), rate=0.1), route_rows(date(2013, 3, 10))])
    planes = plane_rows()
    route_handle = sdk_group(ROUTE_STATS, commits=[COMMIT_1])
    plane_handle = sdk_group(PLANES, commits=[COMMIT_2])
    sdk.get_feature_group.side_effect = lambda name, version: {
        "route_stats": route_handle,
        "planes": plane_handle,
    }[name]
    route_query, route_pinned = with_query(route_handle, sdk_frame(routes))
    plane_query, _ = with_query(plane_handle, sdk_frame(planes))
    spine = pl.DataFrame(
        {
            "origin": ["JFK", "JFK", "JFK"],
            "dest": ["LAX", "ORD", "LAX"],
            "tailnum": ["N10156", "N0NE", "N102UW"],
            "sched_dep_utc": [
                datetime(2013, 3, 10, 14, tzinfo=UTC),
                datetime(2013, 3, 9, 4, tzinfo=UTC),  # before any stats: nulls
                datetime(2013, 3, 9, 20, 0, 0, 1, tzinfo=UTC),
            ],
        }
    )
    requests_ = [
        JoinRequest(ROUTE_STATS, features=["delay_rate_7d"], prefix="route_"),
        JoinRequest(PLANES, features=["seats"], prefix="plane_"),
    ]

    out = store.point_in_time_join(
        spine, "sched_dep_utc", requests_, versions={"route_stats": COMMIT_1}
    )

    route_query.as_of.assert_called_once_with(COMMIT_1)
    plane_query.as_of.assert_not_called()
    assert route_pinned.read.call_args.kwargs["end_time"] == datetime(
        2013, 3, 10, 14, 0, 1, tzinfo=UTC
    )
    expected = point_in_time_join(
        spine, "sched_dep_utc", [(requests_[0], routes), (requests_[1], planes)], method=method
    )
    assert_frame_equal(out, expected)
    assert out["route_delay_rate_7d"].to_list() == [0.25, None, pytest.approx(0.1)]
    assert out["plane_seats"].to_list() == [55, None, 182]


# -- catalog, errors, connection -------------------------------------------------------------


def test_catalog_describes_each_group_from_hopsworks_metadata(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    planes = sdk_group(PLANES, commits=[COMMIT_2])
    flights = sdk_group(FLIGHTS, commits=[COMMIT_1])
    sdk.get_feature_groups.return_value = [planes, flights]
    with_query(planes, pl.DataFrame({"tailnum": ["N1", "N2", "N3"]}))
    with_query(flights, pl.DataFrame({"flight_id": ["a"]}))

    infos = {i.name: i for i in store.catalog()}

    assert list(infos) == ["flights", "planes"]
    assert infos["planes"].rows == 3 and infos["planes"].table_version == COMMIT_2
    assert infos["planes"].primary_key == ("tailnum",) and infos["planes"].online
    assert infos["planes"].online_materialized_version == COMMIT_2
    assert infos["planes"].columns["seats"] == "int"
    assert infos["planes"].descriptions["seats"] == "number of seats"
    assert infos["flights"].online_materialized_version is None


def test_network_failures_become_store_unavailable_naming_the_host(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    sdk.get_feature_group.side_effect = requests.ConnectionError("connection refused")
    with pytest.raises(StoreUnavailable, match=r"c\.hopsworks\.test:443.*connection refused"):
        store.read(PLANES)


def _settings(host: str = "c.hopsworks.test:8181") -> FeatureStoreSettings:
    return FeatureStoreSettings(
        backend=StoreBackend.hopsworks,
        hopsworks_host=host,
        hopsworks_project="flights",
        hopsworks_api_key=SecretStr("k3y"),
        online_timeout_s=0.5,
    )


def test_connect_logs_in_with_the_api_key_and_opens_the_feature_store(sdk: Any) -> None:
    project = autospec(Project)
    project.get_feature_store.return_value = sdk
    with (
        mock.patch("hopsworks.login", autospec=True, return_value=project) as login,
        mock.patch("hopsworks.logout", autospec=True) as logout,
    ):
        store = HopsworksFeatureStore.connect(
            _settings().model_copy(update={"pit_join": PitJoinMethod.library})
        )
        assert store.pit_join is PitJoinMethod.library  # FTI_PIT_JOIN reaches the backend
        sdk.get_feature_group.return_value = None
        assert store.table_version(PLANES) is None  # answered by the project's feature store
        store.close()

    login.assert_called_once_with(
        host="c.hopsworks.test", port=8181, project="flights", api_key_value="k3y", engine="python"
    )
    project.get_feature_store.assert_called_once_with()
    logout.assert_called_once_with()
    sdk.get_feature_group.assert_called_once_with("planes", version=1)
    assert store.host == "c.hopsworks.test:8181"


def test_connect_to_an_unreachable_cluster_raises_store_unavailable() -> None:
    refused = requests.ConnectionError("Max retries exceeded")
    with (
        mock.patch("hopsworks.login", autospec=True, side_effect=refused),
        pytest.raises(StoreUnavailable, match=r"c\.hopsworks\.test:443.*login to project flights"),
    ):
        HopsworksFeatureStore.connect(_settings("c.hopsworks.test"))


def test_register_adds_a_group_s_added_columns_to_an_existing_group(
    store: HopsworksFeatureStore, sdk: Any
) -> None:
    """A nullable column added to the definition (`FeatureGroup.added_columns`) is appended
    to the existing feature group, not refused as a schema change; other changes still are."""
    from dataclasses import replace

    evolved = replace(PLANES, added_columns=("manufacturer",))
    handle = sdk_group(PLANES)
    handle.features = [f for f in handle.features if f.name != "manufacturer"]
    sdk.get_feature_group.return_value = handle

    store.register(evolved)

    (call,) = handle.append_features.call_args_list
    (added,) = call.args[0]
    assert (added.name, added.type, added.primary) == ("manufacturer", "string", False)
    sdk.create_feature_group.assert_not_called()
    with pytest.raises(SchemaMismatch, match="'manufacturer' \\(string\\) is new"):
        store.register(PLANES)  # not an added column there: a change to refuse
