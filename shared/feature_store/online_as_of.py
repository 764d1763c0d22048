"""Which of the rows an online store keeps for a key answers a read as of T.

The online twin of the offline point-in-time join (``point_in_time``): the newest row with
``T - tolerance <= event time <= T``, else nothing. A row whose event time is after T is never
used, and one older than the tolerance allows is missing, exactly as offline.

An online store keeps, per key, its newest row and those within the group's ``online_history``
of it (the rows a feature pipeline or stream wrote most recently), so the answer equals the
offline join's for every T at or after the oldest row kept. For an older T the row valid then is
no longer online: the read answers "missing", never a later value (use the offline store, i.e.
the batch job, for backtests that far back).

Plain values only: this runs on the online request path (no frames, a few rows per key).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import polars as pl

from shared.feature_group import FeatureGroup
from shared.feature_store.protocol import OnlineLookup

_MICROSECOND = timedelta(microseconds=1)


def tolerance_us(tolerance: timedelta | None) -> int | None:
    """A join's tolerance in the online stores' unit (microseconds), None for none."""
    return None if tolerance is None else tolerance // _MICROSECOND


def served_window(lookup: OnlineLookup) -> tuple[int | None, int | None]:
    """(oldest, newest) event time a row may have to answer some key of ``lookup``; None where
    unbounded. Stores use it to fetch only the rows that can match."""
    if not lookup.as_of:
        return None, None
    newest = max(lookup.as_of)
    if lookup.tolerance_us is None:
        return None, newest
    return min(lookup.as_of) - lookup.tolerance_us, newest


def row_as_of(
    candidates: Sequence[Any] | None, event_at: int, t: int | None, tolerance: int | None
) -> Any | None:
    """The row of ``candidates`` (one key's rows, newest first; ``event_at`` indexes the event
    time in each, epoch microseconds) valid as of ``t``; the newest when ``t`` is None."""
    if not candidates:
        return None
    if t is None:
        return candidates[0]
    for row in candidates:
        event = row[event_at]
        if event <= t:
            return row if tolerance is None or event >= t - tolerance else None
    return None


def recent_per_key(group: FeatureGroup, rows: pl.DataFrame) -> pl.DataFrame:
    """What the online store keeps of ``rows``: per key, the newest row and every row within
    ``group.online_history`` of it (the rows materialization writes)."""
    keys = list(group.primary_key)
    newest = pl.col(group.event_time).max().over(keys)
    recent = rows.filter(pl.col(group.event_time) >= newest - group.online_history)
    # Equal key + event time cannot happen in a store (primary key + event time is unique);
    # for rows given by hand the last one wins, as in an as-of join.
    return recent.unique(subset=[*keys, group.event_time], keep="last", maintain_order=True)
