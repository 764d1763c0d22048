"""Point-in-time (backward as-of) join of a spine with feature groups.

Pure functions over Polars frames: reading the groups happens in the store. Used by the training
pipeline (training data) and the batch job (scoring data), so both see exactly the feature values
that were known at each row's timestamp.

How it works, and why this way: an as-of join with ``by`` keys hashes the spine's text keys and
sorts the spine once per group, and its result must be sorted back to the spine's order; that
costs several times the search itself. Here the spine is never sorted or reordered, each of its
key columns is looked up once for all groups, and its times are ranked once for all groups:

1. Every key value some group has gets a small integer code (an Enum cast for text keys); a null,
   or a value no group has, gets a code no group row has, so it never matches.
2. Event times become ranks among the group's distinct event times, so a (key, rank) pair is one
   int64 *slot* that cannot overflow, whatever the time unit or range (pre-1970 included). A
   spine time is ranked by arithmetic when all event times sit on a grid (on the hour, say), by
   binary search otherwise.
3. A table indexed by slot holds, for every slot, the group row with the latest event time at or
   before it within the same key, so a spine row's match is one lookup (a binary search instead
   when keys x times are too many for a table). The tolerance is checked on the matched time.
4. The features are gathered by row index, then masked to null where nothing matched.
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
    """A time column as numbers in its physical unit, and which rows are null (None: none)."""

    values: np.ndarray
    null: np.ndarray | None

    @classmethod
    def of(cls, column: pl.Series) -> _Times:
        physical = column.to_physical()
        if physical.null_count() == 0:  # the common case, without two more passes
            return cls(physical.to_numpy(), None)
        return cls(physical.fill_null(0).to_numpy(), physical.is_null().to_numpy())


@dataclass(frozen=True)
class _Group:
    """One request's rows that can match: keys named and typed as in the spine, event times in
    the spine's time dtype, and the output columns."""

    request: JoinRequest
    keys: pl.DataFrame  # the key of each run of rows sharing one (see _key_runs)
    run: np.ndarray  # each row's run
    times: np.ndarray
    columns: pl.DataFrame

    @property
    def no_match(self) -> int:
        """The row index standing for "no match": one past the last row."""
        return self.columns.height


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
    keys = [s for s, _ in pairs]
    rows = frame.select(
        # Keys must have the spine's dtypes (e.g. Categorical vs String) to compare equal.
        *[pl.col(g).cast(spine.schema[s]).alias(s) for s, g in pairs],
        pl.col(group.event_time).cast(spine.schema[spine_time]).alias(event),
        *[pl.col(f).alias(request.prefix + f) for f in features],
    )
    # A null key or event time can never match: such rows are left out up front.
    if any(rows.get_column(c).null_count() for c in [*keys, event]):
        rows = rows.drop_nulls([*keys, event])
    rows = rows.rechunk()  # one chunk: faster gathers
    # (Frames built from columns, not with select/drop: every Polars query has a fixed cost.)
    runs, run = _key_runs(pl.DataFrame([rows.get_column(k) for k in keys]))
    return _Group(
        request=request,
        keys=runs,
        run=run,
        times=rows.get_column(event).to_physical().to_numpy(),
        columns=pl.DataFrame([c for c in rows.iter_columns() if c.name not in keys]),
    )


def _key_runs(keys: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """The key of each run of consecutive rows sharing one, and each row's run number.

    Stores return a group's rows sorted by key, so a few hundred runs stand for ~10^5 rows and
    only they need the costly text lookups (rows in another order just make more runs).
    """
    changed = keys.select(
        pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys.columns)
    )
    starts = changed.to_series().to_numpy() if keys.height else np.zeros(0, bool)
    return keys.gather(pl.Series(np.flatnonzero(starts), dtype=pl.UInt32)), starts.cumsum() - 1


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

    def by_row(self, group: _Group) -> _KeyCodes:
        """Group codes per row rather than per key run."""
        return _KeyCodes(self.spine, self.group[group.run], self.count)


def _column_codes(spine: pl.DataFrame, groups: Sequence[_Group]) -> list[list[_KeyCodes]]:
    """Per group, the codes of each of its key columns.

    One code space per spine column, shared by all groups: a column used by several groups
    (origin for route and weather) is looked up once.
    """
    columns = list(dict.fromkeys(c for g in groups for c in g.keys.columns))
    values = {
        c: pl.concat([g.keys[c] for g in groups if c in g.keys.columns]).unique() for c in columns
    }
    expressions = {c: _code_expression(c, spine.schema[c], values[c]) for c in columns}
    spine_codes = spine.select(expressions.values())
    out = []
    for g in groups:
        group_codes = g.keys.select(expressions[c] for c in g.keys.columns)
        count = {c: len(values[c]) + 1 for c in g.keys.columns}  # + the code of unknown keys
        out.append(
            [
                _KeyCodes(spine_codes[c].to_numpy(), group_codes[c].to_numpy(), count[c])
                for c in g.keys.columns
            ]
        )
    return out


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
    """Every group's distinct event times (moments), sorted. One calendar serves all groups, so
    the spine's times are ranked once."""

    moments: np.ndarray
    # When every moment is a whole number of steps from the first (hourly weather, daily stats:
    # all on the hour), the number of moments reached at each step from ``origin``, so ranking a
    # time is arithmetic and one lookup rather than a binary search.
    origin: int
    step: int
    steps: np.ndarray | None

    @classmethod
    def of(cls, groups: Sequence[_Group], spine_rows: int) -> _Calendar:
        times = pl.Series(np.concatenate([g.times for g in groups] or [np.empty(0, np.int64)]))
        moments = np.sort(times.unique().to_numpy())  # hashing, then sorting the few left
        return cls(moments, *_grid(moments, spine_rows))

    def rank_spine(self, times: _Times) -> np.ndarray:
        """How many moments each spine time has reached; 0 for a null time."""
        rank = self.rank(times.values)
        if times.null is not None:
            rank[times.null] = 0
        return rank

    def rank(self, times: np.ndarray) -> np.ndarray:
        """How many moments are at or before each time."""
        if self.steps is None:
            return np.searchsorted(self.moments, times, side="right")
        # Clipped first, so that the subtraction cannot overflow whatever the times.
        at = np.clip(times, self.origin, self.moments[-1])
        at -= self.origin
        at //= self.step
        return np.take(self.steps, at, mode="clip")  # "clip": no checks, indices are in range


def _grid(moments: np.ndarray, spine_rows: int) -> tuple[int, int, np.ndarray | None]:
    """(origin, step, moments reached per step) for moments on a regular grid, or no table when
    they are not integers, or the grid would be too large for the rows it serves."""
    if moments.dtype.kind != "i" or len(moments) == 0:
        return 0, 1, None
    step = int(np.gcd.reduce(np.diff(moments))) if len(moments) > 1 else 1
    origin = int(moments[0]) - step  # step 0: before the first moment
    size = (int(moments[-1]) - origin) // step + 1
    too_large = size > _TABLE_SLOTS_PER_ROW * (spine_rows + len(moments))
    if too_large or origin < np.iinfo(moments.dtype).min:
        return 0, 1, None
    reached = np.zeros(size, np.int32)
    reached[(moments - origin) // step] = 1
    return origin, step, np.cumsum(reached, dtype=np.int32)


def _group_ranks(group: _Group, calendar: _Calendar) -> tuple[np.ndarray, np.ndarray]:
    """How many of this group's distinct event times each calendar rank (moments reached) has
    reached, and the rank (from 1) of each group row's own event time."""
    at = calendar.rank(group.times)
    own = np.zeros(len(calendar.moments) + 1, np.int64)
    own[at] = 1
    reached = np.cumsum(own)
    return reached, reached[at]


def _slot_table(group_slots: np.ndarray, count: int, width: int, no_match: int) -> np.ndarray:
    """For every slot (key * width + rank), the group row with the last slot at or before it
    within the same key, or ``no_match``. (int32: the table is small by construction.)"""
    size = count * width
    latest = np.full(size, -1, np.int32)
    # Rows sharing key and event time: the last one given wins, as in an as-of join.
    np.maximum.at(latest, group_slots, np.arange(len(group_slots), dtype=np.int32))
    # Carry each filled slot forward; every key's rank-0 slot holds no row and stops the carry.
    carry = np.where(latest >= 0, np.arange(size, dtype=np.int32), np.int32(-1))
    carry[::width] = np.arange(0, size, width, dtype=np.int32)
    np.maximum.accumulate(carry, out=carry)
    table = np.take(latest, carry, out=carry, mode="clip")
    np.putmask(table, table < 0, no_match)
    return table.view(np.uint32)  # what a Polars gather takes


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


_TIME_UNITS = {"ms": timedelta(milliseconds=1), "us": timedelta(microseconds=1)}


def _tolerance_in_units(tolerance: timedelta, dtype: pl.DataType, request: JoinRequest) -> int:
    """The tolerance in the spine time's physical unit (days for a Date), rounded down."""
    if dtype == pl.Date:
        return tolerance // timedelta(days=1)
    if isinstance(dtype, (pl.Datetime, pl.Duration)):
        if dtype.time_unit == "ns":  # finer than a timedelta: exact in microseconds
            return tolerance // timedelta(microseconds=1) * 1000
        return tolerance // _TIME_UNITS[dtype.time_unit]
    raise ValueError(
        f"{request.group.name}: a tolerance needs a Date or Datetime spine timestamp, not {dtype}; "
        "drop the tolerance or convert the column"
    )


@dataclass(frozen=True)
class _Scratch:
    """Arrays of one entry per spine row, reused by every group: first touches of fresh memory
    (page faults) cost more than the arithmetic done in them. ``np.take(..., out=, mode="clip")``
    writes into them directly (indices are always in range; "clip" only skips the bounds checks
    and the temporary of the default mode, several times slower here)."""

    slots: np.ndarray
    numbers: np.ndarray
    rows: np.ndarray
    flags: np.ndarray

    @classmethod
    def of(cls, size: int) -> _Scratch:
        int64, uint32 = np.empty(size, np.int64), np.empty(size, np.uint32)
        return cls(int64, np.empty_like(int64), uint32, np.empty(size, bool))


@dataclass(frozen=True)
class _Spine:
    """What every group's match needs from the spine, computed once."""

    times: _Times
    time_dtype: pl.DataType
    rank: np.ndarray  # calendar moments reached at each row's time (0: null time)
    scratch: _Scratch


def _matched_rows(
    group: _Group, codes: _KeyCodes, calendar: _Calendar, spine: _Spine
) -> np.ndarray:
    """Per spine row, the index of its row in ``group.columns`` (``group.no_match`` when none),
    in ``spine.scratch.rows``.

    A (key, rank) pair is one int64 slot, key * width + rank, where rank counts the group's
    distinct event times reached (0: none yet, so a key's slots never run into the next key's).
    """
    reached, group_ranks = _group_ranks(group, calendar)
    width = int(reached[-1]) + 1
    group_slots = codes.group * width + group_ranks
    scratch = spine.scratch
    spine_slots, rows = np.multiply(codes.spine, width, out=scratch.slots), scratch.rows
    spine_slots += np.take(reached, spine.rank, out=scratch.numbers, mode="clip")
    if codes.count * width <= _TABLE_SLOTS_PER_ROW * (len(spine_slots) + len(group_slots)):
        table = _slot_table(group_slots, codes.count, width, group.no_match)
        np.take(table, spine_slots, out=rows, mode="clip")
    else:
        rows[:] = _latest_by_search(group_slots, spine_slots, width, group.no_match)
    if group.request.tolerance is not None:
        limit = _tolerance_in_units(group.request.tolerance, spine.time_dtype, group.request)
        # The placeholder time of "no match" makes it stale or not: either way it stays no match.
        times = np.append(group.times, 0).astype(np.int64)
        age = np.take(times, rows, out=scratch.numbers, mode="clip")
        np.subtract(spine.times.values, age, out=age)
        np.putmask(rows, np.greater(age, limit, out=scratch.flags), group.no_match)
    return rows


def _features(
    group: _Group, rows: np.ndarray, keep_event_times: bool, scratch: _Scratch
) -> pl.DataFrame:
    """The group's columns at ``rows``, nulls where there is no match."""
    columns = group.columns
    if not keep_event_times:
        columns = columns.drop(event_time_column(group.request))
    if columns.height == 0:
        return columns.clear(n=len(rows))
    missing = np.equal(rows, group.no_match, out=scratch.flags)
    if not missing.any():
        return columns.gather(pl.Series(rows))
    # Gathering valid rows and masking afterwards is about twice as fast as gathering from
    # columns that end in a null row (the gather then tracks validity row by row).
    np.putmask(rows, missing, 0)
    found = pl.Series(np.logical_not(missing, out=missing))
    return columns.gather(pl.Series(rows)).select(pl.when(found).then(pl.all()))


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
    calendar = _Calendar.of(prepared, spine.height)
    times = _Times.of(spine[spine_time])
    matching = _Spine(
        times, spine.schema[spine_time], calendar.rank_spine(times), _Scratch.of(spine.height)
    )
    found = []
    for group, parts in zip(prepared, _column_codes(spine, prepared), strict=True):
        rows = _matched_rows(group, _group_key_codes(parts).by_row(group), calendar, matching)
        found.append(_features(group, rows, keep_event_times, matching.scratch))
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
