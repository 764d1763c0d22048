"""Feature store on a Hopsworks cluster, through the official ``hopsworks`` SDK (its ``hsfs``).

How our contract maps onto Hopsworks:

- a group is a Hopsworks feature group of the same name and version, stored as a DELTA table
  (the SDK merges inserts on primary key + event time, as our Delta backend does), with its
  features, types and descriptions declared up front;
- a table version is a commit id from ``FeatureGroup.commit_details()`` (epoch milliseconds),
  and reading at a version is ``Query.as_of(commit id)``;
- inserts skip rows the table already holds unchanged, so re-running a backfill commits nothing;
- the online store (RonDB) is written by the SDK at insert time: the Python engine sends only the
  newest row per key of each insert, and ``upsert_if_newer`` stops an older backfill from
  overwriting a newer row. ``materialize`` therefore has nothing left to do;
- online reads go through one feature view per group (``<group>_online``) and
  ``FeatureView.get_feature_vectors``, one call for all keys. RonDB keeps the newest row per
  key only (no ``online_history``), so a read as of T uses it when its event time is within
  the tolerance at or before T, and finds the key missing otherwise (an ``as_of`` in the past
  is answered exactly only while no newer row has arrived);
- the point-in-time join reads each group through the SDK and joins client-side with the same
  ``point_in_time_join`` as the local backend. The SDK's own server-side join cannot take an
  arbitrary spine from Python: spine dataframes are Spark-only.

The SDK's event-time filters keep whole seconds only (``Feature._get_filter_value``), so reads
ask it for the enclosing whole-second window and trim to the exact bounds here.

The SDK is imported lazily: importing ``hsfs`` takes seconds, and only this backend needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import polars as pl

from shared.errors import (
    ConfigurationError,
    FeatureGroupNotFound,
    SchemaMismatch,
    StoreUnavailable,
)
from shared.feature_group import FeatureGroup, columns_to_add
from shared.feature_store.online_as_of import row_as_of
from shared.feature_store.online_codec import align_to_keys
from shared.feature_store.point_in_time import join_from_store
from shared.feature_store.protocol import (
    AsyncOnlineReads,
    GroupInfo,
    JoinRequest,
    MaterializeResult,
    OnlineLookup,
    OnlineRange,
    OnlineRangeLookup,
    OnlineRow,
    WriteResult,
)
from shared.settings import DEFAULT_PIT_JOIN, FeatureStoreSettings, PitJoinMethod

log = logging.getLogger(__name__)

T = TypeVar("T")

TIME_TRAVEL_FORMAT = "DELTA"
ONLINE_VIEW_SUFFIX = "_online"
DEFAULT_PORT = 443

# Offline types the SDK's Python engine uses for our dtypes (hopsworks_common.core.type_systems):
# it stores every integer narrower than 64 bits as `int`; reads are cast back to the group's
# exact dtypes.
_HOPSWORKS_TYPES: dict[pl.DataType, str] = {
    pl.Int8(): "int",
    pl.Int16(): "int",
    pl.Int32(): "int",
    pl.Int64(): "bigint",
    pl.Float32(): "float",
    pl.Float64(): "double",
    pl.Boolean(): "boolean",
    pl.String(): "string",
    pl.Date(): "date",
}


def hopsworks_type(name: str, dtype: pl.DataType) -> str:
    """The Hopsworks offline type for one of our columns."""
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone not in (None, "UTC"):
            raise NotImplementedError(
                f"column {name!r}: Hopsworks timestamps carry no time zone; store {dtype} as UTC"
            )
        return "timestamp"
    if dtype not in _HOPSWORKS_TYPES:
        raise NotImplementedError(f"column {name!r}: no Hopsworks type for Polars dtype {dtype}")
    return _HOPSWORKS_TYPES[dtype]


def hopsworks_features(group: FeatureGroup, only: Sequence[str] | None = None) -> list[Any]:
    """The group's columns (or ``only`` these) as SDK ``Feature`` objects, with their types
    and descriptions."""
    from hsfs.feature import Feature

    descriptions = group.descriptions()
    return [
        Feature(
            name,
            type=hopsworks_type(name, dtype),
            description=descriptions[name],
            primary=name in group.primary_key,
        )
        for name, dtype in group.polars_schema.items()
        if only is None or name in only
    ]


def schema_differences(handle: Any, group: FeatureGroup) -> list[str]:
    """How an existing Hopsworks feature group differs from the code's definition."""
    diffs: list[str] = []
    if set(handle.primary_key) != set(group.primary_key):
        diffs.append(
            f"primary key: stored {list(handle.primary_key)}, defined {list(group.primary_key)}"
        )
    if handle.event_time != group.event_time:
        diffs.append(f"event time: stored {handle.event_time!r}, defined {group.event_time!r}")
    stored = {f.name: f.type for f in handle.features}
    for name, dtype in group.polars_schema.items():
        wanted = hopsworks_type(name, dtype)
        if name not in stored and name in group.added_columns:
            continue  # added on registration (see `FeatureGroup.added_columns`)
        if name not in stored:
            diffs.append(f"column {name!r} ({wanted}) is new")
        elif stored[name] != wanted:
            diffs.append(f"column {name!r}: stored {stored[name]}, defined {wanted}")
    diffs += [f"column {n!r} was removed" for n in stored if n not in group.polars_schema]
    return diffs


def _as(expr: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    """Cast one column read from the SDK to our dtype; naive timestamps from it are UTC."""
    if isinstance(target, pl.Datetime) and isinstance(source, pl.Datetime):
        zone = target.time_zone or "UTC"
        expr = (
            expr.dt.replace_time_zone(zone)
            if source.time_zone is None
            else expr.dt.convert_time_zone(zone)
        )
    return expr.cast(target)


def typed(group: FeatureGroup, frame: Any, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """A frame the SDK returned (Polars or pandas), as ``columns`` with the group's dtypes."""
    frame = frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(frame)
    names = list(columns) if columns is not None else group.columns
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise SchemaMismatch(f"Hopsworks returned {group.table_name} without columns {missing}")
    schema = group.polars_schema
    return frame.select(_as(pl.col(n), frame.schema[n], schema[n]).alias(n) for n in names)


def _whole_seconds(start: datetime | None, end: datetime | None) -> tuple[Any, Any]:
    """The smallest whole-second window holding [start, end): what the SDK filter can express."""
    low = None if start is None else start.replace(microsecond=0)
    high = None
    if end is not None:
        high = end.replace(microsecond=0)
        if end.microsecond:
            high += timedelta(seconds=1)
    return low, high


def _host_and_port(host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":")
    if name and port.isdigit():
        return name, int(port)
    return host, DEFAULT_PORT


def sdk_call(host: str, what: str, action: Callable[[], T]) -> T:
    """Run one SDK call; network and REST failures become StoreUnavailable naming the host."""
    from hopsworks_common.client.exceptions import RestAPIError

    try:
        return action()
    except (OSError, RestAPIError) as exc:  # requests' errors (SSL included) are OSErrors
        raise StoreUnavailable(f"Hopsworks {host}: {what} failed: {exc}") from exc


# RonDB feature vectors are read by primary key: an event-time range per airport is not among
# the SDK's online reads, and Hopsworks ingests streams through its own Kafka topics.
_NO_EVENT_GROUPS = (
    "the streaming pipeline and fresh window features need the local backend (Delta + SQLite "
    "or Redis online); the Hopsworks backend reads online features by primary key only"
)


class HopsworksFeatureStore:
    """Our ``FeatureStore`` on a Hopsworks project's feature store (see the module docstring)."""

    online_reads_in_process = False  # RonDB over the network
    online_async: AsyncOnlineReads | None = None  # the SDK's reads block: they take a thread

    def __init__(
        self,
        feature_store: Any,
        *,
        host: str = "hopsworks",
        online_timeout_s: float = 1.0,
        on_close: Callable[[], None] | None = None,
        pit_join: PitJoinMethod = DEFAULT_PIT_JOIN,
    ) -> None:
        self._fs = feature_store
        self.pit_join = pit_join
        self.host = host
        self._timeout_s = online_timeout_s
        self._on_close = on_close
        self._groups: dict[str, Any] = {}
        self._views: dict[str, Any] = {}

    @classmethod
    def connect(cls, settings: FeatureStoreSettings) -> HopsworksFeatureStore:
        """Log in with the project's API key and open its feature store (Python engine)."""
        if not (
            settings.hopsworks_host and settings.hopsworks_project and settings.hopsworks_api_key
        ):
            raise ConfigurationError("Hopsworks needs a host, a project and an API key")
        import hopsworks

        host, port = _host_and_port(settings.hopsworks_host)
        api_key = settings.hopsworks_api_key.get_secret_value()
        where = f"{host}:{port}"
        project = sdk_call(
            where,
            f"login to project {settings.hopsworks_project}",
            lambda: hopsworks.login(
                host=host,
                port=port,
                project=settings.hopsworks_project,
                api_key_value=api_key,
                engine="python",
            ),
        )
        feature_store = sdk_call(where, "opening the feature store", project.get_feature_store)
        log.info("connected to Hopsworks %s, project %s", where, settings.hopsworks_project)
        return cls(
            feature_store,
            host=where,
            online_timeout_s=settings.online_timeout_s,
            on_close=hopsworks.logout,
            pit_join=settings.pit_join,
        )

    # -- SDK calls -------------------------------------------------------------------------

    def _sdk(self, what: str, action: Callable[[], T]) -> T:
        return sdk_call(self.host, what, action)

    def _find(self, group: FeatureGroup) -> Any | None:
        if group.table_name not in self._groups:
            handle = self._sdk(
                f"look-up of {group.table_name}",
                lambda: self._fs.get_feature_group(group.name, version=group.version),
            )
            if handle is None:
                return None
            self._groups[group.table_name] = handle
        return self._groups[group.table_name]

    def _handle(self, group: FeatureGroup) -> Any:
        handle = self._find(group)
        if handle is None:
            raise FeatureGroupNotFound(
                f"feature group {group.name} v{group.version} does not exist on Hopsworks "
                f"{self.host}; run the feature pipeline (backfill) first"
            )
        return handle

    def _commits(self, label: str, handle: Any, wallclock_time: int | None = None) -> list[int]:
        """The newest commit id at or before ``wallclock_time`` (default: now), as a list."""
        details = self._sdk(
            f"commit history of {label}",
            lambda: handle.commit_details(wallclock_time=wallclock_time, limit=1),
        )
        return sorted(int(commit) for commit in details)

    # -- definition ------------------------------------------------------------------------

    def register(self, group: FeatureGroup) -> None:
        handle = self._find(group)
        if handle is not None:
            self._check_schema(group, handle)
            return
        handle = self._sdk(
            f"creation of {group.table_name}",
            lambda: self._fs.create_feature_group(
                name=group.name,
                version=group.version,
                description=group.description,
                online_enabled=group.online,
                time_travel_format=TIME_TRAVEL_FORMAT,
                primary_key=list(group.primary_key),
                event_time=group.event_time,
                features=hopsworks_features(group),
            ),
        )
        self._sdk(f"creation of {group.table_name}", handle.save)
        self._groups[group.table_name] = handle
        log.info("created feature group %s on Hopsworks %s", group.table_name, self.host)

    def _check_schema(self, group: FeatureGroup, handle: Any) -> None:
        diffs = schema_differences(handle, group)
        if diffs:
            raise SchemaMismatch(
                f"feature group {group.table_name} exists on Hopsworks with a different schema: "
                + "; ".join(diffs)
                + f". Bump the version of {group.name!r} instead of changing it in place."
            )
        new = columns_to_add([f.name for f in handle.features], group)
        if new:
            self._sdk(
                f"adding columns {new} to {group.table_name}",
                partial(handle.append_features, hopsworks_features(group, only=new)),
            )
            log.info("added columns %s to feature group %s", new, group.table_name)
        self._sync_descriptions(group, handle)

    def _sync_descriptions(self, group: FeatureGroup, handle: Any) -> None:
        """Descriptions are documentation, not schema: keep the catalog in step with the code."""
        stored = {f.name: f.description or "" for f in handle.features}
        for name, text in group.descriptions().items():
            if name in stored and stored[name] != text:
                self._sdk(
                    f"description of {group.table_name}.{name}",
                    partial(handle.update_feature_description, name, text),
                )

    # -- writes ----------------------------------------------------------------------------

    def append(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        """Hopsworks has no cheaper path for new-by-construction rows: an upsert."""
        return self.insert(group, rows)

    def insert(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        """Upsert on primary key + event time, sending only rows that are new or changed."""
        rows = group.conform_for_write(rows, "inserting")
        keys = [*group.primary_key, group.event_time]
        handle = self._handle(group)
        existing = self._stored_like(group, rows)
        changes = rows.join(existing, on=group.columns, how="anti", nulls_equal=True)
        updated = changes.join(existing.select(keys), on=keys, how="semi", nulls_equal=True).height
        if not changes.is_empty():
            # Polars goes in as is: the SDK's Python engine takes it natively, and a pandas
            # round trip would turn nullable integer columns into floats.
            self._sdk(
                f"insert into {group.table_name}",
                lambda: handle.insert(changes, write_options=self._write_options(group)),
            )
        result = WriteResult(
            group=group.table_name,
            rows_in=rows.height,
            inserted=changes.height - updated,
            updated=updated,
            table_version=self.table_version(group),
        )
        log.info("upserted %s", result)
        return result

    def _stored_like(self, group: FeatureGroup, rows: pl.DataFrame) -> pl.DataFrame:
        """Stored rows in the event-time window of ``rows``, to tell new rows from re-sent ones."""
        if rows.is_empty():
            return rows
        times = rows[group.event_time]
        end = times.max() + timedelta(microseconds=1)  # type: ignore[operator]
        return self.read(group, times.min(), end)  # type: ignore[arg-type]

    @staticmethod
    def _write_options(group: FeatureGroup) -> dict[str, Any]:
        """Wait for the commit so the new table version is known when insert returns."""
        options: dict[str, Any] = {"wait_for_job": True}
        if group.online:
            options["wait_for_online_ingestion"] = True
            # Online keeps the newest row by event time, even when a backfill of older days
            # runs after newer data was written.
            options["online_ingestion_options"] = {"upsert_if_newer": True}
        return options

    # -- reads -----------------------------------------------------------------------------

    def read(
        self,
        group: FeatureGroup,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """Offline rows with start <= event time < end, optionally as of a table version."""
        handle = self._handle(group)
        names = list(columns) if columns is not None else group.columns
        fetched = list(dict.fromkeys([*names, group.event_time]))
        commits = self._commits(group.table_name, handle, version)
        if version is not None and version not in commits:
            raise FeatureGroupNotFound(f"{group.table_name} has no table version {version}")
        if not commits:  # registered, never written: Hopsworks has no table to read yet
            return pl.DataFrame(schema=group.polars_schema).select(names)
        query = handle.select(fetched)
        if version is not None:
            query = query.as_of(version)
        low, high = _whole_seconds(start, end)
        raw = self._sdk(
            f"read of {group.table_name}",
            lambda: query.read(dataframe_type="polars", start_time=low, end_time=high),
        )
        frame = typed(group, raw, fetched)
        if start is not None:
            frame = frame.filter(pl.col(group.event_time) >= start)
        if end is not None:
            frame = frame.filter(pl.col(group.event_time) < end)
        return frame.select(names)

    def table_version(self, group: FeatureGroup) -> int | None:
        """The newest commit id (epoch ms); None while the group does not exist or is empty."""
        handle = self._find(group)
        if handle is None:
            return None
        commits = self._commits(group.table_name, handle)
        return commits[-1] if commits else None

    # -- online ----------------------------------------------------------------------------

    def materialize(self, group: FeatureGroup) -> MaterializeResult:
        """Nothing to push: Hopsworks wrote the newest row per key online at insert time."""
        if not group.online:
            raise ValueError(f"feature group {group.name} is offline-only")
        version = self.table_version(group)
        log.info("%s: online rows are written by Hopsworks at insert", group.table_name)
        return MaterializeResult(group.table_name, 0, version, version)

    def get_online_features(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        """Rows for ``keys`` in their order, nulls for unknown keys; one SDK call for all."""
        if not group.online:
            raise ValueError(f"feature group {group.name} is offline-only")
        pk = list(group.primary_key)
        wanted = keys.select(pl.col(k).cast(group.polars_schema[k]) for k in pk)
        entries = wanted.unique(maintain_order=True).to_dicts()
        found = pl.DataFrame(schema=group.polars_schema)
        if entries:
            view = self._online_view(group)
            vectors = self._sdk(
                f"online read of {group.table_name}",
                lambda: view.get_feature_vectors(
                    entry=entries, return_type="polars", allow_missing=True, timeout=self._timeout_s
                ),
            )
            found = typed(group, vectors).filter(pl.all_horizontal(pl.col(pk).is_not_null()))
        return align_to_keys(group, keys, found)

    def check_online(self, groups: Sequence[FeatureGroup]) -> None:
        """Each group exists on the cluster (looked up once, then remembered); the service's
        readiness probe read covers the online path itself."""
        for group in groups:
            self._handle(group)

    def get_online_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Plain rows per lookup (one SDK call per group); a key with no online row gives None.

        RonDB has no row-level "missing" marker in a feature vector, so a row whose features
        are all null counts as missing."""
        results: list[list[OnlineRow]] = []
        for lookup in lookups:
            group, pk = lookup.group, list(lookup.group.primary_key)
            keys = pl.DataFrame(
                [list(k) for k in lookup.keys],
                schema={k: group.polars_schema[k] for k in pk},
                orient="row",
            )
            found = self.get_online_features(group, keys)
            events = found.get_column(group.event_time).dt.epoch("us").to_list()
            features = [c for c in group.columns if c not in pk]
            times: Sequence[int | None] = lookup.as_of or [None] * len(events)
            results.append(
                [
                    row
                    if any(row[f] is not None for f in features)
                    and row_as_of([(event,)], 0, t, lookup.tolerance_us) is not None
                    else None
                    for row, event, t in zip(found.to_dicts(), events, times, strict=True)
                ]
            )
        return results

    def get_online_rows_and_ranges(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        if ranges:
            raise ConfigurationError(_NO_EVENT_GROUPS)
        return self.get_online_rows(lookups), []

    def write_online(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        raise ConfigurationError(_NO_EVENT_GROUPS)

    def _online_view(self, group: FeatureGroup) -> Any:
        """One feature view per online group, serving all its columns by primary key."""
        if group.table_name not in self._views:
            handle = self._handle(group)
            view = self._sdk(
                f"feature view of {group.table_name}",
                lambda: self._fs.get_or_create_feature_view(
                    name=group.name + ONLINE_VIEW_SUFFIX,
                    version=group.version,
                    query=handle.select(group.columns),
                    description=f"online serving of {group.name}: {group.description}",
                ),
            )
            self._sdk(f"serving set-up of {group.table_name}", view.init_serving)
            self._views[group.table_name] = view
        return self._views[group.table_name]

    # -- training and batch data -----------------------------------------------------------

    def point_in_time_join(
        self,
        spine: pl.DataFrame,
        spine_time: str,
        requests: Sequence[JoinRequest],
        *,
        versions: dict[str, int] | None = None,
        keep_event_times: bool = False,
    ) -> pl.DataFrame:
        """Join ``requests`` onto ``spine``; ``versions`` pins tables (group name -> commit id)."""
        return join_from_store(
            self.read,
            spine,
            spine_time,
            requests,
            versions=versions,
            keep_event_times=keep_event_times,
            method=self.pit_join,
        )

    # -- catalog ---------------------------------------------------------------------------

    def catalog(self) -> list[GroupInfo]:
        """Every feature group of the project's feature store, with Hopsworks' own types."""
        handles = self._sdk("listing feature groups", self._fs.get_feature_groups)
        return [self._info(h) for h in sorted(handles, key=lambda h: (h.name, h.version))]

    def _info(self, handle: Any) -> GroupInfo:
        label = f"{handle.name}_v{handle.version}"
        commits = self._commits(label, handle)
        version = commits[-1] if commits else None
        rows = self._sdk(
            f"row count of {label}",
            lambda: handle.select(list(handle.primary_key)[:1]).read(dataframe_type="polars"),
        )
        return GroupInfo(
            name=handle.name,
            version=int(handle.version),
            primary_key=tuple(handle.primary_key),
            event_time=handle.event_time,
            online=bool(handle.online_enabled),
            rows=len(rows),
            table_version=version,
            columns={f.name: f.type for f in handle.features},
            descriptions={f.name: f.description or "" for f in handle.features},
            online_materialized_version=version if handle.online_enabled else None,
        )

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
