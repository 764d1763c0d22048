"""The feature store contract every backend (local Delta+SQLite/Redis, Hopsworks) fulfils."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import polars as pl

from shared.feature_group import FeatureGroup


@dataclass(frozen=True)
class WriteResult:
    group: str
    rows_in: int
    inserted: int
    updated: int
    table_version: int | None

    @property
    def changed(self) -> bool:
        return self.inserted + self.updated > 0


@dataclass(frozen=True)
class CompactResult:
    group: str
    files_removed: int
    files_added: int
    files_vacuumed: int
    table_version: int | None


@dataclass(frozen=True)
class MaterializeResult:
    group: str
    keys_written: int
    from_version: int | None
    to_version: int | None


@dataclass(frozen=True)
class GroupInfo:
    name: str
    version: int
    primary_key: tuple[str, ...]
    event_time: str
    online: bool
    rows: int
    table_version: int | None
    columns: dict[str, str]
    descriptions: dict[str, str] = field(default_factory=dict)
    online_materialized_version: int | None = None


@dataclass(frozen=True)
class JoinRequest:
    """One feature group to join onto a spine, as of the spine's timestamp.

    ``spine_keys`` names the spine columns matching the group's primary key, in order (default:
    same names). ``prefix`` is put in front of the group's feature names so groups never clash.
    """

    group: FeatureGroup
    features: Sequence[str] | None = None
    spine_keys: Sequence[str] | None = None
    prefix: str = ""
    tolerance: timedelta | None = None

    def key_pairs(self) -> list[tuple[str, str]]:
        spine = list(self.spine_keys or self.group.primary_key)
        if len(spine) != len(self.group.primary_key):
            raise ValueError(
                f"{self.group.name}: spine keys {spine} do not match primary key "
                f"{list(self.group.primary_key)}"
            )
        return list(zip(spine, self.group.primary_key, strict=True))

    def feature_list(self) -> list[str]:
        return list(self.features) if self.features is not None else self.group.feature_names


@dataclass(frozen=True)
class OnlineLookup:
    """Keys to look up in one online group: primary-key values in the group's key order, as the
    plain values online stores keep (strings and integers; see ``online_codec``).

    ``as_of`` gives, per key, the prediction time T in epoch microseconds (UTC): the row served
    is then the newest one the store keeps with ``T - tolerance_us <= event time <= T`` (the
    backward as-of match of the offline join, with the same tolerance), else none. Without
    ``as_of``, the newest row kept, whatever its time."""

    group: FeatureGroup
    keys: Sequence[tuple[Any, ...]]
    as_of: Sequence[int] | None = None
    tolerance_us: int | None = None


# One online row as stored: column -> plain value (None when the store has no row for the key).
OnlineRow = dict[str, Any] | None
# The rows one range lookup found for one key, in event-time order.
OnlineRange = list[dict[str, Any]]


class HeldRows(list[dict[str, Any]]):
    """An `OnlineRange` answered from rows the store holds in memory for the key.

    ``held`` is every row the store holds for the key, oldest first: the range's rows and
    those around it (from the earliest instant any read asked for, to the newest stored). A
    store never changes a held list: when the key's rows change it holds a new one, with a new
    ``memo``. ``memo`` is a dict for the caller, shared by every read answered from the same
    held rows, to keep what it derives from them (`shared.fresh_features` keeps its window
    index there); it lives as long as the store holds those rows. Callers read ``held`` and
    the rows only."""

    __slots__ = ("held", "memo")

    def __init__(
        self, rows: list[dict[str, Any]], held: list[dict[str, Any]], memo: dict[Any, Any]
    ) -> None:
        super().__init__(rows)
        self.held = held
        self.memo = memo


@dataclass(frozen=True)
class OnlineRangeLookup:
    """Ranges to read in one event group (a group with ``online_indexes``): for each key (the
    values of the ``index`` columns, plain values as stored), every row with
    ``start_us <= event time < end_us`` (epoch microseconds, UTC), in event-time order."""

    group: FeatureGroup
    index: tuple[str, ...]
    keys: Sequence[tuple[Any, ...]]
    start_us: Sequence[int]
    end_us: Sequence[int]

    def __post_init__(self) -> None:
        if self.index not in self.group.online_indexes:
            raise ValueError(
                f"{self.group.name} has no online index {self.index}; "
                f"it has {list(self.group.online_indexes)}"
            )
        if not len(self.keys) == len(self.start_us) == len(self.end_us):
            raise ValueError("a range lookup needs one start and one end per key")


@runtime_checkable
class OnlineStore(Protocol):
    """Latest rows per primary key (the newest, and those within the group's
    ``online_history`` of it), for low-latency serving as of a prediction time."""

    # True when a read is a lookup in a local file (no network round trip), cheap and bounded
    # enough to run on an event loop's own thread; False for a server reached over the network.
    reads_in_process: bool

    def write(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Upsert ``rows`` by primary key + event time, then drop each written key's rows older
        than its newest written row minus ``group.online_history``. Returns rows written."""
        ...

    def read(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame:
        """Newest rows for ``keys`` (primary-key columns) in the same order; missing keys give
        nulls. For operators and tests; the request path uses `read_rows`."""
        ...

    def read_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Per lookup, per key: the row valid as of the key's T (see `OnlineLookup`) as plain
        values, or None. The request path's read: no frames, one round trip for all lookups
        where the backend allows it."""
        ...

    def read_ranges(self, lookups: Sequence[OnlineRangeLookup]) -> list[list[OnlineRange]]:
        """Per lookup, per key: the event group's rows in the key's time range, oldest first.
        Read them only: a store may hand the same row objects to later reads (SQLite's range
        cache)."""
        ...

    def read_rows_and_ranges(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """`read_rows` and `read_ranges` together: one round trip where the backend allows it
        (the request path of a model with fresh window features)."""
        ...

    def materialized_version(self, table_name: str) -> int | None:
        """Offline table version last materialized for this group table (None: never)."""
        ...

    def set_materialized_version(self, table_name: str, version: int) -> None: ...

    def ping(self) -> None: ...

    def check(self, groups: Sequence[FeatureGroup]) -> None:
        """Readiness: the store the next process would open is there and each group's data
        readable; raises `StoreUnavailable` naming what is wrong."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncOnlineReads(Protocol):
    """An online store that also reads on an asyncio event loop: its round trip is awaited
    rather than run on a thread (`RedisOnlineStore`)."""

    async def read_rows_and_ranges_async(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """`OnlineStore.read_rows_and_ranges`, awaited on the running loop."""
        ...

    async def aclose(self) -> None:
        """Close what the running loop's reads opened."""
        ...


@runtime_checkable
class FeatureStore(Protocol):
    """Feature groups offline (history, time travel) and online (newest rows per key)."""

    @property
    def online_reads_in_process(self) -> bool:
        """Whether online reads stay in this process (see `OnlineStore.reads_in_process`)."""
        ...

    @property
    def online_async(self) -> AsyncOnlineReads | None:
        """The online store's asyncio reads, where it has them (None: read on a thread)."""
        ...

    def register(self, group: FeatureGroup) -> None:
        """Create the group, or check that the existing one has the same schema."""
        ...

    def insert(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        """Atomic upsert on primary key + event time; re-inserting the same rows is a no-op."""
        ...

    def append(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        """Atomic append of rows whose primary key + event time are new by construction (an
        event log such as the online prediction log): no read of the stored rows, so its cost
        follows the batch, not the table. Re-appending the same rows duplicates them."""
        ...

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
        ...

    def table_version(self, group: FeatureGroup) -> int | None: ...

    def materialize(self, group: FeatureGroup) -> MaterializeResult:
        """Push each changed key's newest row, and its rows within the group's
        ``online_history`` of it, to the online store (only keys that changed)."""
        ...

    def get_online_features(self, group: FeatureGroup, keys: pl.DataFrame) -> pl.DataFrame: ...

    def get_online_rows(self, lookups: Sequence[OnlineLookup]) -> list[list[OnlineRow]]:
        """Online rows of several groups at once, as plain values (see `OnlineStore.read_rows`)."""
        ...

    def get_online_rows_and_ranges(
        self, lookups: Sequence[OnlineLookup], ranges: Sequence[OnlineRangeLookup]
    ) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
        """Key lookups and event-time ranges in one read (`OnlineStore.read_rows_and_ranges`)."""
        ...

    def write_online(self, group: FeatureGroup, rows: pl.DataFrame) -> int:
        """Upsert ``rows`` straight into the online store (a streaming writer, which inserts the
        same rows offline itself); returns the rows written."""

    def check_online(self, groups: Sequence[FeatureGroup]) -> None:
        """Readiness of the online store for ``groups`` (see `OnlineStore.check`)."""
        ...

    def point_in_time_join(
        self,
        spine: pl.DataFrame,
        spine_time: str,
        requests: Sequence[JoinRequest],
        *,
        versions: dict[str, int] | None = None,
    ) -> pl.DataFrame: ...

    def catalog(self) -> list[GroupInfo]: ...

    def close(self) -> None: ...
