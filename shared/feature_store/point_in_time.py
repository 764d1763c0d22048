"""Point-in-time (backward as-of) join of a spine with feature groups.

Pure functions over Polars frames: reading the groups happens in the store. Used by the training
pipeline (training data) and the batch job (scoring data), so both see exactly the feature values
that were known at each row's timestamp.

The contract, whichever method answers: every spine row is kept, in its order, rows sharing a
key and a timestamp included; a row gets, per group, the row with the same key and the latest
event time at or before its timestamp (of rows sharing key and event time, the last one given),
within the request's tolerance; a row with no match, a null key or a null timestamp gets nulls.

Two methods answer it (``FTI_PIT_JOIN``, see :class:`shared.settings.PitJoinMethod`), and the same
tests run against both:

- ``library``: Polars ``join_asof(by=..., strategy="backward", tolerance=...)``. Both sides are
  sorted explicitly first: with ``by`` keys Polars does not check that each group is sorted and
  silently returns wrong matches on unsorted input (polars issues #18014, #21693).
- ``native``: the hand-written join of :mod:`shared.feature_store.point_in_time_native`, kept
  while ``benchmarks/point_in_time_join.py`` shows it at least 25% faster (invariant 9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from shared.feature_group import FeatureGroup
from shared.feature_store.point_in_time_native import join_native
from shared.feature_store.protocol import JoinRequest
from shared.settings import DEFAULT_PIT_JOIN, PitJoinMethod

_SPINE_ROW = "__pit_spine_row"  # the spine's row numbers while its rows are sorted by time


def event_time_column(request: JoinRequest) -> str:
    """Name of the matched row's event time in the output (kept when asked, for audits)."""
    return f"{request.prefix or request.group.name + '__'}event_time"


@dataclass(frozen=True)
class PreparedGroup:
    """One request's rows that can match: the keys named and typed as in the spine, the event
    time (named :func:`event_time_column`) in the spine time's dtype, then the prefixed features.
    Rows with a null key or event time are left out: they never match."""

    request: JoinRequest
    keys: list[str]
    event: str
    rows: pl.DataFrame

    @property
    def features(self) -> pl.DataFrame:
        """The output columns: event time, then features."""
        return pl.DataFrame([c for c in self.rows.iter_columns() if c.name not in self.keys])


def prepare_group(
    request: JoinRequest, frame: pl.DataFrame, spine: pl.DataFrame, spine_time: str
) -> PreparedGroup:
    """Check the request against its rows and the spine (a clear error naming what is missing),
    and shape its rows for either method."""
    group = request.group
    pairs = request.key_pairs()
    features = request.feature_list()
    unknown = [f for f in features if f not in frame.columns]
    if unknown:
        raise ValueError(f"{group.name}: features {unknown} are not in the group")
    absent = [g for _, g in pairs if g not in frame.columns]
    if group.event_time not in frame.columns:
        absent.append(group.event_time)
    if absent:
        raise ValueError(f"{group.name}: key or event time columns {absent} are not in its rows")
    missing = [s for s, _ in pairs if s not in spine.columns]
    if missing:
        raise ValueError(f"{group.name}: the spine has no key columns {missing}")
    time_dtype = spine.schema[spine_time]
    if request.tolerance is not None and not (time_dtype == pl.Date or time_dtype.is_temporal()):
        raise ValueError(
            f"{group.name}: a tolerance needs a Date or Datetime spine timestamp, not "
            f"{time_dtype}; drop the tolerance or convert the column"
        )
    event = event_time_column(request)
    keys = [s for s, _ in pairs]
    # Keys must have the spine's dtypes (e.g. Categorical vs String) to compare equal.
    # (Frames built from columns, not with select: every Polars query has a fixed cost.)
    rows = pl.DataFrame(
        [
            *[_cast(frame.get_column(g), s, spine.schema[s]) for s, g in pairs],
            _cast(frame.get_column(group.event_time), event, time_dtype),
            *[frame.get_column(f).alias(request.prefix + f) for f in features],
        ]
    )
    if any(rows.get_column(c).has_nulls() for c in [*keys, event]):
        rows = rows.drop_nulls([*keys, event])
    if any(c.n_chunks() > 1 for c in rows.iter_columns()):
        rows = rows.rechunk()  # one chunk: faster gathers
    return PreparedGroup(request, keys, event, rows)


def _cast(column: pl.Series, name: str, dtype: pl.DataType) -> pl.Series:
    return (column if column.dtype == dtype else column.cast(dtype)).alias(name)


def point_in_time_join(
    spine: pl.DataFrame,
    spine_time: str,
    groups: Sequence[tuple[JoinRequest, pl.DataFrame]],
    *,
    keep_event_times: bool = False,
    method: PitJoinMethod = DEFAULT_PIT_JOIN,
) -> pl.DataFrame:
    """Attach to every spine row the latest feature values with event time <= its timestamp
    (the contract is in the module docstring): the spine's columns, then per group its matched
    event time (when ``keep_event_times``) and its prefixed features, with the group's dtypes."""
    if spine_time not in spine.columns:
        raise ValueError(f"spine has no timestamp column {spine_time!r}")
    prepared = [prepare_group(request, frame, spine, spine_time) for request, frame in groups]
    if method is PitJoinMethod.native:
        return join_native(spine, spine_time, prepared, keep_event_times)
    return join_library(spine, spine_time, prepared, keep_event_times)


def join_library(
    spine: pl.DataFrame,
    spine_time: str,
    prepared: Sequence[PreparedGroup],
    keep_event_times: bool,
) -> pl.DataFrame:
    """The join by Polars ``join_asof``, on explicitly sorted sides.

    The as-of joins carry only row numbers: the spine's keys and time, sorted by time once, take
    each group's matched row number in turn; the matches are put back in the spine's order (one
    sort of a few integer columns), and each group's features gathered by them (a null row
    number gathers nulls). Sorting and gathering the wide frames instead cost about as much again.
    """
    keys = list(dict.fromkeys(k for group in prepared for k in group.keys))
    timed = (
        spine.select(*keys, spine_time)
        .with_row_index(_SPINE_ROW)
        .filter(pl.col(spine_time).is_not_null())  # a null timestamp matches nothing
        .sort(spine_time)
    )
    matches = [f"__pit_match_{i}" for i in range(len(prepared))]
    for group, match in zip(prepared, matches, strict=True):
        # Explicitly sorted: with ``by`` Polars does not check each key's rows are (#18014).
        right = group.rows.select(*group.keys, group.event).with_row_index(match).sort(group.event)
        timed = timed.join_asof(
            right,
            left_on=spine_time,
            right_on=group.event,
            by=group.keys,
            strategy="backward",
            tolerance=_tolerance(group.request.tolerance, spine.schema[spine_time]),
            check_sortedness=False,  # sorted above; Polars cannot check within ``by`` groups
        ).drop(group.event)
    found = timed.select(_SPINE_ROW, *matches)
    if found.height < spine.height:  # the rows with a null timestamp: no match
        every = pl.DataFrame({_SPINE_ROW: pl.arange(spine.height, dtype=pl.UInt32, eager=True)})
        found = every.join(found, on=_SPINE_ROW, how="left")
    found = found.sort(_SPINE_ROW)
    columns = [
        group.features.gather(found.get_column(match))
        for group, match in zip(prepared, matches, strict=True)
    ]
    if not keep_event_times:
        columns = [c.drop(g.event) for c, g in zip(columns, prepared, strict=True)]
    return pl.concat([spine, *columns], how="horizontal")


def _tolerance(tolerance: timedelta | None, dtype: pl.DataType) -> timedelta | None:
    """The tolerance as ``join_asof`` takes it: whole days for a Date spine time (rounded down,
    as the native method does)."""
    if tolerance is None or dtype != pl.Date:
        return tolerance
    return timedelta(days=tolerance // timedelta(days=1))


GroupReader = Callable[..., pl.DataFrame]  # (group, start, end, *, version, columns) -> rows


def join_from_store(
    read: GroupReader,
    spine: pl.DataFrame,
    spine_time: str,
    requests: Sequence[JoinRequest],
    *,
    versions: Mapping[str, int] | None = None,
    keep_event_times: bool = False,
    method: PitJoinMethod = DEFAULT_PIT_JOIN,
) -> pl.DataFrame:
    """Read only the rows of each group that can match the spine, then join.

    Rows after the spine's last timestamp can never match; with a tolerance, neither can rows
    older than the first timestamp minus the tolerance. ``versions`` pins group tables.
    """
    versions = versions or {}
    bounds = spine.select(
        pl.col(spine_time).min().alias("first"), pl.col(spine_time).max().alias("last")
    )
    first, last = bounds.row(0)
    end = None if last is None else last + timedelta(microseconds=1)
    frames = []
    for request in requests:
        group: FeatureGroup = request.group
        start: datetime | None = None
        if request.tolerance is not None and first is not None:
            start = first - request.tolerance
        columns = [*group.primary_key, group.event_time, *request.feature_list()]
        frame = read(group, start, end, version=versions.get(group.name), columns=columns)
        frames.append((request, frame))
    return point_in_time_join(
        spine, spine_time, frames, keep_event_times=keep_event_times, method=method
    )
