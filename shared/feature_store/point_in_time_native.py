"""The hand-written point-in-time join (``FTI_PIT_JOIN=native``), beside Polars' ``join_asof``.

It answers exactly what the library path of :mod:`shared.feature_store.point_in_time` answers
(the same tests run against both), faster: ``benchmarks/point_in_time_join.py`` runs both on the
full year in one invocation. It stays only while it gains at least 25% there (invariant 9).

How it works, and why this way: an as-of join with ``by`` keys hashes the spine's text keys and
sorts the spine once per group, and its result must be sorted back to the spine's order; that
costs several times the search itself. Here the spine is never sorted or reordered, each of its
key columns has one code space for all groups, and its times are ranked once for all groups:

1. Every key value some group has gets a small integer code; a null, or a value no group has,
   gets a code no group row has, so it never matches. Short texts (airports, carriers, tail
   numbers: up to 7 bytes) are read in place from their Arrow string views as exact 64-bit
   keys and looked up in a small hash table with vectorised passes; other keys by an Enum cast.
2. Event times become ranks among the group's distinct event times, so a (key, rank) pair is one
   int64 *slot* that cannot overflow, whatever the time unit or range (pre-1970 included). A
   spine time is ranked by arithmetic when all event times sit on a grid (on the hour, say), by
   binary search otherwise.
3. A table indexed by slot holds, for every slot, the group row with the latest event time at or
   before it within the same key, so a spine row's match is one lookup (a binary search instead
   when keys x times are too many for a table). The tolerance is checked on the matched time.
4. The features are gathered by row index, then masked to null where nothing matched.

Steps 1-3 build each group's side once; the spine's side (its codes, ranks, lookups and the
gathers) runs in ranges of rows on several threads (numpy and Polars release the GIL), so the
output columns come in one chunk per range.

Per-row intermediates are written into a few arrays of work space reused by every column and
group (:class:`_Scratch`): first touches of fresh memory cost about as much as the arithmetic.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from shared.feature_store.protocol import JoinRequest

if TYPE_CHECKING:
    from shared.feature_store.point_in_time import PreparedGroup

# Beyond this many key codes, a multi-column key is renumbered to the combinations that exist,
# so that key x time slots stay far from int64 overflow.
_MAX_KEY_CODES = 2**31
# The slot table may hold this many entries per input row; sparser keys x times are searched.
_TABLE_SLOTS_PER_ROW = 4
# Spine rows are matched on this many threads (None: one per thread of Polars' pool, at most
# 8), in ranges of at least this many rows.
_THREADS: int | None = None
_MIN_PART_ROWS = 50_000


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
    """One group's rows that can match (see :class:`PreparedGroup`): keys, event times as
    numbers in the spine time's physical unit, and the output columns."""

    request: JoinRequest
    event: str
    keys: pl.DataFrame
    times: np.ndarray
    columns: pl.DataFrame

    @classmethod
    def of(cls, prepared: PreparedGroup) -> _Group:
        rows = prepared.rows
        return cls(
            request=prepared.request,
            event=prepared.event,
            keys=pl.DataFrame([rows.get_column(k) for k in prepared.keys]),
            times=rows.get_column(prepared.event).to_physical().to_numpy(),
            columns=prepared.features,
        )

    @property
    def no_match(self) -> int:
        """The row index standing for "no match": one past the last row."""
        return self.columns.height


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


# Texts of up to 7 bytes have an exact 64-bit key (see _ShortTexts); longer ones are coded
# by an Enum cast. So are columns with more distinct group values than this (a larger table).
_SHORT_TEXT_BYTES = 7
_MAX_TABLE_TEXTS = 2**20
_NO_TEXT = np.uint64(2**64 - 1)  # the key of no text: its length byte would be 255
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: multiplicative hashing


@dataclass(frozen=True)
class _ShortTexts:
    """A String column whose values have at most 7 bytes, as its Arrow string views read in
    place: 16 bytes each, the length, then a value of up to 12 bytes inline, padded with zeros
    (the Arrow format); such a view is the value, with no pointer to follow."""

    views: np.ndarray  # pairs of uint64
    longest: int  # bytes (a null's view counts too: it only makes ``keys`` take another pass)

    @classmethod
    def of(cls, column: pl.Series) -> _ShortTexts | None:
        """The column's views; None when it is not a String column of short values."""
        if column.dtype != pl.String:
            return None
        array = column.to_arrow(compat_level=pl.CompatLevel.newest())  # zero-copy: one chunk
        buffer = array.buffers()[1]
        if buffer is None:
            return cls(np.zeros((len(array), 2), np.uint64), 0)
        rows = slice(array.offset, array.offset + len(array))
        longest = int(np.frombuffer(buffer, np.uint32).reshape(-1, 4)[rows, 0].max(initial=0))
        if longest > _SHORT_TEXT_BYTES:
            # A null's view is not a value, so its length does not count.
            if not column.has_nulls():
                return None
            lengths = np.frombuffer(buffer, np.uint32).reshape(-1, 4)[rows, 0]
            if lengths[column.is_not_null().to_numpy()].max(initial=0) > _SHORT_TEXT_BYTES:
                return None
        return cls(np.frombuffer(buffer, np.uint64).reshape(-1, 2)[rows], longest)

    def keys(self, out: np.ndarray | None = None) -> np.ndarray:
        """Each value as one exact uint64: its length byte, then its bytes (a null's: any).
        Up to 4 bytes, the first half of the view as it stands (the second is zeros); beyond,
        the second half's first 3 bytes shifted in, into ``out`` when given."""
        if self.longest <= 4:
            return self.views[:, 0]
        keys = np.left_shift(self.views[:, 1], np.uint64(8), out=out)
        keys |= self.views[:, 0]
        return keys


@dataclass(frozen=True)
class _TextCodes:
    """Codes of short texts from their keys (see :class:`_ShortTexts`): a hash table with
    linear probing, searched with a few vectorised passes over all rows, then ever fewer rows
    for the rare keys not in their first slot. Several times faster than a Polars lookup per
    row (an Enum cast, a join, ``replace_strict``: ~15 ns a row)."""

    shift: np.uint64
    keys: np.ndarray  # the key in each slot; _NO_TEXT when free
    codes: np.ndarray  # the code of the key in each slot; ``unknown`` when free
    unknown: int
    probed: bool  # whether some key is not in its first slot

    @classmethod
    def of(cls, known: np.ndarray) -> _TextCodes:
        """The table of distinct keys ``known``, each coded by its position.

        A few keys get a table large enough for each to sit in its first slot, so no row needs
        a further search; more keys a table an eighth full, filled by linear probing.
        """
        fewest = max(4, (8 * len(known) - 1).bit_length())
        # Tables of about keys^2 slots or more are often collision-free; up to 2^17 slots.
        for bits in range(max(fewest, (len(known) ** 2).bit_length()), 18):
            first = (known * _FIBONACCI) >> np.uint64(64 - bits)
            if len(np.unique(first)) == len(known):
                return cls._filled(bits, known, first)
        # Round by round, each waiting key tries the slot ``step`` after its first, and of keys
        # trying one free slot one lands. So every slot from a key's first to its own is taken,
        # and a search stops at the first free slot.
        size, unknown = 1 << fewest, len(known)
        keys = np.full(size, _NO_TEXT, np.uint64)
        codes = np.full(size, unknown, np.int64)
        first = ((known * _FIBONACCI) >> np.uint64(64 - fewest)).astype(np.int64)
        waiting, step = np.arange(len(known)), 0
        while len(waiting):
            at = (first[waiting] + step) & (size - 1)
            free = codes[at] == unknown
            trying, slots = waiting[free], at[free]
            codes[slots] = trying  # which of several writes to one slot lands is unspecified
            landed = codes[slots] == trying
            keys[slots[landed]] = known[trying[landed]]
            waiting = np.concatenate([waiting[~free], trying[~landed]])
            step += 1
        return cls(np.uint64(64 - fewest), keys, codes, unknown, True)

    @classmethod
    def _filled(cls, bits: int, known: np.ndarray, slots: np.ndarray) -> _TextCodes:
        """The table of keys that all sit in their first slot."""
        keys = np.full(1 << bits, _NO_TEXT, np.uint64)
        codes = np.full(1 << bits, len(known), np.int64)
        keys[slots.astype(np.int64)] = known
        codes[slots.astype(np.int64)] = np.arange(len(known))
        return cls(np.uint64(64 - bits), keys, codes, len(known), False)

    def code(self, keys: np.ndarray, out: np.ndarray, slots: np.ndarray, flags: np.ndarray) -> None:
        """Write the codes of ``keys`` into ``out`` (int64), with ``slots`` (uint64) and
        ``flags`` (bool) as work space, all of the same length."""
        np.multiply(keys, _FIBONACCI, out=slots)
        slots >>= self.shift
        at = slots.view(np.int64)
        # "clip": no bounds checks, slots are in range. The key in each first slot, then its code.
        np.take(self.keys, at, out=out.view(np.uint64), mode="clip")
        np.not_equal(out.view(np.uint64), keys, out=flags)
        np.take(self.codes, at, out=out, mode="clip")
        # Not in its first slot: further on if that slot is taken (by another key), else unknown.
        further = np.flatnonzero(flags & (out != self.unknown)) if self.probed else flags[:0]
        np.putmask(out, flags, self.unknown)
        mask, step = len(self.keys) - 1, 1
        while len(further):
            slot = (at[further] + step) & mask
            found = self.keys[slot] == keys[further]
            out[further[found]] = self.codes[slot[found]]
            further = further[~found & (self.keys[slot] != _NO_TEXT)]
            step += 1

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        out = np.empty(len(keys), np.int64)
        self.code(keys, out, np.empty(len(keys), np.uint64), np.empty(len(keys), bool))
        return out


@dataclass(frozen=True)
class _ColumnCodes:
    """The codes in [0, count) of one spine key column and of each group keyed on it, the same
    for all of them; ``count - 1`` stands for a null or a value no group has.

    Short texts (airports, carriers, tail numbers) are coded by :class:`_TextCodes`, the spine's
    when a group needs them, into work space: coding a column twice costs less than first
    touches of fresh memory to keep its codes. Other columns are coded by one Polars query.
    """

    name: str
    count: int
    groups: dict[int, np.ndarray]  # the codes of each group's rows, by the group's position
    text: _TextCodes | None
    texts: _ShortTexts | None  # the spine's, with ``text``
    coded: np.ndarray | None  # the spine's codes, without ``text``

    def of_spine(
        self, spine: pl.DataFrame, rows: slice, out: np.ndarray, scratch: _Scratch
    ) -> np.ndarray:
        """The codes of the spine's ``rows``: in ``out`` (int64) for short texts."""
        if self.text is None or self.texts is None:
            assert self.coded is not None
            return self.coded[rows]
        texts = _ShortTexts(self.texts.views[rows], self.texts.longest)
        keys = texts.keys(out=scratch.numbers.view(np.uint64))
        self.text.code(keys, out, scratch.work, scratch.flags)
        column = spine[self.name][rows]
        if column.has_nulls():
            np.putmask(out, column.is_null().to_numpy(), self.text.unknown)
        return out


def _column_codes(spine: pl.DataFrame, groups: Sequence[_Group]) -> dict[str, _ColumnCodes]:
    """How each spine key column is coded, in one code space for all groups keyed on it."""
    names = list(dict.fromkeys(c for g in groups for c in g.keys.columns))
    columns = {}
    expressions = {}
    for name in names:
        keyed = {i: g.keys[name] for i, g in enumerate(groups) if name in g.keys.columns}
        text = _text_codes(spine[name], keyed)
        if text is not None:
            columns[name] = text
            continue
        values = pl.concat(list(keyed.values())).unique(maintain_order=True)
        expressions[name] = _code_expression(name, spine.schema[name], values)
        group_codes = {
            i: pl.DataFrame([k]).select(expressions[name]).to_series().to_numpy()
            for i, k in keyed.items()
        }
        columns[name] = _ColumnCodes(name, len(values) + 1, group_codes, None, None, None)
    if expressions:
        spine_coded = spine.select(expressions.values())
        for name in expressions:
            column = columns[name]
            coded = spine_coded[name].to_numpy()
            columns[name] = _ColumnCodes(name, column.count, column.groups, None, None, coded)
    return columns


def _text_codes(spine: pl.Series, groups: Mapping[int, pl.Series]) -> _ColumnCodes | None:
    """The codes of a column of short texts in the spine and every group; None for other
    columns (an Enum cast codes them)."""
    texts = _ShortTexts.of(spine)
    if texts is None:
        return None
    keys = {}
    for i, column in groups.items():
        group_texts = _ShortTexts.of(column)
        if group_texts is None:
            return None
        keys[i] = group_texts.keys()
    # Stores sort a group's rows by key: first the key of each run of rows sharing one, then
    # hashing, not sorting (and maintain_order is the faster here: one thread, no merge).
    runs = [k[np.r_[True, k[1:] != k[:-1]]] if len(k) else k for k in keys.values()]
    known = pl.Series(np.concatenate(runs)).unique(maintain_order=True)
    if len(known) > _MAX_TABLE_TEXTS:
        return None
    text = _TextCodes.of(known.to_numpy())
    coded = {i: text(k) for i, k in keys.items()}
    return _ColumnCodes(spine.name, text.unknown + 1, coded, text, texts, None)


@dataclass(frozen=True)
class _KeyPlan:
    """How a group's key columns combine into one integer code in [0, count): the codes of the
    group's rows, and the steps that code a spine row the same way. A spine row whose key no
    group row has gets a code no group row has."""

    columns: list[str]
    group: np.ndarray
    count: int
    # Per further column: its code count (mixed radix: code * count + its code), and the
    # group's distinct codes when the combination was renumbered to them (see _MAX_KEY_CODES).
    steps: list[tuple[int, np.ndarray | None]]


def _key_plan(position: int, group: _Group, columns: Mapping[str, _ColumnCodes]) -> _KeyPlan:
    """The key plan of the group at ``position``."""
    names = list(group.keys.columns)
    first = columns[names[0]]
    codes, count, steps = first.groups[position], first.count, []
    for name in names[1:]:
        then = columns[name]
        codes = codes * then.count + then.groups[position]
        count *= then.count
        known = None
        if count > _MAX_KEY_CODES:
            known = np.unique(codes)
            codes = np.searchsorted(known, codes)
            count = len(known) + 1
        steps.append((then.count, known))
    return _KeyPlan(names, codes, count, steps)


def _spine_key_codes(
    plan: _KeyPlan, columns: Mapping[str, _ColumnCodes], spine: pl.DataFrame, part: _SpinePart
) -> np.ndarray:
    """The key codes of the spine rows of ``part`` (in ``part.scratch.key``, or Polars' codes
    of a one-column key), combined as ``plan`` combines the group's."""
    scratch = part.scratch
    codes = columns[plan.columns[0]].of_spine(spine, part.rows, scratch.key, scratch)
    if plan.steps and codes is not scratch.key:  # Polars' codes: combined in work space
        np.copyto(scratch.key, codes)
        codes = scratch.key
    for name, (count, known) in zip(plan.columns[1:], plan.steps, strict=True):
        codes *= count
        codes += columns[name].of_spine(spine, part.rows, scratch.part, scratch)
        if known is not None:
            at = np.searchsorted(known, codes).clip(0, max(len(known) - 1, 0))
            found = known[at] == codes if len(known) else np.zeros(len(codes), bool)
            np.copyto(codes, np.where(found, at, len(known)))
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
        # Hashing, then sorting the few left (maintain_order is the faster: one thread, no merge).
        moments = np.sort(times.unique(maintain_order=True).to_numpy())
        return cls(moments, *_grid(moments, spine_rows))

    def rank_spine(self, times: _Times, scratch: _Scratch) -> np.ndarray:
        """How many moments each spine time has reached; 0 for a null time."""
        rank = self.rank(times.values, scratch)
        if times.null is not None:
            rank[times.null] = 0
        return rank

    def rank(self, times: np.ndarray, scratch: _Scratch | None = None) -> np.ndarray:
        """How many moments are at or before each time (spine times: in ``scratch.rank``)."""
        if self.steps is None:
            return np.searchsorted(self.moments, times, side="right")
        # Clipped first, so that the subtraction cannot overflow whatever the times.
        out, rank = (None, None) if scratch is None else (scratch.numbers, scratch.rank)
        at = np.clip(times, self.origin, self.moments[-1], out=out)
        at -= self.origin
        at //= self.step
        return np.take(self.steps, at, out=rank, mode="clip")  # "clip": no checks, in range


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
    return origin, step, np.cumsum(reached, out=reached)


def _group_ranks(group: _Group, calendar: _Calendar) -> tuple[np.ndarray, np.ndarray]:
    """How many of this group's distinct event times each calendar rank (moments reached) has
    reached, and the rank (from 1) of each group row's own event time."""
    at = calendar.rank(group.times)
    reached = np.zeros(len(calendar.moments) + 1, np.int32)
    reached[at] = 1
    np.cumsum(reached, out=reached)
    return reached, reached[at]


def _slot_table(group_slots: np.ndarray, count: int, width: int, no_match: int) -> np.ndarray:
    """For every slot (key * width + rank), the group row with the last slot at or before it
    within the same key, or ``no_match``. (int32: the table is small by construction.)"""
    size = count * width
    latest = np.full(size, -1, np.int32)
    rows = np.arange(len(group_slots), dtype=np.int32)
    latest[group_slots] = rows
    if not np.array_equal(latest[group_slots], rows):
        # Rows sharing key and event time: the last one given wins, as in an as-of join (which
        # of several writes to one slot lands is unspecified, hence the check; rare in a store).
        np.maximum.at(latest, group_slots, rows)
    # Carry each filled slot forward; every key's rank-0 slot holds no row and stops the carry.
    carry = np.arange(size, dtype=np.int32)
    np.putmask(carry, latest < 0, -1)
    carry[::width] = np.arange(0, size, width, dtype=np.int32)
    np.maximum.accumulate(carry, out=carry)
    table = np.take(latest, carry, out=carry, mode="clip")
    np.putmask(table, table < 0, no_match)
    return table.view(np.uint32)  # what a Polars gather takes


def _latest_by_search(
    ordered: np.ndarray, order: np.ndarray, spine_slots: np.ndarray, width: int, no_match: int
) -> np.ndarray:
    """What :func:`_slot_table` answers, by binary search in the group's slots sorted
    (``ordered``, from rows ``order``): for keys x times too sparse for a table (slower: the
    spine's slots come unsorted)."""
    if len(ordered) == 0:
        return np.full(len(spine_slots), no_match, np.uint32)
    at = np.searchsorted(ordered, spine_slots, side="right") - 1
    at.clip(0, out=at)  # a miss (-1) reads slot 0, whose key then differs or is not <= ours
    hit = (ordered[at] <= spine_slots) & (ordered[at] // width == spine_slots // width)
    return np.where(hit, order[at], no_match).astype(np.uint32)


@dataclass(frozen=True)
class _GroupIndex:
    """A group ready to match spine rows: its key plan, and its rows by slot.

    A (key, rank) pair is one int64 slot, key * width + rank, where rank counts the group's
    distinct event times reached (0: none yet, so a key's slots never run into the next key's).
    """

    group: _Group
    plan: _KeyPlan
    reached: np.ndarray  # the group's distinct event times reached at each calendar rank
    width: int
    table: np.ndarray | None  # see _slot_table; None: search ``ordered`` instead
    ordered: np.ndarray  # the group's slots, sorted (stable: the last of equal slots wins)
    order: np.ndarray  # the row of each

    @classmethod
    def of(
        cls,
        position: int,
        group: _Group,
        columns: Mapping[str, _ColumnCodes],
        calendar: _Calendar,
        spine_rows: int,
    ) -> _GroupIndex:
        plan = _key_plan(position, group, columns)
        reached, group_ranks = _group_ranks(group, calendar)
        width = int(reached[-1]) + 1
        slots = np.multiply(plan.group, width)
        slots += group_ranks
        if plan.count * width <= _TABLE_SLOTS_PER_ROW * (spine_rows + len(slots)):
            table = _slot_table(slots, plan.count, width, group.no_match)
            return cls(group, plan, reached, width, table, slots[:0], slots[:0])
        order = np.argsort(slots, kind="stable")
        return cls(group, plan, reached, width, None, slots[order], order)


_TIME_UNITS = {"ms": timedelta(milliseconds=1), "us": timedelta(microseconds=1)}


def _tolerance_in_units(tolerance: timedelta, dtype: pl.DataType) -> int:
    """The tolerance in the spine time's physical unit (days for a Date), rounded down
    (:func:`prepare_groups` has refused a tolerance on any other spine time)."""
    if dtype == pl.Date:
        return tolerance // timedelta(days=1)
    assert isinstance(dtype, (pl.Datetime, pl.Duration))
    if dtype.time_unit == "ns":  # finer than a timedelta: exact in microseconds
        return tolerance // timedelta(microseconds=1) * 1000
    return tolerance // _TIME_UNITS[dtype.time_unit]


@dataclass(frozen=True)
class _Scratch:
    """Arrays of one entry per spine row for every intermediate of a call, reused by every key
    column and group, and carved from one block: first touches of fresh memory (page faults)
    cost more than the arithmetic done in them (about 2 us a 4 KiB page here), so the fewer
    the better. ``np.take(..., out=, mode="clip")`` writes into them directly (indices are
    always in range; "clip" only skips the bounds checks and the temporary of the default mode,
    several times slower here)."""

    key: np.ndarray  # int64: a group's key codes, then its slots
    part: np.ndarray  # int64: the codes of a key's second column
    numbers: np.ndarray  # int64
    work: np.ndarray  # uint64: while a group's key is coded
    rows: np.ndarray  # uint32: then its matched rows, in the same memory
    rank: np.ndarray  # int32
    flags: np.ndarray  # bool

    @classmethod
    def of(cls, size: int) -> _Scratch:
        block = np.empty(size * (8 * 4 + 4 + 1), np.uint8)
        wide = block[: 8 * 4 * size].view(np.int64).reshape(4, size)
        narrow = block[8 * 4 * size :]
        return cls(
            key=wide[0],
            part=wide[1],
            numbers=wide[2],
            work=wide[3].view(np.uint64),
            rows=wide[3].view(np.uint32)[:size],
            rank=narrow[: 4 * size].view(np.int32),
            flags=narrow[4 * size :].view(bool),
        )


@dataclass(frozen=True)
class _SpinePart:
    """A range of spine rows matched together (by one thread), with its own work space."""

    rows: slice
    times: _Times
    time_dtype: pl.DataType
    rank: np.ndarray  # calendar moments reached at each row's time (0: null time)
    scratch: _Scratch

    @classmethod
    def of(
        cls, rows: slice, times: _Times, time_dtype: pl.DataType, calendar: _Calendar
    ) -> _SpinePart:
        scratch = _Scratch.of(rows.stop - rows.start)
        mine = _Times(times.values[rows], None if times.null is None else times.null[rows])
        return cls(rows, mine, time_dtype, calendar.rank_spine(mine, scratch), scratch)


def _matched_rows(
    index: _GroupIndex, columns: Mapping[str, _ColumnCodes], spine: pl.DataFrame, part: _SpinePart
) -> np.ndarray:
    """Per spine row of ``part``, the index of its row in ``group.columns`` (``group.no_match``
    when none), in ``part.scratch.rows``."""
    group, scratch = index.group, part.scratch
    codes = _spine_key_codes(index.plan, columns, spine, part)
    spine_slots, rows = np.multiply(codes, index.width, out=scratch.key), scratch.rows
    spine_slots += np.take(index.reached, part.rank, out=rows.view(np.int32), mode="clip")
    if index.table is not None:
        np.take(index.table, spine_slots, out=rows, mode="clip")
    else:
        rows[:] = _latest_by_search(
            index.ordered, index.order, spine_slots, index.width, group.no_match
        )
    if group.request.tolerance is not None:
        limit = _tolerance_in_units(group.request.tolerance, part.time_dtype)
        if len(group.times):  # (else every row is no match already)
            # "No match" (one past the last row) reads the last row's time ("clip"): stale or
            # not, it stays no match.
            times = group.times.astype(np.int64, copy=False)
            age = np.take(times, rows, out=scratch.numbers, mode="clip")
            np.subtract(part.times.values, age, out=age)
            np.putmask(rows, np.greater(age, limit, out=scratch.flags), group.no_match)
    return rows


def _features(
    group: _Group, rows: np.ndarray, keep_event_times: bool, scratch: _Scratch
) -> pl.DataFrame:
    """The group's columns at ``rows``, nulls where there is no match."""
    columns = group.columns
    if not keep_event_times:  # (a frame of the other columns: a drop is a Polars query)
        columns = pl.DataFrame([c for c in columns.iter_columns() if c.name != group.event])
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


def join_native(
    spine: pl.DataFrame,
    spine_time: str,
    prepared: Sequence[PreparedGroup],
    keep_event_times: bool,
) -> pl.DataFrame:
    """The features of every group for every spine row, in the spine's order (see the module
    docstring), after the spine's own columns."""
    groups = [_Group.of(p) for p in prepared]
    calendar = _Calendar.of(groups, spine.height)
    columns = _column_codes(spine, groups)
    indexes = [
        _GroupIndex.of(position, group, columns, calendar, spine.height)
        for position, group in enumerate(groups)
    ]
    times, time_dtype = _Times.of(spine[spine_time]), spine.schema[spine_time]

    def join_part(rows: slice) -> list[pl.DataFrame]:
        part = _SpinePart.of(rows, times, time_dtype, calendar)
        return [
            _features(
                index.group,
                _matched_rows(index, columns, spine, part),
                keep_event_times,
                part.scratch,
            )
            for index in indexes
        ]

    parts = _row_parts(spine.height)
    if len(parts) == 1:
        found = join_part(parts[0])
    else:
        # numpy and Polars release the GIL in the per-row work: each thread takes a range of
        # spine rows through every group, and its features are chunks of the output columns.
        with ThreadPoolExecutor(len(parts), thread_name_prefix="pit-join") as pool:
            chunks = list(pool.map(join_part, parts))
        found = [
            pl.concat([chunk[i] for chunk in chunks], how="vertical", rechunk=False)
            for i in range(len(indexes))
        ]
    return pl.concat([spine, *found], how="horizontal")


def _row_parts(rows: int) -> list[slice]:
    """Ranges of spine rows matched in parallel: one per thread (see _THREADS), none shorter
    than _MIN_PART_ROWS (a thread costs more than a few rows)."""
    threads = min(pl.thread_pool_size(), 8) if _THREADS is None else _THREADS
    count = max(1, min(threads, rows // _MIN_PART_ROWS))
    bounds = np.linspace(0, rows, count + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
