"""Point-in-time (backward as-of) join of a spine with feature groups.

Pure functions over Polars frames: reading the groups happens in the store. Used by the training
pipeline (training data) and the batch job (scoring data), so both see exactly the feature values
that were known at each row's timestamp.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import polars as pl

from shared.feature_group import FeatureGroup
from shared.feature_store.protocol import JoinRequest

_ROW = "__spine_row"


def event_time_column(request: JoinRequest) -> str:
    """Name of the matched row's event time in the output (kept when asked, for audits)."""
    return f"{request.prefix or request.group.name + '__'}event_time"


def _prepare_right(request: JoinRequest, frame: pl.DataFrame, spine: pl.DataFrame) -> pl.DataFrame:
    group = request.group
    pairs = request.key_pairs()
    features = request.feature_list()
    unknown = [f for f in features if f not in frame.columns]
    if unknown:
        raise ValueError(f"{group.name}: features {unknown} are not in the group")
    renames = {g: s for s, g in pairs} | {f: request.prefix + f for f in features}
    renames[group.event_time] = event_time_column(request)
    right = frame.select([*[g for _, g in pairs], group.event_time, *features]).rename(renames)
    # Keys must have the spine's dtypes (e.g. Categorical vs String) for the `by` match.
    right = right.with_columns(pl.col(s).cast(spine.schema[s]) for s, _ in pairs)
    # Sorted explicitly: join_asof does not check per-group order and silently mismatches
    # on unsorted input (polars #18014, #21693).
    return right.sort(event_time_column(request))


def point_in_time_join(
    spine: pl.DataFrame,
    spine_time: str,
    groups: Sequence[tuple[JoinRequest, pl.DataFrame]],
    *,
    keep_event_times: bool = False,
) -> pl.DataFrame:
    """Attach to every spine row the latest feature values with event time <= its timestamp.

    Every spine row is kept, in its original order, including rows that share a key and a
    timestamp; a row with no match (or a null timestamp) gets nulls.
    """
    if spine_time not in spine.columns:
        raise ValueError(f"spine has no timestamp column {spine_time!r}")
    keys = list(dict.fromkeys(s for request, _ in groups for s, _ in request.key_pairs()))
    # Only the row index, the time and the keys travel through the as-of joins: the spine's
    # other columns are attached once at the end instead of being copied by every join.
    narrow = (
        spine.select([*keys, spine_time])
        .with_row_index(_ROW)
        .filter(pl.col(spine_time).is_not_null())
        .sort(spine_time)
    )
    found = [narrow.select(_ROW)]
    for request, frame in groups:
        pairs = request.key_pairs()
        right = _prepare_right(request, frame, spine)
        event_col = event_time_column(request)
        right = right.with_columns(pl.col(event_col).cast(spine.schema[spine_time]))
        joined = narrow.select(_ROW, spine_time, *[s for s, _ in pairs]).join_asof(
            right,
            left_on=spine_time,
            right_on=event_col,
            by=[s for s, _ in pairs],
            strategy="backward",
            tolerance=request.tolerance,
            check_sortedness=False,  # both sides are sorted on the time column just above
        )
        added = [c for c in right.columns if c not in {s for s, _ in pairs}]
        if not keep_event_times:
            added.remove(event_col)
        found.append(joined.select(added))  # join_asof keeps the left order: rows line up
    features = pl.concat(found, how="horizontal")
    # Back to spine order; rows with a null timestamp are absent from `features` and get nulls.
    by_row = pl.DataFrame({_ROW: pl.int_range(spine.height, dtype=pl.UInt32, eager=True)})
    if features.height == spine.height:
        ordered = features.sort(_ROW)
    else:
        ordered = by_row.join(features, on=_ROW, how="left", maintain_order="left")
    return pl.concat([spine, ordered.drop(_ROW)], how="horizontal")


GroupReader = Callable[..., pl.DataFrame]  # (group, start, end, *, version, columns) -> rows


def join_from_store(
    read: GroupReader,
    spine: pl.DataFrame,
    spine_time: str,
    requests: Sequence[JoinRequest],
    *,
    versions: Mapping[str, int] | None = None,
    keep_event_times: bool = False,
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
    return point_in_time_join(spine, spine_time, frames, keep_event_times=keep_event_times)
