"""The embedded default store: Delta Lake offline + SQLite or Redis online."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import polars as pl
from deltalake.exceptions import DeltaError

from shared.feature_group import FeatureGroup
from shared.feature_store.offline_delta import DeltaOfflineStore
from shared.feature_store.online_as_of import recent_per_key
from shared.feature_store.point_in_time import join_from_store
from shared.feature_store.protocol import (
    AsyncOnlineReads,
    CompactResult,
    GroupInfo,
    JoinRequest,
    MaterializeResult,
    OnlineLookup,
    OnlineRange,
    OnlineRangeLookup,
    OnlineRow,
    OnlineStore,
    WriteResult,
)
from shared.settings import DEFAULT_PIT_JOIN, PitJoinMethod

log = logging.getLogger(__name__)


class LocalFeatureStore:
    def __init__(
        self,
        offline: DeltaOfflineStore,
        online: OnlineStore,
        *,
        pit_join: PitJoinMethod = DEFAULT_PIT_JOIN,
    ) -> None:
        self.offline = offline
        self.online = online
        self.pit_join = pit_join
        # Looked up once: the service asks for it per batch, and a protocol isinstance check
        # inspects the class each time.
        self._online_async = online if isinstance(online, AsyncOnlineReads) else None

    @property
    def online_reads_in_process(self) -> bool:
        return self.online.reads_in_process

    @property
    def online_async(self) -> AsyncOnlineReads | None:
        return self._online_async

    def register(self, group: FeatureGroup) -> None:
        self.offline.register(group)

    def insert(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        return self.offline.insert(group, rows)

    def append(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        return self.offline.append(group, rows)

    def read(
        self,
        group: FeatureGroup,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        return self.offline.read(group, start, end, version=version, columns=columns)

    def compact(self, group: FeatureGroup, *, vacuum_hours: int | None = None) -> CompactResult:
        """Compact the group's offline table (see `DeltaOfflineStore.compact`)."""
        return self.offline.compact(group, vacuum_hours=vacuum_hours)

    def table_version(self, group: FeatureGroup) -> int | None:
        return self.offline.version(group)

    def materialize(self, group: FeatureGroup) -> MaterializeResult:
        if not group.online:
            raise ValueError(f"feature group {group.name} is offline-only")
        to_version = self.offline.version(group)
        from_version = self.online.materialized_version(group.table_name)
        if to_version is None or from_version == to_version:
            return MaterializeResult(group.table_name, 0, from_version, to_version)
        rows = self.offline.read(group)
        if from_version is not None:
            try:
                changed = self.offline.changed_keys(group, from_version)
                rows = rows.join(changed, on=list(group.primary_key), how="semi")
            except DeltaError as exc:  # e.g. the change feed was vacuumed: fall back to all keys
                log.warning("change feed of %s unavailable (%s); full refresh", group.name, exc)
        recent = recent_per_key(group, rows)
        self.online.write(group, recent)
        self.online.set_materialized_version(group.table_name, to_version)
        keys = recent.select(group.primary_key).n_unique() if recent.height else 0
        return MaterializeResult(group.table_name, keys, from_version, to_version)

    def get_online_features(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        return self.online.read(group, keys)

    def get_online_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        return self.online.read_rows(lookups)

    def get_online_rows_and_ranges(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        return self.online.read_rows_and_ranges(lookups, ranges)

    def write_online(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        if not group.online:
            raise ValueError(f"feature group {group.name} is offline-only")
        return self.online.write(group, rows)

    def check_online(self, groups: Sequence[FeatureGroup]) -> None:
        self.online.check(groups)

    def point_in_time_join(
        self,
        spine: pl.DataFrame,
        spine_time: str,
        requests: Sequence[JoinRequest],
        *,
        versions: dict[str, int] | None = None,
        keep_event_times: bool = False,
    ) -> pl.DataFrame:
        """Join ``requests`` onto ``spine``; ``versions`` pins tables (group name -> version)."""
        return join_from_store(
            self.offline.read,
            spine,
            spine_time,
            requests,
            versions=versions,
            keep_event_times=keep_event_times,
            method=self.pit_join,
        )

    def catalog(self) -> list[GroupInfo]:
        return [
            GroupInfo(
                name=meta["name"],
                version=int(meta["version"]),
                primary_key=tuple(meta["primary_key"]),
                event_time=meta["event_time"],
                online=bool(meta["online"]),
                rows=meta["rows"],
                table_version=meta["table_version"],
                columns=dict(meta["columns"]),
                online_materialized_version=(
                    self.online.materialized_version(meta["table_name"]) if meta["online"] else None
                ),
            )
            for meta in self.offline.list_tables()
        ]

    def close(self) -> None:
        self.online.close()
