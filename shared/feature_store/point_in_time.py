"""Point-in-time (backward as-of) join of a spine with feature groups.

Pure functions over Polars frames: reading the groups happens in the store. Used by the training
pipeline (training data) and the batch job (scoring data), so both see exactly the feature values
that were known at each row's timestamp.

How it works, and why this way: an as-of join with ``by`` keys hashes the spine's text keys and
sorts the spine once per group, and the result must be sorted back; that cost several times the
search itself. Here the spine is never sorted or reordered, and each of its key columns is looked
up once for all groups:

1. Every key value some group has gets a small integer code (an Enum cast for text keys); a null,
   or a value no group has, gets a code no group row has, so it never matches.
2. Event times become ranks among the group's distinct event times, so a (key, rank) pair is one
   int64 *slot* that cannot overflow, whatever the time unit or range (pre-1970 included).
3. A table indexed by slot holds, for every slot, the group row with the latest event time at or
   before it within the same key, so a spine row's match is one lookup (a binary search instead
   when keys x times are too many for a table). The tolerance is checked on the matched time.
4. The features are gathered by row index, an all-null row standing in for "no match".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from shared.feature_group import FeatureGroup
from shared.feature_store.protocol import JoinRequest

# Beyond this many key codes, a multi-column key is renumbered to the combinations that exist,
# so that key x time slots stay far from int64 overflow.
_MAX_KEY_CODES = 2**31
# The slot table may hold this many entries per input row; sparser keys x times are searched.
_TABLE_SLOTS_PER_ROW = 4


def event_time_column(request: JoinRequest) -> str:
    """Name of the matched row's event time in the output (kept when asked, for audits)."""
    return f"{request.prefix or request.group.name + '__'}event_time"


@dataclass(frozen=True)
class _Times:
    """A time column as numbers in its physical unit, with the rows that have one."""

    values: np.ndarray
    present: np.ndarray

    @classmethod
    def of(cls, column: pl.Series) -> _Times:
        physical = column.to_physical()
        return cls(physical.fill_null(0).to_numpy(), physical.is_not_null().to_numpy())


@dataclass(frozen=True)
class _Group:
    """One request's rows that can match: keys named and typed as in the spine, event times in
    the spine's time dtype, and the output columns followed by one all-null row."""

    request: JoinRequest
    keys: pl.DataFrame
    times: np.ndarray
    columns: pl.DataFrame

    @property
    def no_match(self) -> int:
        return self.columns.height - 1


def _prepare_group(
    request: JoinRequest, frame: pl.DataFrame, spine: pl.DataFrame, spine_time: str
) -> _Group:
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
    event = event_time_column(request)
    rows = frame.select(
        # Keys must have the spine's dtypes (e.g. Categorical vs String) to compare equal.
        *[pl.col(g).cast(spine.schema[s]).alias(s) for s, g in pairs],
        pl.col(group.event_time).cast(spine.schema[spine_time]).alias(event),
        *[pl.col(f).alias(request.prefix + f) for f in features],
    )
    # A null key or event time can never match: such rows are left out up front.
    rows = rows.drop_nulls([*[s for s, _ in pairs], event])
    # The null row that spine rows without a match take; one chunk keeps the gathers fast.
    columns = rows.drop([s for s, _ in pairs]).select(pl.all().extend_constant(None, 1)).rechunk()
    return _Group(
        request=request,
        keys=rows.select([s for s, _ in pairs]),
        times=_Times.of(rows[event]).values,
        columns=columns,
    )


# -- keys ------------------------------------------------------------------------------------


def _code_expression(column: str, dtype: pl.DataType, values: pl.Series) -> pl.Expr:
    """Position of each value of ``column`` in ``values``; ``len(values)`` (a code no group row
    has, so it matches nothing) for a null or a value no group knows."""
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        # An Enum cast is the cheapest exact text -> code lookup Polars has.
        coded = pl.col(column).cast(pl.Enum(values.cast(pl.String)), strict=False).to_physical()
    else:
        positions = pl.Series(np.arange(len(values)))
        coded = pl.col(column).replace_strict(values, positions, default=None)
    return coded.cast(pl.Int64).fill_null(len(values))


@dataclass(frozen=True)
class _KeyCodes:
    """Integer keys in [0, count) of the spine rows and of a group's rows; a spine row whose key
    no group row has gets a code no group row has."""

    spine: np.ndarray
    group: np.ndarray
    count: int


def _column_codes(spine: pl.DataFrame, groups: Sequence[_Group]) -> list[list[_KeyCodes]]:
    """Per group, the codes of each of its key columns.

    One code space per spine column, shared by all groups: a column used by several groups
    (origin for route and weather) is looked up once, and all columns in one parallel select.
    """
    columns = list(dict.fromkeys(c for g in groups for c in g.keys.columns))
    values = {
        c: pl.concat([g.keys[c] for g in groups if c in g.keys.columns]).unique() for c in columns
    }
    expressions = {c: _code_expression(c, spine.schema[c], values[c]) for c in columns}
    spine_codes = spine.select(expressions.values())
    return [
        [
            _KeyCodes(
                spine_codes[c].to_numpy(),
                g.keys.select(expressions[c]).to_series().to_numpy(),
                len(values[c]) + 1,  # + the code of unknown keys
            )
            for c in g.keys.columns
        ]
        for g in groups
    ]


def _combine(first: _KeyCodes, then: _KeyCodes) -> _KeyCodes:
    """The code of a two-part key: first * then.count + then (mixed radix)."""
    combined = _KeyCodes(
        first.spine * then.count + then.spine,
        first.group * then.count + then.group,
        first.count * then.count,
    )
    return combined if combined.count <= _MAX_KEY_CODES else _renumber(combined)


def _renumber(codes: _KeyCodes) -> _KeyCodes:
    """Codes renumbered to the group's distinct ones; a spine code the group lacks gets one more."""
    known = np.unique(codes.group)
    at = np.searchsorted(known, codes.spine).clip(0, max(len(known) - 1, 0))
    found = known[at] == codes.spine if len(known) else np.zeros(len(codes.spine), bool)
    spine = np.where(found, at, len(known))
    return _KeyCodes(spine, np.searchsorted(known, codes.group), len(known) + 1)


def _group_key_codes(parts: list[_KeyCodes]) -> _KeyCodes:
    codes = parts[0]
    for part in parts[1:]:
        codes = _combine(codes, part)
    return codes


# -- times and matches -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    """Every group's distinct event times, and how many of them each spine time has reached
    (0 for a null time): one search for all groups."""

    moments: np.ndarray
    spine_rank: np.ndarray

    @classmethod
    def of(cls, groups: Sequence[_Group], spine_times: _Times) -> _Calendar:
        moments = np.unique(np.concatenate([g.times for g in groups] or [np.empty(0, np.int64)]))
        rank = np.searchsorted(moments, spine_times.values, side="right")
        rank[~spine_times.present] = 0
        return cls(moments, rank)


def _group_ranks(group: _Group, calendar: _Calendar) -> tuple[np.ndarray, np.ndarray]:
    """How many of this group's distinct event times each calendar rank has reached, and the
    rank (from 1) of each group row's own event time."""
    at = np.searchsorted(calendar.moments, group.times) + 1
    own = np.zeros(len(calendar.moments) + 1, np.int64)
    own[at] = 1
    reached = np.cumsum(own)
    return reached, reached[at]


def _slot_table(group_slots: np.ndarray, count: int, width: int, no_match: int) -> np.ndarray:
    """For every slot (key * width + rank), the group row with the last slot at or before it
    within the same key, or ``no_match``."""
    size = count * width
    latest = np.full(size, -1, np.int64)
    # Rows sharing key and event time: the last one given wins, as in an as-of join.
    np.maximum.at(latest, group_slots, np.arange(len(group_slots)))
    # Carry each filled slot forward; every key's rank-0 slot holds no row and stops the carry.
    carry = np.where(latest >= 0, np.arange(size), -1)
    carry[::width] = np.arange(0, size, width)
    np.maximum.accumulate(carry, out=carry)
    table = latest[carry]
    table[table < 0] = no_match
    return table.astype(np.uint32)  # what a Polars gather takes


def _latest_by_search(
    group_slots: np.ndarray, spine_slots: np.ndarray, width: int, no_match: int
) -> np.ndarray:
    """What :func:`_slot_table` answers, by binary search: for keys x times too sparse for a
    table (slower: the spine's slots come unsorted)."""
    if len(group_slots) == 0:
        return np.full(len(spine_slots), no_match, np.uint32)
    order = np.argsort(group_slots, kind="stable")  # stable: the last of equal slots wins
    ordered = group_slots[order]
    at = np.searchsorted(ordered, spine_slots, side="right") - 1
    at.clip(0, out=at)  # a miss (-1) reads slot 0, whose key then differs or is not <= ours
    hit = (ordered[at] <= spine_slots) & (ordered[at] // width == spine_slots // width)
    return np.where(hit, order[at], no_match).astype(np.uint32)


def _tolerance_in_units(tolerance: timedelta, dtype: pl.DataType, group: str) -> int:
    """The tolerance in the spine time's physical unit (days for a Date)."""
    if dtype == pl.Date:
        return tolerance // timedelta(days=1)
    if isinstance(dtype, (pl.Datetime, pl.Duration)):
        return int(pl.Series([tolerance]).cast(pl.Duration(dtype.time_unit)).to_physical()[0])
    raise ValueError(
        f"{group}: a tolerance needs a Date or Datetime spine timestamp, not {dtype}; "
        "drop the tolerance or convert the column"
    )


def _matched_rows(
    group: _Group,
    codes: _KeyCodes,
    calendar: _Calendar,
    spine_times: _Times,
    time_dtype: pl.DataType,
) -> np.ndarray:
    """Per spine row, the index of its row in ``group.columns`` (the null row when none).

    A (key, rank) pair is one int64 slot, key * width + rank, where rank counts the group's
    distinct event times reached (0: none yet, so a key's slots never run into the next key's).
    """
    reached, group_ranks = _group_ranks(group, calendar)
    width = int(reached[-1]) + 1
    group_slots = codes.group * width + group_ranks
    spine_slots = codes.spine * width
    spine_slots += reached[calendar.spine_rank]
    size = codes.count * width
    if size <= _TABLE_SLOTS_PER_ROW * (len(spine_slots) + len(group_slots)):
        rows = _slot_table(group_slots, codes.count, width, group.no_match)[spine_slots]
    else:
        rows = _latest_by_search(group_slots, spine_slots, width, group.no_match)
    if group.request.tolerance is not None:
        limit = _tolerance_in_units(group.request.tolerance, time_dtype, group.request.group.name)
        # The null row's time is a placeholder: stale or not, that row stays the null row.
        age = np.append(group.times, 0)[rows]
        np.subtract(spine_times.values, age, out=age)
        rows[age > limit] = group.no_match
    return rows


def point_in_time_join(
    spine: pl.DataFrame,
    spine_time: str,
    groups: Sequence[tuple[JoinRequest, pl.DataFrame]],
    *,
    keep_event_times: bool = False,
) -> pl.DataFrame:
    """Attach to every spine row the latest feature values with event time <= its timestamp.

    Every spine row is kept, in its original order, including rows that share a key and a
    timestamp; a row with no match (or a null timestamp or key) gets nulls.
    """
    if spine_time not in spine.columns:
        raise ValueError(f"spine has no timestamp column {spine_time!r}")
    prepared = [_prepare_group(request, frame, spine, spine_time) for request, frame in groups]
    spine_times = _Times.of(spine[spine_time])
    calendar = _Calendar.of(prepared, spine_times)
    found = []
    for group, parts in zip(prepared, _column_codes(spine, prepared), strict=True):
        codes = _group_key_codes(parts)
        rows = _matched_rows(group, codes, calendar, spine_times, spine.schema[spine_time])
        columns = group.columns
        if not keep_event_times:
            columns = columns.drop(event_time_column(group.request))
        found.append(columns.gather(pl.Series(rows)))
    return pl.concat([spine, *found], how="horizontal")


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
