"""The fresh window features of a few queries, straight from the online store's rows.

:func:`shared.recent_departures.recent_departure_features` is the implementation of record: it
runs on whole spines offline and on every large online batch. On the one or few flights of a
typical online request it pays a fixed cost of about a hundred numpy calls on arrays of a few
dozen events (about 0.9 ms of a 2-3 ms request, ``benchmarks/fresh_features.py``). This module
computes the same numbers in plain Python: the rows indexed once per key (origin, origin and
carrier, aircraft) in time order with running sums of the departures, then each query's windows
found in its own keys' rows by bisection (a window's sums are differences of two running sums).

It follows the definitions of :mod:`shared.recent_departures` to the bit, and
``tests/unit/test_recent_departure_rows.py`` holds it equal to the vectorised path on random
events, schedules and queries (edge instants, ties, unknown keys, cancellations, stale
coverage). Where exact equality could fail it declines (returns ``None``) and the caller uses
the vectorised path: a departure at a query's origin whose delay is missing or not a whole number
of minutes (sums of fractional delays round differently in a different order, and a missing one
makes the vectorised path's sums NaN from there on; whole minutes, as the data hold, sum exactly
in any order).

Indexing the rows is most of the cost (a pass over every row a batch read). Where the store
answers from rows it holds in memory (`HeldRows`: the SQLite store), :func:`recent_departure_held`
keeps the index with them, built once per key until the store's rows change, and a batch pays
only its queries' bisections; it declines (the caller takes :func:`recent_departure_rows`)
wherever reading the held rows instead of the batch's could change a number.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import accumulate
from operator import itemgetter
from typing import Any

import numpy as np

from shared.feature_definitions import DELAY_THRESHOLD_MIN, MAX_EARLY_DEPARTURE
from shared.feature_store.protocol import HeldRows
from shared.recent_departures import (
    COUNT_FEATURES,
    EVENT_LOOKBACK,
    LEVELS,
    TAIL_FEATURES,
    WINDOWS_MIN,
    Queries,
    latest_per_flight,
)

# Up to this many queries per call the row path is faster (benchmarks/fresh_features.py, flights
# of a day in departure order: x1.2 at 24, x1.06 at 32, x0.64 at 100; before the running sums,
# a pass over each query's window rows, x1.0 at 16 and x0.66 at 32).
MAX_QUERIES = 32

_US_PER_MIN = 60_000_000
_WINDOWS_US = tuple(w * _US_PER_MIN for w in WINDOWS_MIN)
_LOOKBACK_US = EVENT_LOOKBACK // timedelta(microseconds=1)
_NAN = math.nan
# What the loops read of an event and of a scheduled departure, in one C call per row.
_EVENT_NAMES = (
    "flight_id",
    "event_at",
    "is_cancelled",
    "origin",
    "carrier",
    "tailnum",
    "dep_delay",
)
_EVENT_FIELDS = itemgetter(*_EVENT_NAMES)
_HELD_EVENT_FIELDS = itemgetter(*_EVENT_NAMES, "sched_dep_utc")  # and the early bound's base
_SCHEDULE_FIELDS = itemgetter("flight_id", "sched_dep_utc", "origin", "carrier")
_UNRESOLVED = 2**63 - 1  # the resolution of a scheduled departure with no event yet
_FIRST = itemgetter(0)
_EARLIEST_US = MAX_EARLY_DEPARTURE // timedelta(microseconds=1)
# The memo keys of the indexes kept with held rows (`HeldRows.memo`).
_ORIGIN_MEMO = "recent_departure_rows.origin"
_TAIL_MEMO = "recent_departure_rows.tail"
# The features in the order a query's values are computed: per level (origin, then origin and
# carrier) and window (shortest first), its departures, mean delay, delayed share and pending
# departures; then the aircraft's (FEATURES' order, which the tests hold it to).
_ORDER = (
    *(
        f"{level}_{stat}_{minutes}m"
        for level in LEVELS
        for minutes in WINDOWS_MIN
        for stat in ("departures", "mean_dep_delay", "delayed_share", "pending")
    ),
    *TAIL_FEATURES,
)


def recent_departure_rows(
    event_rows: Iterable[Mapping[str, Any]],
    schedule_rows: Iterable[Mapping[str, Any]],
    queries: Queries,
    *,
    covered_until: int | None,
    tolerance_us: int,
    known_since: int | None = None,
) -> dict[str, np.ndarray] | None:
    """What ``recent_departure_features`` returns for the same rows (as
    ``DepartureLog.from_rows`` and ``Schedule.from_rows`` take them), or None where it cannot
    promise the same numbers (see the module note)."""
    origins, carriers = queries.origin.tolist(), queries.carrier.tolist()
    # Per level key of a query (its origin; its origin and carrier), the departures (time,
    # delay) and the scheduled departures (time, resolution) there. Events of any other key
    # count for no query.
    keys = {*origins, *zip(origins, carriers, strict=True)}
    departed: dict[Any, list[tuple[int, Any]]] = {key: [] for key in keys}
    scheduled: dict[Any, list[tuple[int, int]]] = {key: [] for key in keys}
    tails = set(queries.tailnum.tolist())
    # A flight's resolution: its event's time (one per flight once deduplicated).
    resolved: dict[Any, int] = {}
    aircraft = _Aircraft()  # per aircraft of a query: its departures, from any origin
    for flight, moment, cancelled, origin, carrier, tail, delay in map(
        _EVENT_FIELDS, latest_per_flight(event_rows, "event_at")
    ):
        resolved[flight] = moment
        if cancelled:
            continue
        at_origin = departed.get(origin)
        if at_origin is not None:
            # The vectorised path sums the delays of every departure at the queries' origins
            # in one prefix sum: one such delay that is not whole could round any window.
            if not _whole(delay):
                return None
            at_origin.append((moment, delay))
            with_carrier = departed.get((origin, carrier))
            if with_carrier is not None:
                with_carrier.append((moment, delay))
        if tail is not None and tail in tails:
            aircraft.add(tail, (moment, flight), delay)
    for flight, moment, origin, carrier in map(
        _SCHEDULE_FIELDS, latest_per_flight(schedule_rows, "sched_dep_utc")
    ):
        at_origin = scheduled.get(origin)
        if at_origin is not None:
            mark = (moment, resolved.get(flight, _UNRESOLVED))
            at_origin.append(mark)
            with_carrier = scheduled.get((origin, carrier))
            if with_carrier is not None:
                with_carrier.append(mark)
    windows = {key: _Windows(departed[key], scheduled[key]) for key in keys}
    return _query_features(
        windows,
        aircraft,
        queries,
        covered_until=covered_until,
        tolerance_us=tolerance_us,
        known_since=known_since,
    )


def recent_departure_held(
    origin_events: Mapping[Any, HeldRows],
    origin_schedule: Mapping[Any, HeldRows],
    tail_events: Mapping[Any, HeldRows],
    queries: Queries,
    *,
    covered_until: int | None,
    tolerance_us: int,
    known_since: int | None = None,
) -> dict[str, np.ndarray] | None:
    """What :func:`recent_departure_rows` returns for the rows a batch read, from the rows the
    store holds around them (`HeldRows`, per origin and per aircraft of the queries), or None:
    take the row path.

    Each origin's window index and each aircraft's departures are built once from the held
    rows and kept in their memo until the store's rows change, so a batch pays only its own
    queries' bisections, not a pass over every event it read (the row path's cost, and most
    of a one-flight request's fresh features). The held rows contain the rows the batch read
    (every range read is a slice of them) and more around them, which change no value as long
    as each flight has one event: a window counts only its own instants, and a flight's event
    resolves it wherever it is read. So the held path declines wherever a flight may have
    two: two rows of it held for one key (an event restated at another time), or different
    rows of it held for two keys of the batch (restated with another aircraft: the old
    aircraft's rows keep the old event, and the row path would keep one of the two); and
    where a row breaks the departure group's schema (a departure more than
    ``MAX_EARLY_DEPARTURE`` early) or holds a delay the row path declines (see the module
    note). Where it does not decline, its numbers are the row path's, bit for bit
    (``tests/integration/test_recent_departure_held.py``)."""
    origins: dict[Any, _Origin] = {}
    for origin in set(queries.origin.tolist()) - {None}:
        events, schedule = origin_events.get(origin), origin_schedule.get(origin)
        index = None if events is None or schedule is None else _origin_index(events, schedule)
        if index is None:
            return None
        origins[origin] = index
    lines: dict[Any, _Line] = {}
    for tail in set(queries.tailnum.tolist()) - {None}:
        held = tail_events.get(tail)
        if held is None:  # nothing read: its range was empty (T at or before local midnight)
            continue
        line = _tail_index(held)
        if line is None:
            return None
        lines[tail] = line
    if not _one_event_per_flight(origins, lines):
        return None
    windows: dict[Any, _Windows] = {}
    for index in origins.values():
        windows.update(index.windows)
    aircraft = _Aircraft()
    for tail, line in lines.items():
        aircraft.hold(tail, line.marks, line.delays)
    return _query_features(
        windows,
        aircraft,
        queries,
        covered_until=covered_until,
        tolerance_us=tolerance_us,
        known_since=known_since,
    )


def _one_event_per_flight(origins: Mapping[Any, _Origin], lines: Mapping[Any, _Line]) -> bool:
    """Whether the batch's held rows agree on every flight they share (and hold no departure
    at a query's origin that the row path would decline, read as an aircraft's)."""
    indexes = list(origins.values())
    for i, index in enumerate(indexes):
        if not all(index.apart(other) for other in indexes[i + 1 :]):
            return False
    seen: set[Any] = set()
    for line in lines.values():
        if not seen.isdisjoint(line.flights):
            return False
        seen |= line.flights
        if not all(line.agrees(origin, index) for origin, index in origins.items()):
            return False
    return True


def _query_features(
    windows: Mapping[Any, _Windows],
    aircraft: _Aircraft,
    queries: Queries,
    *,
    covered_until: int | None,
    tolerance_us: int,
    known_since: int | None,
) -> dict[str, np.ndarray]:
    """Each query's features from its keys' windows and its aircraft's departures."""
    values: list[tuple[float, ...]] = []
    for origin, carrier, tail, at, day_start in zip(
        queries.origin.tolist(),
        queries.carrier.tolist(),
        queries.tailnum.tolist(),
        queries.at.tolist(),
        queries.day_start.tolist(),
        strict=True,
    ):
        stale = covered_until is None or at - tolerance_us > covered_until
        if known_since is not None and min(at - _LOOKBACK_US, day_start) < known_since:
            stale = True
        if stale:
            values.append(_ALL_MISSING)
            continue
        # A key part the query lacks, or a key with no rows, counts nothing (the vectorised
        # path's code -1: zero counts, no mean, no share).
        by_origin = _NO_ROWS if origin is None else windows.get(origin, _NO_ROWS)
        by_pair = (
            _NO_ROWS
            if origin is None or carrier is None
            else windows.get((origin, carrier), _NO_ROWS)
        )
        values.append(
            (
                *by_origin.values(at),
                *by_pair.values(at),
                *_tail_values(aircraft, tail, at, day_start),
            )
        )
    return _as_columns(values)


def _as_columns(values: list[tuple[float, ...]]) -> dict[str, np.ndarray]:
    """Per feature, its column of ``values`` (one tuple per query, in :data:`_ORDER`): counts
    as float64, the rest as float32, as the vectorised path returns them. Two conversions of
    the whole table, each column a contiguous row of it: a conversion per column was a fifth
    of a batch's fresh features."""
    table = np.array(values, dtype=np.float64).reshape(len(values), len(_ORDER)).T.copy()
    narrow = table.astype(np.float32)
    return {
        name: table[j] if name in COUNT_FEATURES else narrow[j] for j, name in enumerate(_ORDER)
    }


def _whole(delay: Any) -> bool:
    return delay is not None and float(delay).is_integer()


@dataclass(frozen=True, slots=True)
class _Origin:
    """One origin's window index (its key and each (origin, carrier) key) and its held events
    by flight, from its held events and schedule."""

    windows: dict[Any, _Windows]
    events: dict[Any, Mapping[str, Any]]
    # Per other origin's index (by identity): whether no flight has events at both. Kept
    # with this one, as both live until their event table's next write.
    _apart: dict[int, tuple[_Origin, bool]] = field(default_factory=dict)

    def apart(self, other: _Origin) -> bool:
        kept = self._apart.get(id(other))
        if kept is None or kept[0] is not other:
            kept = self._apart[id(other)] = (other, self.events.keys().isdisjoint(other.events))
        return kept[1]


def _origin_index(events: HeldRows, schedule: HeldRows) -> _Origin | None:
    """The origin's index, kept in the events' memo for as long as both hold the same rows.
    None: declined (:func:`recent_departure_held`)."""
    kept = events.memo.get(_ORIGIN_MEMO)
    if kept is not None and kept[0] is schedule.memo:
        return kept[1]
    index = _index_origin(events.held, schedule.held)
    events.memo[_ORIGIN_MEMO] = (schedule.memo, index)
    return index


def _index_origin(
    event_rows: Iterable[Mapping[str, Any]], schedule_rows: Iterable[Mapping[str, Any]]
) -> _Origin | None:
    departed: dict[Any, list[tuple[int, Any]]] = {}
    by_flight: dict[Any, Mapping[str, Any]] = {}
    for row in event_rows:
        flight, moment, cancelled, origin, carrier, _, delay, sched = _HELD_EVENT_FIELDS(row)
        if flight in by_flight or _too_early(moment, sched):
            return None  # a second row of a flight, or a departure the schema refuses
        by_flight[flight] = row
        if cancelled:
            continue
        if not _whole(delay):
            return None
        departed.setdefault(origin, []).append((moment, delay))
        departed.setdefault((origin, carrier), []).append((moment, delay))
    scheduled: dict[Any, list[tuple[int, int]]] = {}
    seen: set[Any] = set()
    for flight, moment, origin, carrier in map(_SCHEDULE_FIELDS, schedule_rows):
        if flight in seen:
            return None
        seen.add(flight)
        event = by_flight.get(flight)
        mark = (moment, _UNRESOLVED if event is None else event["event_at"])
        scheduled.setdefault(origin, []).append(mark)
        scheduled.setdefault((origin, carrier), []).append(mark)
    windows = {
        key: _Windows(departed.get(key, []), scheduled.get(key, []))
        for key in departed.keys() | scheduled.keys()
    }
    return _Origin(windows, by_flight)


def _too_early(moment: int, sched: int | None) -> bool:
    return sched is None or moment < sched - _EARLIEST_US


@dataclass(frozen=True, slots=True)
class _Line:
    """One aircraft's departures, from its held events."""

    marks: list[tuple[int, Any]]  # (time, flight id), oldest first
    delays: list[Any]
    flights: frozenset[Any]  # every flight of its held events
    by_origin: dict[Any, list[dict[str, Any]]]  # its held events per origin
    # Per origin index (by identity): whether they agree (`agrees`).
    _agrees: dict[int, tuple[_Origin, bool]] = field(default_factory=dict)

    def agrees(self, origin: Any, index: _Origin) -> bool:
        """Whether this aircraft's events at ``origin`` are the origin's own (not an older
        row of a flight restated since) and have delays the row path takes."""
        kept = self._agrees.get(id(index))
        if kept is None or kept[0] is not index:
            rows = self.by_origin.get(origin, ())
            agree = all(
                (row["is_cancelled"] or _whole(row["dep_delay"]))
                and index.events.get(row["flight_id"], row) == row
                for row in rows
            )
            kept = self._agrees[id(index)] = (index, agree)
        return kept[1]


def _tail_index(held: HeldRows) -> _Line | None:
    """An aircraft's departures from its held events, kept in their memo. None: declined (a
    second row of a flight, or a departure the schema refuses)."""
    kept = held.memo.get(_TAIL_MEMO)
    if kept is None:
        kept = held.memo[_TAIL_MEMO] = (_index_tail(held.held),)
    return kept[0]


def _index_tail(event_rows: list[dict[str, Any]]) -> _Line | None:
    flights: set[Any] = set()
    departures: list[tuple[tuple[int, Any], Any]] = []
    by_origin: dict[Any, list[dict[str, Any]]] = {}
    for row in event_rows:
        flight, moment, cancelled, origin, _, _, delay, sched = _HELD_EVENT_FIELDS(row)
        if flight in flights or _too_early(moment, sched):
            return None
        flights.add(flight)
        by_origin.setdefault(origin, []).append(row)
        if not cancelled:
            departures.append(((moment, flight), delay))
    marks, delays = _in_time_order(departures)
    return _Line(marks, delays, frozenset(flights), by_origin)


class _Aircraft:
    """Each aircraft's departures in (time, flight id) order, with their delays, searched by
    bisection."""

    def __init__(self) -> None:
        self._rows: dict[Any, list[tuple[tuple[int, Any], Any]]] = {}
        self._sorted: dict[Any, tuple[list[tuple[int, Any]], list[Any]]] = {}

    def add(self, tail: Any, mark: tuple[int, Any], delay: Any) -> None:
        self._rows.setdefault(tail, []).append((mark, delay))

    def hold(self, tail: Any, marks: list[tuple[int, Any]], delays: list[Any]) -> None:
        """The aircraft's departures, already in order (`recent_departure_held`)."""
        self._sorted[tail] = (marks, delays)

    def of(self, tail: Any) -> tuple[list[tuple[int, Any]], list[Any]]:
        """The aircraft's (time, flight id) marks and delays, oldest first."""
        found = self._sorted.get(tail)
        if found is None:
            found = self._sorted[tail] = _in_time_order(list(self._rows.get(tail, ())))
        return found


def _in_time_order(
    departures: list[tuple[tuple[int, Any], Any]],
) -> tuple[list[tuple[int, Any]], list[Any]]:
    """An aircraft's (time, flight id) marks and delays, oldest first (``departures`` is
    sorted in place)."""
    departures.sort(key=_FIRST)
    return [m for m, _ in departures], [d for _, d in departures]


class _Windows:
    """One level key's departures and scheduled departures in time order, with running sums
    of the departures: a window's count, delay sum and delayed count are differences of two
    entries found by bisection, so a query costs a few bisections rather than a pass over its
    windows' departures (which made each query of a batch cost about as much as the batch's
    setup; ``benchmarks/fresh_features.py``). The delays are whole minutes (the caller
    declines otherwise), so the sums are exact in any order."""

    __slots__ = ("delays", "late", "resolutions", "scheduled", "times")

    def __init__(self, departed: list[tuple[int, Any]], scheduled: list[tuple[int, int]]):
        departed.sort(key=itemgetter(0))
        self.times = [moment for moment, _ in departed]
        delays = [delay for _, delay in departed]
        self.delays = list(accumulate(delays, initial=0.0))
        self.late = list(accumulate([delay > DELAY_THRESHOLD_MIN for delay in delays], initial=0))
        scheduled.sort(key=itemgetter(0))
        self.scheduled = [moment for moment, _ in scheduled]
        # Each scheduled departure's resolution: its event's time, or _UNRESOLVED.
        self.resolutions = [resolution for _, resolution in scheduled]

    def values(self, at: int) -> list[float]:
        """The key's window features at ``at``: per window, shortest first, its departures,
        mean delay, delayed share and pending departures (as :data:`_ORDER`)."""
        times, delays, late = self.times, self.delays, self.late
        end = bisect_left(times, at)  # [start, end): the window's departures, before T
        scheduled, resolutions = self.scheduled, self.resolutions
        newer = bisect_left(scheduled, at)
        waiting = 0
        values: list[float] = []
        for width in _WINDOWS_US:
            start = bisect_left(times, at - width)
            n = end - start
            # Pending at T: scheduled in the window and not resolved before T. The windows are
            # nested: each adds the part not in the shorter ones.
            older = bisect_left(scheduled, at - width)
            waiting += sum(map(at.__le__, resolutions[older:newer]))
            newer = older
            values += (
                float(n),
                (delays[end] - delays[start]) / n if n else _NAN,
                (late[end] - late[start]) / n if n else _NAN,
                float(waiting),
            )
        return values


_NO_ROWS = _Windows([], [])
_ALL_MISSING = (_NAN,) * len(_ORDER)


def _tail_values(aircraft: _Aircraft, tail: Any, at: int, day_start: int) -> tuple[float, float]:
    """The aircraft's latest departure before T (the latest flight id of equal instants), if
    it is today's."""
    delay = since = _NAN
    if tail is not None:
        marks, delays = aircraft.of(tail)
        last = bisect_left(marks, (at,)) - 1  # (at,) sorts before every (at, flight id)
        if last >= 0 and marks[last][0] >= day_start:
            value = delays[last]  # only summed delays need be whole
            delay = _NAN if value is None else float(value)
            since = (at - marks[last][0]) / _US_PER_MIN
    return delay, since  # as TAIL_FEATURES
