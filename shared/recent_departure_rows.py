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
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from datetime import timedelta
from itertools import accumulate
from operator import itemgetter
from typing import Any

import numpy as np

from shared.feature_definitions import DELAY_THRESHOLD_MIN
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
_EVENT_FIELDS = itemgetter(
    "flight_id", "event_at", "is_cancelled", "origin", "carrier", "tailnum", "dep_delay"
)
_SCHEDULE_FIELDS = itemgetter("flight_id", "sched_dep_utc", "origin", "carrier")
_UNRESOLVED = 2**63 - 1  # the resolution of a scheduled departure with no event yet
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
            if delay is None or not float(delay).is_integer():
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
    values: list[tuple[float, ...]] = []
    for origin, carrier, tail, at, day_start in zip(
        origins,
        carriers,
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
        # A key part the query lacks counts nothing (the vectorised path's code -1: zero
        # counts, no mean, no share).
        by_origin = _NO_ROWS if origin is None else windows[origin]
        by_pair = _NO_ROWS if origin is None or carrier is None else windows[origin, carrier]
        values.append(
            (
                *by_origin.values(at),
                *by_pair.values(at),
                *_tail_values(aircraft, tail, at, day_start),
            )
        )
    columns = zip(*values, strict=True) if values else ([] for _ in _ORDER)
    return {
        name: np.array(column, dtype=np.float64 if name in COUNT_FEATURES else np.float32)
        for name, column in zip(_ORDER, columns, strict=True)
    }


class _Aircraft:
    """Each aircraft's departures in (time, flight id) order, with their delays, searched by
    bisection."""

    def __init__(self) -> None:
        self._rows: dict[Any, list[tuple[tuple[int, Any], Any]]] = {}
        self._sorted: dict[Any, tuple[list[tuple[int, Any]], list[Any]]] = {}

    def add(self, tail: Any, mark: tuple[int, Any], delay: Any) -> None:
        self._rows.setdefault(tail, []).append((mark, delay))

    def of(self, tail: Any) -> tuple[list[tuple[int, Any]], list[Any]]:
        """The aircraft's (time, flight id) marks and delays, oldest first."""
        found = self._sorted.get(tail)
        if found is None:
            pairs = sorted(self._rows.get(tail, ()), key=itemgetter(0))
            found = self._sorted[tail] = ([m for m, _ in pairs], [d for _, d in pairs])
        return found


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
